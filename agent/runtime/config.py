"""The agent configuration: typed frozen dataclasses, the two presets, and the YAML loader.

Precedence: dataclass defaults < preset (`default` or `official`) < values in the YAML file.
A YAML holding only `checkpoint:` and `device:` is complete. Every field is listed in
docs/agent-config.md; every difference between the presets in docs/conventions.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from bench2drive_eval.jsonio import read_text_file
from model.dataclass_dicts import build_dataclass

PRESETS: tuple[str, ...] = ("default", "official")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
HISTORY_MODES: tuple[str, ...] = ("current_10hz", "official_offset")
DESIRED_SPEED_MODES: tuple[str, ...] = ("half_second", "official")
PLAN_SOURCES: tuple[str, ...] = ("sparse", "dense")
INFERENCE_STARTS: tuple[str, ...] = ("first_tick", "after_initial_brake")
JPEG_CHANNELS: tuple[str, ...] = ("rgb", "authors_swapped")
AIM_ORIGINS: tuple[str, ...] = ("first_waypoint", "ego")
POSE_ORIGINS: tuple[str, ...] = ("vehicle", "gnss_mount")
CAMERA_SETS: tuple[str, ...] = ("bench2drive_rig", "authors_agent")


class AgentConfigError(ValueError):
    """The agent config file is missing, unreadable, or has a bad field; the message names both."""


@dataclass(frozen=True)
class PIDGains:
    """A PID controller over a sliding window of past errors (integral = window mean)."""

    kp: float
    ki: float
    kd: float
    window: int = 20


@dataclass(frozen=True)
class CreepConfig:
    """Stuck recovery: after a long standstill with a stop predicted, creep forward for a bounded time."""

    enabled: bool = True
    after_s: float = 40.0  # standstill time before creeping (the leaderboard ends a route after 60 s blocked)
    duration_s: float = 1.5
    throttle: float = 0.4
    max_speed: float = 2.0  # m/s; no creep throttle above this
    standstill_speed: float = 0.1  # m/s; below this the car counts as standing


@dataclass(frozen=True)
class ControllerConfig:
    """Waypoints -> steer/throttle/brake (see agent/runtime/controller.py). Speeds in m/s, distances in metres."""

    speed_pid: PIDGains = PIDGains(5.0, 0.5, 1.0, 20)
    turn_pid: PIDGains = PIDGains(1.25, 0.75, 0.3, 20)
    aim_distance_slow: float = 5.5  # aim at the first waypoint at least this far ...
    aim_distance_fast: float = 8.5  # ... or this far when the desired speed is at least `aim_fast_speed`
    aim_fast_speed: float = 5.5
    aim_origin: str = "first_waypoint"  # distances and angle from wp0 (first_waypoint) or from the car (ego)
    min_aim_norm: float = 0.5  # aim vectors shorter than this (collapsed prediction) steer straight
    steer_standstill_speed: float = 0.01  # m/s; below it the steering error fed to the PID is 0 (no wind-up)
    brake_speed: float = 0.1  # brake when the desired speed is below this
    brake_ratio: float = 1.1  # ... or when speed / desired speed exceeds this
    clip_delta: float = 0.25  # speed error fed to the PID is clipped to [0, clip_delta]
    max_throttle: float = 0.75
    turn_steer_threshold: float = 0.15  # |steer| above this counts as turning ...
    turn_speed_cap: float = 4.5  # ... and caps the speed at this
    max_speed: float = 7.0  # otherwise the speed cap
    capped_throttle: float = 0.05  # throttle allowed above a speed cap
    initial_brake_ticks: int = 11  # full brake for the first ticks of a route
    creep: CreepConfig = CreepConfig()


@dataclass(frozen=True)
class PlannerConfig:
    """Route planner: which plan to follow and the pop / look-ahead distances (metres)."""

    plan: Literal["sparse", "dense"] = "sparse"  # sparse: the leaderboard's ~50 m plan; dense: 1 m (the authors)
    min_distance: float = 7.5
    max_distance: float = 25.0


@dataclass(frozen=True)
class SaveConfig:
    """What the agent writes under SAVE_PATH/<save_name>/ when SAVE_PATH is set."""

    trace: bool = True
    metric_info: bool = True
    metric_info_every: int = 200  # ticks between atomic rewrites of metric_info.json (and at destroy)
    image_every: int = 0  # save the used camera images every N inferences (0: never)
    counterfactual_every: int = 0  # counterfactual routing every N inferences into the trace (0: never)


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs; see docs/agent-config.md for each field."""

    checkpoint: str
    device: str = "cuda"
    dtype: str = "float32"
    preset: str = "default"
    inference_interval: int = 2  # ticks (20 Hz) between model calls; the last control is held in between
    inference_start: str = "first_tick"  # or after_initial_brake: no model / PID during the initial brake
    seed: int = 0
    jpeg_quality: int | None = 20  # None: the frames are already dataset JPEGs (replay), no second round trip
    jpeg_decode_scale: int = 1  # 2: half-resolution JPEG decode, ~2.5x cheaper, not bit-exact
    prepare_threads: int = 2  # threads preparing one camera frame's row strips (bit-identical for any value)
    gpu_preprocessing: bool = False  # CUDA: resize (and JPEG via nvJPEG) on the device; not bit-exact, see docs/model.md
    cuda_graphs: bool = True  # CUDA only: prefix + denoising replayed as one captured graph (exact)
    # --- switches the presets set (see docs/conventions.md) ---
    test_time_augmentation: bool = False
    seeded_noise: bool = True
    history_mode: str = "current_10hz"
    theta_wrap: bool = True  # ego-history heading differences wrapped into [-pi, pi)
    jpeg_channels: str = "rgb"  # authors_swapped: the JPEG round trip sees R and B swapped, as in their agent
    desired_speed_mode: str = "half_second"
    pose_origin: str = "vehicle"  # the point the pose describes: vehicle origin (training data) or GNSS antenna
    camera_set: str = "bench2drive_rig"  # cameras sensors() declares; authors_agent: Drive-pi0 only front and back
    controller: ControllerConfig = ControllerConfig()
    planner: PlannerConfig = PlannerConfig()
    save: SaveConfig = SaveConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The values each preset sets; a YAML value for the same key wins.
# Every switch appears in both presets; docs/conventions.md gives the evidence for each value.
PRESET_VALUES: dict[str, dict[str, Any]] = {
    "default": {
        "dtype": "float32",
        "inference_start": "first_tick",
        "test_time_augmentation": False,
        "seeded_noise": True,
        "history_mode": "current_10hz",
        "theta_wrap": True,
        "jpeg_channels": "rgb",
        "desired_speed_mode": "half_second",
        "pose_origin": "vehicle",
        "camera_set": "bench2drive_rig",
        "controller": {"aim_origin": "first_waypoint", "min_aim_norm": 0.5, "creep": {"enabled": True}},
        "planner": {"plan": "sparse"},
    },
    "official": {
        "dtype": "float32",
        "inference_start": "after_initial_brake",
        "test_time_augmentation": True,
        "seeded_noise": False,
        "history_mode": "official_offset",
        "theta_wrap": False,
        "jpeg_channels": "authors_swapped",
        "desired_speed_mode": "official",
        "pose_origin": "gnss_mount",
        "camera_set": "authors_agent",
        "controller": {"aim_origin": "ego", "min_aim_norm": 0.0, "creep": {"enabled": False}},
        "planner": {"plan": "dense"},
    },
}


def preset_switches(config: "AgentConfig | dict[str, Any]") -> dict[str, Any]:
    """The preset name and the value of every switch a preset sets (for the trace header)."""
    values = config.to_dict() if isinstance(config, AgentConfig) else config

    def pick(template: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
        return {k: pick(v, source[k]) if isinstance(v, dict) else source[k] for k, v in template.items()}

    return {"preset": values["preset"], "switches": pick(PRESET_VALUES[values["preset"]], values)}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(config: AgentConfig, source: str) -> AgentConfig:
    choices = {
        "preset": (config.preset, PRESETS),
        "dtype": (config.dtype, DTYPES),
        "history_mode": (config.history_mode, HISTORY_MODES),
        "desired_speed_mode": (config.desired_speed_mode, DESIRED_SPEED_MODES),
        "planner.plan": (config.planner.plan, PLAN_SOURCES),
        "inference_start": (config.inference_start, INFERENCE_STARTS),
        "jpeg_channels": (config.jpeg_channels, JPEG_CHANNELS),
        "controller.aim_origin": (config.controller.aim_origin, AIM_ORIGINS),
        "pose_origin": (config.pose_origin, POSE_ORIGINS),
        "camera_set": (config.camera_set, CAMERA_SETS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise AgentConfigError(f"{source}: field {name!r} is {value!r}, expected one of {list(allowed)}")
    positive = {
        "inference_interval": config.inference_interval,
        "controller.speed_pid.window": config.controller.speed_pid.window,
        "controller.turn_pid.window": config.controller.turn_pid.window,
        "save.metric_info_every": config.save.metric_info_every,
        "prepare_threads": config.prepare_threads,
    }
    for name, value in positive.items():
        if value < 1:
            raise AgentConfigError(f"{source}: field {name!r} must be >= 1, got {value}")
    non_negative = {
        "controller.min_aim_norm": config.controller.min_aim_norm,
        "controller.steer_standstill_speed": config.controller.steer_standstill_speed,
        "controller.initial_brake_ticks": config.controller.initial_brake_ticks,
        "save.image_every": config.save.image_every,
        "save.counterfactual_every": config.save.counterfactual_every,  # 0 is "off"; a negative N is a typo, not "off"
    }
    for name, value in non_negative.items():
        if not value >= 0 or not math.isfinite(value):
            raise AgentConfigError(f"{source}: field {name!r} must be a finite number >= 0, got {value}")
    if config.gpu_preprocessing and not str(config.device).startswith("cuda"):
        raise AgentConfigError(f"{source}: field 'gpu_preprocessing' needs a CUDA device, got device {config.device!r}")
    if config.gpu_preprocessing and config.jpeg_decode_scale != 1:
        raise AgentConfigError(f"{source}: fields 'gpu_preprocessing' and 'jpeg_decode_scale' {config.jpeg_decode_scale} exclude each other")
    if config.jpeg_decode_scale not in (1, 2):
        raise AgentConfigError(f"{source}: field 'jpeg_decode_scale' must be 1 or 2, got {config.jpeg_decode_scale}")
    if config.jpeg_quality is not None and not 1 <= config.jpeg_quality <= 100:
        raise AgentConfigError(f"{source}: field 'jpeg_quality' must be in 1..100, got {config.jpeg_quality}")
    if config.planner.min_distance <= 0 or config.planner.max_distance <= config.planner.min_distance:
        raise AgentConfigError(
            f"{source}: planner distances must satisfy 0 < min_distance < max_distance, got "
            f"{config.planner.min_distance} / {config.planner.max_distance}"
        )
    if not config.checkpoint:
        raise AgentConfigError(f"{source}: field 'checkpoint' is empty")
    return config


def agent_config_from_dict(values: dict[str, Any], source: str = "<dict>") -> AgentConfig:
    """Build an AgentConfig from a plain mapping (the parsed YAML), applying the chosen preset."""
    if not isinstance(values, dict):
        raise AgentConfigError(f"{source}: the top level must be a mapping of fields, got {type(values).__name__}")
    if "checkpoint" not in values:
        raise AgentConfigError(f"{source}: required field 'checkpoint' (the converted model folder) is missing")
    preset = values.get("preset", "default")
    if preset not in PRESETS:
        raise AgentConfigError(f"{source}: field 'preset' is {preset!r}, expected one of {list(PRESETS)}")
    merged = _merge(PRESET_VALUES[preset], values)
    return _validate(build_dataclass(AgentConfig, merged, source, error=AgentConfigError), source)


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read a YAML agent config; relative `checkpoint` paths are resolved against the YAML's folder."""
    path = Path(path)
    text = read_text_file(path, AgentConfigError, f"agent config {path}")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise AgentConfigError(f"agent config {path}: not valid YAML: {error}") from None
    if values is None:
        raise AgentConfigError(f"agent config {path}: file is empty (it needs at least 'checkpoint')")
    config = agent_config_from_dict(values, source=f"agent config {path}")
    checkpoint = Path(config.checkpoint).expanduser()
    if not checkpoint.is_absolute():
        checkpoint = (path.parent / checkpoint).resolve()
    return dataclasses.replace(config, checkpoint=str(checkpoint))


def parse_agent_config_argument(argument: str) -> tuple[str, str | None]:
    """Split the evaluator's `config+save_name+...` string into (config path, last save name or None).

    The evaluator appends '+<save_name>' to args.agent_config for every route, so on route k the
    string holds k save names; the config path is the part before the first '+'.
    """
    if not argument:
        raise AgentConfigError("agent config argument is empty: pass --agent-config <yaml>")
    parts = argument.split("+")
    save_name = parts[-1] if len(parts) > 1 and parts[-1] else None
    return parts[0], save_name
