"""`drivemoe replay`: run the live agent's stack (agent/runtime/stack.py) over a recorded Bench2Drive clip, no CARLA.

Each 10 Hz clip frame becomes two 20 Hz ticks of the leaderboard's `input_data` layout (the second a
copy 0.05 s later), so the stack's clock, its 10 Hz ego history (every 2nd tick) and its inference
every 2nd tick line up with the dataset frames exactly: inference k sees frame k, the history holds
frames k-4..k and CAM_FRONT_PREVIOUS is frame k-1, as in training. Sensor values come from the
annotation: GNSS as a receiver at the agent's antenna mount would read it (the ego box location, the
vehicle origin the training windows use, moved back by the mount offset along `theta`; the annotated
`x`, `y` when there is no usable ego box) through the leaderboard's Mercator projection with CARLA's
default geoReference (agent/runtime/localization.py inverts it), IMU from acceleration, angular_velocity and the
compass-style `theta`, speed from `speed` (a missing or unusable one reaches the stack as such: its
sensor guard holds the last valid speed or brakes, and the replay warns naming clip, frames and field); cameras are read from the clip only when the policy asks
(BGR frames; the stack's JPEG round trip at the agent's quality runs as live).

The global route (`--route`): `commands` (default) is the first ego position followed by the clip's
distinct far commands in order: the sparse plan points the data collector's planner targeted, so
the stack's planner (same 7.5 / 25 m rule) hands the model the far commands it was trained with on
this clip. `trajectory` is the clip's ego path resampled every 50 m (the leaderboard's sparse-plan
spacing) plus the last far command; clips without far commands always use it.

Outputs in OUT_DIR: the routing trace (trace.jsonl, trace_header.json with the clip path and the
scenario type), `scores.json` when ground truth exists (agent/debugger/replay_scoring.py) and, if given, a
copy of the camera labels as camera_labels.json (read by `drivemoe routing-report`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.debugger.counterfactual_hook import CounterfactualHook
from agent.runtime.config import AgentConfig, agent_config_from_dict
from agent.runtime.localization import GeoReference, ego_offset_to_world, world_to_gps
from agent.debugger.replay_scoring import FramePrediction, score_replay
from agent.runtime.sensor_frames import GNSS_ID, IMU_ID, SPEED_ID, gnss_mount_offset
from agent.runtime.stack import AgentStack
from agent.runtime.routing_trace import TraceWriter
from bench2drive_eval.jsonio import read_json, write_json_atomic
from model.cameras import BENCH2DRIVE_CAMERAS, router_class_of_label
from model.dataset.b2d_clip import B2DClip, ClipError
from model.training.windows import _ego_position as ego_box_position

LOGGER = logging.getLogger(__name__)
DATASET_HZ = 10.0
TICKS_PER_FRAME = 2


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay; `agent` holds the agent settings used live (preset, controller, planner, ...)."""

    skip_bad_frames: bool = False
    route: str = "commands"  # or "trajectory"; see the module docstring
    route_spacing_m: float = 50.0  # trajectory routes only
    preset: str = "default"
    seed: int = 0
    progress: bool = True
    counterfactual_every: int = 0  # re-run every N-th inference under the other routing choices (0: never)
    counterfactual_frames: tuple[int | None, int | None] = (None, None)  # clip frames [A, B) to do it for


@dataclass(frozen=True)
class ReplayResult:
    out_dir: Path
    trace_dir: Path
    inferences: int
    skipped_frames: tuple[int, ...]
    scores: dict | None
    warnings: tuple[str, ...]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_annotation(annotation: dict, where: str) -> None:
    for key in ("x", "y"):
        if not _finite(annotation.get(key)):
            raise ClipError(f"{where}: field {key!r} must be a finite number, got {annotation.get(key)!r}")


def _vector(value: Any, n: int) -> list[float]:
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return [0.0] * n
    return [float(v) if math.isfinite(v) else 0.0 for v in array[:n]] if array.shape[0] >= n else [0.0] * n


def antenna_position(annotation: dict) -> tuple[float, float]:
    """World (x, y) of the GNSS antenna: the ego box location (the vehicle origin, read as the training
    windows read it) plus the mount offset turned by the compass `theta`; the annotated `x`, `y`
    (GNSS-derived) when the box or theta is unusable."""
    origin, problem = ego_box_position(annotation)
    theta = annotation.get("theta")
    if problem is not None or not _finite(theta):
        return float(annotation["x"]), float(annotation["y"])
    dx, dy = ego_offset_to_world(*gnss_mount_offset(), float(theta))
    return origin[0] + dx, origin[1] + dy


class ClipTick(Mapping):
    """One tick of leaderboard-style `input_data` built from a clip frame; cameras decoded on demand."""

    def __init__(self, clip: B2DClip, frame: int, annotation: dict, reference: GeoReference) -> None:
        self.clip = clip
        self.frame = frame
        lat, lon = world_to_gps(np.array(antenna_position(annotation)), reference)
        theta = annotation.get("theta")
        compass = float(theta) if _finite(theta) else float("nan")  # NaN is held over by the localiser
        self._values: dict[str, Any] = {
            GNSS_ID: (frame, np.array([lat, lon, 0.0])),
            IMU_ID: (frame, np.array(_vector(annotation.get("acceleration"), 3) + _vector(annotation.get("angular_velocity"), 3) + [compass])),
            # the raw value, bad or absent too: the stack's SensorGuard holds the last valid speed or brakes
            SPEED_ID: (frame, {"speed": annotation["speed"]} if "speed" in annotation else {}),
        }
        self._cameras = {c.name for c in BENCH2DRIVE_CAMERAS}

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if key in self._cameras:
            rgb = self.clip.read_image(key, self.frame)
            return self.frame, np.ascontiguousarray(rgb[:, :, ::-1])  # BGR, as CARLA delivers (minus alpha)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:  # without decoding an image
        return key in self._values or key in self._cameras

    def __iter__(self) -> Iterator[str]:
        return iter([*self._values, *sorted(self._cameras)])

    def __len__(self) -> int:
        return len(self._values) + len(self._cameras)


class _ClipFrameTrace(TraceWriter):
    """The stack's trace writer, with `frame` set to the clip's frame index (the format's replay rule)."""

    clip_frame = 0

    def append(self, record: dict[str, Any]) -> None:
        record["frame"] = self.clip_frame
        record["sim_time"] = self.clip_frame / DATASET_HZ
        super().append(record)

    def save_images(self, frame: int, images: dict) -> dict[str, str]:
        return super().save_images(self.clip_frame, images)


def resample_route(points: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` metres along a polyline (first and last point kept)."""
    points = np.asarray(points, dtype=np.float64)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    points = points[keep]
    if len(points) < 2:
        return points
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    samples = np.append(np.arange(0.0, arc[-1], spacing), arc[-1])
    return np.stack([np.interp(samples, arc, points[:, 0]), np.interp(samples, arc, points[:, 1])], axis=1)


def _far_command(annotation: dict) -> tuple[float, float] | None:
    x, y = annotation.get("x_command_far"), annotation.get("y_command_far")
    return (float(x), float(y)) if _finite(x) and _finite(y) else None


def build_route(annotations: list[dict], mode: str, spacing: float) -> np.ndarray:
    """[N >= 2, 2] world route for the stack's planner from the clip's annotations, in frame order."""
    if mode not in ("commands", "trajectory"):
        raise ValueError(f"route mode must be 'commands' or 'trajectory', got {mode!r}")
    positions = np.array([[a["x"], a["y"]] for a in annotations], dtype=np.float64)
    commands = [c for c in (_far_command(a) for a in annotations) if c is not None]
    if mode == "commands" and commands:
        points = [tuple(positions[0])]
        for command in commands:
            if np.hypot(command[0] - points[-1][0], command[1] - points[-1][1]) > 0.01:
                points.append(command)
        route = np.array(points)
    else:
        route = positions if not commands else np.concatenate([positions, [commands[-1]]])
        route = resample_route(route, spacing)
    if len(route) < 2:  # a standing car without commands: the planner still needs a target
        route = np.concatenate([route, route])
    return route


def load_camera_labels(path: str | Path) -> dict[int, str]:
    """Authors' per-clip camera labels: frame index -> camera name or "NULL"; errors name file and frame."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: camera labels must be a JSON object (frame index -> camera), got {type(raw).__name__}")
    labels = {}
    for key, value in raw.items():
        try:
            frame = int(key)
        except ValueError:
            raise ValueError(f"{path}: frame index {key!r} is not an integer") from None
        try:
            router_class_of_label(str(value))
        except ValueError as error:
            raise ValueError(f"{path}: frame {key}: {error}") from None
        labels[frame] = str(value)
    return labels


def _scenario_skill(clip_name: str) -> tuple[str | None, int | None, tuple[str, ...]]:
    from model.skills import SKILL_NAMES, scenario_of_clip_name, skill_of_scenario

    try:
        scenario = scenario_of_clip_name(clip_name)
    except ValueError:
        return None, None, SKILL_NAMES
    try:
        return scenario, int(skill_of_scenario(scenario)), SKILL_NAMES
    except ValueError:
        return scenario, None, SKILL_NAMES


def speed_warnings(clip_name: str, annotations: dict[int, dict]) -> list[str]:
    """One warning per kind of unusable annotation speed (missing, None, NaN, ...), naming clip, field and
    frames. The frames are still replayed: the stack's sensor guard decides (agent/runtime/sensor_guard.py)."""
    from agent.runtime.sensor_guard import MAX_HELD_TICKS, speed_problem

    bad: dict[str, tuple[list[int], str]] = {}
    for frame, annotation in sorted(annotations.items()):
        problem = ("missing", "no 'speed' key") if "speed" not in annotation else speed_problem(annotation["speed"])
        if problem is not None:
            bad.setdefault(problem[0], ([], problem[1]))[0].append(frame)
    return [f"clip {clip_name} frame(s) {frames}: field 'speed' unusable ({kind}: {detail}); never read as 0: "
            f"the agent holds the last valid speed for up to {MAX_HELD_TICKS} ticks, then brakes"
            for kind, (frames, detail) in bad.items()]


def _read_frames(clip: B2DClip, skip: bool) -> tuple[dict[int, dict], list[int], list[str]]:
    """Good annotations by frame, skipped frames, warnings; raise ClipError on the first bad frame unless skip."""
    good: dict[int, dict] = {}
    skipped: list[int] = []
    warnings: list[str] = []
    if not clip.frame_indices:
        raise ClipError(f"clip {clip.name}: no annotation files under anno/")
    for frame in clip.missing_frames():
        message = f"clip {clip.name} frame {frame}: annotation file missing ({clip.annotation_path(frame)})"
        if not skip:
            raise ClipError(message + " (use --skip-bad-frames to skip it)")
        skipped.append(frame)
        warnings.append(message + "; skipped")
    for frame in clip.frame_indices:
        try:
            annotation = clip.annotation(frame)
            _check_annotation(annotation, f"clip {clip.name} frame {frame} ({clip.annotation_path(frame)})")
            for camera in BENCH2DRIVE_CAMERAS:
                clip.read_image_bytes(camera.name, frame)  # presence and JPEG markers; decoded on demand
        except ClipError as error:
            if not skip:
                raise ClipError(f"{error} (use --skip-bad-frames to skip it)") from None
            skipped.append(frame)
            warnings.append(f"{error}; skipped")
            continue
        good[frame] = annotation
    if not good:
        raise ClipError(f"clip {clip.name}: every frame is bad; nothing to replay")
    return good, sorted(skipped), warnings


def run_replay(
    clip_dir: str | Path,
    policy: Any,
    out_dir: str | Path,
    camera_labels: str | Path | None = None,
    config: ReplayConfig = ReplayConfig(),
    agent_config: AgentConfig | None = None,
    model_info: dict[str, Any] | None = None,
    warn: Callable[[str], None] = LOGGER.warning,
) -> ReplayResult:
    """Replay `clip_dir` through AgentStack with `policy` (a model.policy.DrivePolicy or alike)."""
    from tqdm import tqdm

    clip = B2DClip(clip_dir)
    labels = load_camera_labels(camera_labels) if camera_labels is not None else None
    annotations, skipped, warnings = _read_frames(clip, config.skip_bad_frames)
    warnings += speed_warnings(clip.name, annotations)
    for message in warnings:
        warn(message)
    frames = sorted(annotations)
    route_xy = build_route([annotations[f] for f in frames], config.route, config.route_spacing_m)
    reference = GeoReference()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if agent_config is None:
        agent_config = agent_config_from_dict(
            {"checkpoint": str(model_info.get("path", "in-memory")) if model_info else "in-memory",
             "device": str(getattr(policy, "device", "cpu")), "preset": config.preset, "seed": config.seed}
        )
    # Dataset frames are already the JPEG (quality 20) the model was trained on: a second round trip
    # would degrade them beyond what training saw, so the replay decodes them once, like the data pipeline.
    agent_config = dataclasses.replace(agent_config, jpeg_quality=None)
    trace = _ClipFrameTrace(out)
    trace.write_header(model_info or {}, agent_config.to_dict(), clip.name)
    scenario, skill, skill_names = _scenario_skill(clip.name)
    header = read_json(out / "trace_header.json")
    header.update({"clip": str(clip.path.resolve()), "scenario_type": scenario, "source": "drivemoe replay"})
    model_config = getattr(policy, "config", None)
    if getattr(model_config, "use_action_moe", False):
        from model.counterfactual import expert_names

        header["expert_names"] = list(expert_names(model_config.action_moe.num_experts))
    write_json_atomic(out / "trace_header.json", header)
    if labels is not None:
        write_json_atomic(out / "camera_labels.json", {str(k): v for k, v in sorted(labels.items())})

    policy_config = getattr(policy, "config", None)
    history_steps = policy_config.flow.cond_steps if policy_config is not None else 5
    horizon = policy_config.flow.horizon if policy_config is not None else 10
    counterfactual = None
    if config.counterfactual_every > 0:
        start, stop = config.counterfactual_frames
        counterfactual = CounterfactualHook(policy, config.counterfactual_every, wanted=lambda: (
            (start is None or trace.clip_frame >= start) and (stop is None or trace.clip_frame < stop)))
    stack = AgentStack(agent_config, policy, route_xy, reference, image_size=policy.image_size,
                       history_steps=history_steps, trace=trace, counterfactual=counterfactual)
    predictions: list[FramePrediction] = []
    try:
        for frame in tqdm(frames, desc=f"replay {clip.name}", unit="frame", disable=not config.progress):
            tick = ClipTick(clip, frame, annotations[frame], reference)
            trace.clip_frame = frame
            for sub in range(TICKS_PER_FRAME):
                try:
                    output = stack.tick(tick, frame / DATASET_HZ + sub / (DATASET_HZ * TICKS_PER_FRAME))
                except ClipError as error:  # an image that passed the marker check but does not decode
                    raise ClipError(f"{error} (use --skip-bad-frames to skip frames with bad files)") from None
                if output.inferred and output.prediction is not None:
                    p = output.prediction
                    selected = tuple(getattr(p, "selected_cameras", ()) or ())
                    logits = getattr(p, "action_router_logits", None)
                    predictions.append(FramePrediction(frame, np.asarray(p.waypoints), selected[0] if selected else None,
                                                       None if logits is None else np.asarray(logits)))
    finally:
        trace.close()
    scores = score_replay(predictions, annotations, labels, skill, skill_names, horizon)
    scores.update(clip=clip.name, scenario_type=scenario, skipped_frames=skipped)
    write_json_atomic(out / "scores.json", scores)
    return ReplayResult(out, out, len(predictions), tuple(skipped), scores, tuple(warnings))


def format_scores(scores: dict) -> list[str]:
    lines = []
    w = scores["waypoints"]
    if w["ade_m"] is not None:
        lines.append(f"waypoints: ADE {w['ade_m']:.2f} m, FDE {w['fde_m']:.2f} m over {w['scored_frames']} frames")
    else:
        lines.append("waypoints: no frame with a full ground-truth horizon")
    for key, name in (("camera_router", "camera router"),
                      ("skill_router", "skill router (argmax of the step-averaged logits = scenario skill)")):
        entry = scores[key]
        if entry.get("accuracy") is not None:
            lines.append(f"{name}: accuracy {entry['accuracy']:.3f} over {entry['scored_frames']} frames")
        else:
            lines.append(f"{name}: not scored ({entry.get('note', 'no data')})")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", required=True, help="Bench2Drive clip folder (anno/, camera/rgb_*/)")
    parser.add_argument("--model", required=True, help="converted model folder (model.safetensors + config.json)")
    parser.add_argument("--out", required=True, help="output folder for the trace and scores")
    parser.add_argument("--camera-labels", default=None, help="authors' per-clip camera label JSON (frame -> camera)")
    parser.add_argument("--skip-bad-frames", action="store_true", help="skip corrupt or missing frames with a warning")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype (default: stored)")
    parser.add_argument("--preset", default="default", choices=["default", "official"], help="agent preset")
    parser.add_argument("--seed", type=int, default=0, help="flow-noise seed")
    parser.add_argument("--route", default="commands", choices=["commands", "trajectory"],
                        help="global route from the clip's far commands (default) or its ego trajectory")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--counterfactual-every", type=int, default=0, metavar="N",
                        help="every N-th inference, also run the model under every other camera and skill-expert choice "
                             "and write the alternative trajectories to the trace (default 0: off)")
    parser.add_argument("--counterfactual-frames", default=None, metavar="A:B",
                        help="only for clip frames in [A, B) (either side optional); implies --counterfactual-every 1 if unset")


def main(args: argparse.Namespace) -> int:
    import torch

    from model.policy import DrivePolicy

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    from agent.debugger.debug_video import parse_frame_range

    if args.counterfactual_every < 0:
        raise ValueError(f"--counterfactual-every must be >= 0, got {args.counterfactual_every}")
    frames = parse_frame_range(args.counterfactual_frames, "--counterfactual-frames")
    every = args.counterfactual_every or (1 if args.counterfactual_frames else 0)
    policy = DrivePolicy.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    result = run_replay(args.clip, policy, args.out, args.camera_labels,
                        ReplayConfig(skip_bad_frames=args.skip_bad_frames, route=args.route, preset=args.preset, seed=args.seed,
                                     counterfactual_every=every, counterfactual_frames=frames),
                        model_info={"path": str(Path(args.model).resolve()), "name": policy.config.name},
                        warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    print(f"replayed {result.inferences} frames of {Path(args.clip).name} -> {result.trace_dir / 'trace.jsonl'}")
    if result.skipped_frames:
        print(f"skipped frames: {list(result.skipped_frames)}")
    for line in format_scores(result.scores or {}):
        print(line)
    return 0
