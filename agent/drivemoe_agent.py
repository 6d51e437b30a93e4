"""The Bench2Drive leaderboard agent: a thin adapter from the leaderboard API to agent/runtime/stack.py.

Run by the upstream evaluator:
    python leaderboard/leaderboard/leaderboard_evaluator.py --agent <repo>/agent/drivemoe_agent.py \
        --agent-config <repo>/configs/agent/default.yaml --routes ... --track SENSORS
Per route the evaluator builds the agent, calls set_global_plan(), setup(config+save_name+...), then
run_step() every tick and destroy() at the end. With the environment variable SAVE_PATH set (the one
upstream convention we honour), SAVE_PATH/<save_name>/ receives trace.jsonl, trace_header.json,
metric_info.json and optional images.
"""
from __future__ import annotations

import gc
import logging
import math
import os
from pathlib import Path
from typing import Any

import carla
from leaderboard.autoagents import autonomous_agent

from agent.runtime.config import AgentConfig, AgentConfigError, load_agent_config, parse_agent_config_argument
from agent.runtime.metric_info import MetricInfoRecorder
from agent.runtime.sensor_frames import ALL_CAMERAS, declared_cameras, leaderboard_sensors
from agent.runtime.stack import AgentStack, route_from_plans
from agent.runtime.routing_trace import TraceWriter, model_expert_names

LOGGER = logging.getLogger(__name__)
SAVE_PATH_VARIABLE = "SAVE_PATH"


def get_entry_point() -> str:
    return "DriveMoEAgent"


def load_policy(config: AgentConfig, source: str) -> Any:
    """DrivePolicy from the converted checkpoint folder; errors name the config file and field."""
    folder = Path(config.checkpoint)
    if not folder.is_dir():
        raise AgentConfigError(f"{source}: field 'checkpoint': model folder {folder} does not exist")
    from model.errors import DriveMoEError
    from model.policy import DrivePolicy

    try:
        return DrivePolicy.from_pretrained(str(folder), device=config.device, dtype=config.dtype,
                                            cuda_graphs=config.cuda_graphs)
    except (DriveMoEError, FileNotFoundError) as error:
        raise AgentConfigError(f"{source}: field 'checkpoint' ({folder}): {error}") from None


def limit_cpu_threads(config: AgentConfig, source: str) -> int | None:
    """On `device: cpu`, torch's CPU threads as the `drivemoe` command sets them (DRIVEMOE_THREADS, else
    half the cores, at most 4: model/cli.py); torch's default (every core) competes with the CARLA
    server and the leaderboard on the same machine. None (torch untouched) on other devices."""
    if str(config.device).split(":")[0] != "cpu":
        return None
    import torch
    from model.cli import default_threads
    from model.errors import DriveMoEError

    try:
        threads = default_threads()
    except DriveMoEError as error:
        raise AgentConfigError(f"{source} (device cpu): environment variable {error}") from None
    torch.set_num_threads(threads)
    return threads


def policy_model_config(policy: Any) -> Any:
    """The ModelConfig a DrivePolicy was built with."""
    for name in ("model_config", "config"):
        value = getattr(policy, name, None)
        if value is not None and hasattr(value, "vision"):
            return value
    raise AttributeError(f"{type(policy).__name__} exposes no model config (expected .model_config or .config)")


class DriveMoEAgent(autonomous_agent.AutonomousAgent):
    """DriveMoE / Drive-pi0 on the Bench2Drive SENSORS track."""

    def setup(self, path_to_conf_file: str) -> None:
        self.track = autonomous_agent.Track.SENSORS
        config_path, save_name = parse_agent_config_argument(path_to_conf_file)
        self.config = load_agent_config(config_path)
        self.save_name = save_name
        self.cpu_threads = limit_cpu_threads(self.config, f"agent config {config_path}")
        self.policy = load_policy(self.config, f"agent config {config_path}")
        model_config = policy_model_config(self.policy)
        self.cameras = declared_cameras(self.config.camera_set, model_config.use_camera_router)

        if not self._global_plan or not self._global_plan_world_coord:
            raise RuntimeError("DriveMoEAgent.setup(): no global plan; the evaluator calls set_global_plan() first")
        if self.config.planner.plan == "dense":
            gps_plan = self._plan_gps_HACK
        else:
            gps_plan = self._global_plan
        first_world = self._global_plan_world_coord[0][0].location
        route_xy, reference = route_from_plans(gps_plan, (self._global_plan[0][0], (first_world.x, first_world.y)))

        self.trace: TraceWriter | None = None
        self.metric_info: MetricInfoRecorder | None = None
        save_root = os.environ.get(SAVE_PATH_VARIABLE)
        if save_root:
            folder = Path(save_root) / (save_name or "agent")
            folder.mkdir(parents=True, exist_ok=True)
            if self.config.save.trace:
                self.trace = TraceWriter(folder)
                self.trace.write_header(
                    model={"name": getattr(model_config, "name", None), "checkpoint": self.config.checkpoint},
                    agent_config=self.config.to_dict(),
                    save_name=save_name,
                    expert_names=model_expert_names(model_config),
                )
            if self.config.save.metric_info:
                self.metric_info = MetricInfoRecorder(folder / "metric_info.json", self.config.save.metric_info_every)
        self.stack = AgentStack(
            self.config,
            self.policy,
            route_xy,
            reference,
            image_size=model_config.vision.image_size,
            history_steps=model_config.flow.cond_steps,
            trace=self.trace,
        )
        LOGGER.info("DriveMoE agent ready: %s, preset %s, %d route points", model_config.name, self.config.preset, len(route_xy))

    def sensors(self) -> list[dict[str, Any]]:
        """The leaderboard calls setup() first (leaderboard_evaluator.py:364-368), so the config is known."""
        return leaderboard_sensors(getattr(self, "cameras", ALL_CAMERAS))

    def run_step(self, input_data: dict, timestamp: float) -> carla.VehicleControl:
        """One tick. Never raises: the leaderboard would end the route as "Agent crashed"; any error
        brakes this tick instead and is logged (with its traceback) once per error type."""
        steer, throttle, brake = 0.0, 0.0, 1.0
        try:
            out = self.stack.tick(input_data, timestamp)
            values = (float(out.control.steer), float(out.control.throttle), float(out.control.brake))
            if all(math.isfinite(v) for v in values):
                steer, throttle, brake = values
            else:
                self._step_failure(f"non-finite control {values}")
        except Exception as error:
            self._step_failure(f"{type(error).__name__}: {error}", error)
        if self.metric_info is not None and getattr(self, "hero_actor", None) is not None:
            try:
                self.metric_info.record(self.stack.frame, self.get_metric_info())
            except Exception as error:
                self._step_failure(f"metric_info: {type(error).__name__}: {error}", error)
        control = carla.VehicleControl()
        control.steer = steer
        control.throttle = throttle
        control.brake = brake
        return control

    def _step_failure(self, what: str, error: BaseException | None = None) -> None:
        failures = self.__dict__.setdefault("step_failures", {})
        kind = what.split(":")[0] if error is None else type(error).__name__
        failures[kind] = failures.get(kind, 0) + 1
        if failures[kind] == 1:
            LOGGER.error("run_step: %s; braking this tick (logged once per error type)", what, exc_info=error)

    def destroy(self) -> None:
        writers = [getattr(self, "trace", None), getattr(self, "metric_info", None),
                   getattr(getattr(self, "stack", None), "fault_log", None)]
        for writer in writers:
            if writer is not None:
                writer.close()
        if getattr(self, "stack", None) is not None:
            self.stack.close()
        self.stack = None
        self.policy = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
