"""The agent's logic without the leaderboard: one tick of sensor data in, one control (+ trace line) out.

Usage (the leaderboard adapter agent/drivemoe_agent.py and the offline replay both do this):

    stack = AgentStack(config, policy, route_xy, reference, image_size=224, history_steps=5,
                       trace=TraceWriter(folder) or None)
    for frame_data, timestamp in ticks:                       # 20 Hz
        out = stack.tick(frame_data, timestamp)               # TickOutput
        send(out.control)                                     # ControlCommand: steer/throttle/brake

`frame_data` uses the leaderboard's `input_data` layout: sensor id -> (frame, data) with the ids of
agent/runtime/sensor_frames.py: cameras "CAM_*" as uint8 [H, W, 4] BGRA (or [H, W, 3] BGR), "GPS" [lat, lon,
alt], "IMU" [ax, ay, az, gx, gy, gz, compass], "SPEED" {"speed": m/s}. Bad or missing readings never
raise: sensor_guard.py holds the last valid camera frame / speed briefly or brakes, localization.py
rejects impossible GNSS / compass readings; each is logged once per kind and recorded
(docs/agent-robustness.md). A policy that raises (e.g. on a camera with no usable frame) brakes the tick.
`route_xy` is the plan in CARLA world metres ([N, 2]); `reference` the GNSS geoReference
(`route_from_plans` builds both from the leaderboard's plans).

Per tick: localise (the vehicle origin, or the GNSS antenna with `pose_origin: gnss_mount`) -> advance
the route planner -> push the ego record. Every `inference_interval`
ticks the policy runs on a lazy camera Mapping (front first, then only the camera the router picks),
the controller turns the waypoints into a control, and a trace line is written. In between, the last
control is held. During the first `initial_brake_ticks` ticks the control sent is a full brake.
`inference_start` says when the model runs: `first_tick` (default) on ticks 0, 2, 4, ... (during the
brake too, so the trace is continuous; the controller is not stepped while the brake is sent, so its
integrators start from zero and the first non-brake control is the one computed after the brake);
`after_initial_brake` (the authors' schedule, drivemoe_carla_agent.py:277-286) not at all during the
brake and then on ticks 11, 13, 15, ...
The previous-front image is always the front of the tick `inference_interval` ticks back: the prepared
front of the previous inference when there was one, else that tick's raw frame prepared now.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.runtime.config import AgentConfig
from agent.runtime.controller import BRAKE, ControlCommand, Controller
from agent.runtime.ego_history import EgoHistoryBuffer
from agent.runtime.localization import GeoReference, Localizer, Pose, gps_to_world, solve_reference
from agent.runtime.route_planner import RoutePlanner
from agent.runtime.sensor_frames import LazyCameraImages, gnss_mount_offset, read_measurements
from agent.runtime.sensor_guard import Fault, FaultLog, SensorGuard
from agent.runtime.routing_trace import TraceWriter, trace_record
from model.augmentation import TestTimeAugmentation
from model.cameras import FRONT
from model.device_preprocessing import DevicePreparer
from model.ego_state import EgoWorldRecord, world_to_ego
from model.image_preprocessing import FramePreparer, PreparedImage

LOGGER = logging.getLogger(__name__)
TICK_SECONDS = 0.05  # the leaderboard runs CARLA synchronously at 20 Hz


class PolicyLike(Protocol):
    def predict(self, observation: Any) -> Any: ...


@dataclass(frozen=True)
class TickOutput:
    """What one tick produced."""

    control: ControlCommand  # what to send to CARLA this tick
    inferred: bool  # whether the policy ran this tick
    record: dict[str, Any] | None  # the trace line of this inference (None between inferences)
    prediction: Any | None  # the policy's Prediction (None between inferences)


def route_from_plans(
    gps_plan: Sequence[tuple[Mapping[str, float], Any]],
    reference_pair: tuple[Mapping[str, float], tuple[float, float]] | None,
) -> tuple[np.ndarray, GeoReference]:
    """World route [N, 2] and geoReference from a leaderboard GPS plan [({'lat','lon','z'}, option)].

    `reference_pair` = (gps dict, (world x, world y)) of one plan point, e.g. the first entries of
    `_global_plan` and `_global_plan_world_coord`; None uses CARLA's default reference (42.0, 2.0).
    """
    if len(gps_plan) == 0:
        raise ValueError("the global plan is empty: set_global_plan() must be called before setup()")
    if reference_pair is None:
        reference = GeoReference()
    else:
        gps, (x, y) = reference_pair
        reference = solve_reference(float(gps["lat"]), float(gps["lon"]), float(x), float(y))
    latlon = np.array([[float(p["lat"]), float(p["lon"])] for p, _ in gps_plan], dtype=np.float64)
    return gps_to_world(latlon, reference), reference


def _make_observation(**kwargs: Any) -> Any:
    from model.policy import Observation  # imported on use: model-side module

    return Observation(**kwargs)


class AgentStack:
    """Localisation, planner, ego history, lazy images, policy call, controller and trace for one route."""

    def __init__(
        self,
        config: AgentConfig,
        policy: PolicyLike,
        route_xy: np.ndarray,
        reference: GeoReference,
        image_size: int,
        history_steps: int = 5,
        trace: TraceWriter | None = None,
        observation_factory: Callable[..., Any] = _make_observation,
        counterfactual: Callable[[Any, Any, int], dict[str, Any] | None] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.image_size = image_size
        # pose_origin "vehicle": every position below (planner, ego history, trace) is the vehicle origin, as in training
        self.localizer = Localizer(reference, gnss_mount_offset() if config.pose_origin == "vehicle" else (0.0, 0.0))
        self.pose: Pose | None = None  # the localised pose of the last tick
        self.planner = RoutePlanner(route_xy, config.planner.min_distance, config.planner.max_distance)
        self.history = EgoHistoryBuffer(history_steps, config.history_mode, wrap_theta=config.theta_wrap)
        self.controller = Controller(config.controller, config.desired_speed_mode)
        self.trace = trace
        self.guard = SensorGuard()  # bad sensor input: hold or brake, never raise (docs/agent-robustness.md)
        self.fault_log = FaultLog(trace.folder) if trace is not None else None
        self._observation_factory = observation_factory
        if counterfactual is None and config.save.counterfactual_every > 0:  # off by default: costs a batched re-run
            from agent.debugger.counterfactual_hook import CounterfactualHook

            counterfactual = CounterfactualHook(policy, every=config.save.counterfactual_every)
        self.counterfactual = counterfactual  # (observation, prediction, inference index) -> trace object or None
        self._augment = (
            TestTimeAugmentation(seed=config.seed if config.seeded_noise else None)
            if config.test_time_augmentation
            else None
        )
        self.frame = -1
        self.inferences = 0
        self._last_control: ControlCommand = BRAKE
        self._previous_front: PreparedImage | None = None
        self._previous_front_tick = -1
        self._raw_fronts: deque[tuple[int, Any]] = deque(maxlen=config.inference_interval + 1)
        self.last_images: LazyCameraImages | None = None
        # one pool for the route's camera frames (or the device path, agent config gpu_preprocessing)
        self._preparer = DevicePreparer(config.device) if config.gpu_preprocessing else FramePreparer(config.prepare_threads)

    def _inference_due(self) -> bool:
        interval = self.config.inference_interval
        if self.config.inference_start == "after_initial_brake":
            start = self.config.controller.initial_brake_ticks
            return self.frame >= start and (self.frame - start) % interval == 0
        return self.frame % interval == 0

    def _history_front(self) -> PreparedImage | None:
        """The prepared front of the tick `inference_interval` back (None: use the current front)."""
        wanted = self.frame - self.config.inference_interval
        if self._previous_front is not None and self._previous_front_tick == wanted:
            return self._previous_front
        for tick, raw in self._raw_fronts:
            if tick == wanted and raw is not None:
                try:
                    lazy = LazyCameraImages({FRONT: raw}, self.image_size, self.config.jpeg_quality, None,
                                            decode_scale=self.config.jpeg_decode_scale,
                                            jpeg_channels=self.config.jpeg_channels)
                    return lazy.prepared(FRONT)
                except (ValueError, KeyError, TypeError, IndexError) as error:  # a broken old frame: use the current one
                    LOGGER.warning("frame %d: front of tick %d unusable (%s); using the current front", self.frame, tick, error)
        return None

    def tick(self, input_data: Mapping[str, Any], timestamp: float) -> TickOutput:
        """Process one 20 Hz tick; see the module docstring."""
        started = time.perf_counter()
        self.frame += 1
        measurements = read_measurements(input_data)
        guarded = self.guard.check(input_data, measurements.speed, measurements.speed_fault, self.frame)
        pose = self.pose = self.localizer.update(measurements.gnss, measurements.compass, measurements.speed, timestamp)
        faults = list(guarded.faults) + [self.guard.note(fault) for fault in pose.faults]
        if pose.relocalised:
            self.planner.relocate(pose.xy, pose.moved + self.config.planner.max_distance)
        target_world = self.planner.step(pose.xy)
        self.history.push(
            EgoWorldRecord(
                x=pose.x,
                y=pose.y,
                compass=pose.compass,
                speed=guarded.speed,
                acceleration=measurements.acceleration,
                angular_velocity=measurements.angular_velocity,
                command_far=(float(target_world[0]), float(target_world[1])),
            )
        )
        # unchecked on purpose: cameras are checked when read (a broken old front is replaced in _history_front)
        self._raw_fronts.append((self.frame, input_data.get(FRONT) if isinstance(input_data, Mapping) else None))
        initial_brake = self.frame < self.config.controller.initial_brake_ticks
        if guarded.brake_reason is not None:
            self._last_control = BRAKE
            return self._without_inference(BRAKE, faults + guarded.camera_faults(braked=True), timestamp)
        if not self._inference_due():
            held = BRAKE if initial_brake else self._last_control
            return self._without_inference(held, faults + guarded.camera_faults(braked=False), timestamp)

        images = LazyCameraImages(
            guarded.input_data,
            self.image_size,
            self.config.jpeg_quality,
            self._history_front(),
            self._augment,
            decode_scale=self.config.jpeg_decode_scale,
            jpeg_channels=self.config.jpeg_channels,
            preparer=self._preparer,
        )
        seed = self.config.seed + self.inferences if self.config.seeded_noise else None
        model_started = time.perf_counter()
        observation = self._observation_factory(images=images, ego_history=self.history.history(), jpeg_quality=None, seed=seed)
        try:
            prediction = self.policy.predict(observation)
        except Exception as error:  # e.g. the router picked a camera with no usable frame: brake, never crash
            fault = Fault("policy", type(error).__name__, str(error)[:300], "brake")
            faults += guarded.camera_faults(braked=True) + [self.guard.note(fault, exc_info=error)]
            self._last_control = BRAKE
            return self._without_inference(BRAKE, faults, timestamp)
        faults += guarded.camera_faults(braked=False)
        model_ms = (time.perf_counter() - model_started) * 1000.0
        counterfactual, counterfactual_started = None, time.perf_counter()
        if self.counterfactual is not None:
            counterfactual = self.counterfactual(observation, prediction, self.inferences)
        counterfactual_ms = (time.perf_counter() - counterfactual_started) * 1000.0
        dt = self.config.inference_interval * TICK_SECONDS
        try:  # keep the policy's float32: the authors' controller computes in it
            waypoints = np.asarray(prediction.waypoints)
            if waypoints.dtype not in (np.float32, np.float64):
                waypoints = waypoints.astype(np.float64)
        except (TypeError, ValueError):
            waypoints = np.empty((0,))
        if initial_brake:  # the PIDs only integrate controls that are sent, so nothing winds up while braking
            command = BRAKE
        elif waypoints.ndim == 2 and waypoints.shape[0] >= 2 and np.all(np.isfinite(waypoints)):
            command = self.controller.step(waypoints, guarded.speed, dt=dt)
        else:  # never crash the route on a bad prediction: brake and say so
            LOGGER.warning("frame %d: policy returned unusable waypoints %r; braking", self.frame, waypoints.shape)
            command = BRAKE
        self._last_control = sent = command
        if FRONT in images.accessed:  # this front becomes CAM_FRONT_PREVIOUS of the next inference
            self._previous_front = images.prepared(FRONT)
            self._previous_front_tick = self.frame
        self.last_images = images
        self.inferences += 1

        record = None
        if self.trace is not None:
            saved = {}
            every = self.config.save.image_every
            if every and (self.inferences - 1) % every == 0:
                saved = self._written(lambda: self.trace.save_images(self.frame, images.served), "images") or {}
            latency = {"model": model_ms}
            timings = getattr(prediction, "timings_ms", None) or {}
            for key in ("vision", "prefix", "denoise"):
                if key in timings:
                    latency[key] = float(timings[key])
            if counterfactual is not None:
                latency["counterfactual"] = counterfactual_ms
            latency["tick"] = (time.perf_counter() - started) * 1000.0
            target_ego = world_to_ego(target_world[None], pose.xy, pose.compass)[0]
            record = trace_record(
                frame=self.frame,
                sim_time=timestamp,
                speed=guarded.speed,
                position=(pose.x, pose.y),
                compass=pose.compass,
                target_point=(float(target_ego[0]), float(target_ego[1])),
                prediction=prediction,
                control=sent.as_dict(),
                latency_ms=latency,
                images=saved,
            )
            if faults:
                record["faults"] = [fault.as_dict() for fault in faults]
            if counterfactual is not None:
                record["counterfactual"] = counterfactual
            self._written(lambda: self.trace.append(record), "trace")
        if faults and self.fault_log is not None:
            self.fault_log.append(self.frame, timestamp, faults, sent.as_dict())
        return TickOutput(sent, True, record, prediction)

    def close(self) -> None:
        """Release the route's camera-preparation threads (the leaderboard builds a new agent per route)."""
        close = getattr(self._preparer, "close", None)
        if close is not None:
            close()

    def _written(self, write: Callable[[], Any], what: str) -> Any:
        """Run a trace write; a full or read-only disk is logged once and never changes the control."""
        try:
            return write()
        except OSError as error:
            self.guard.note(Fault(what, "OSError", f"{self.trace.folder if self.trace else ''}: {error}", "dropped"))
            return None

    def _without_inference(self, control: ControlCommand, faults: list[Fault], timestamp: float) -> TickOutput:
        if faults and self.fault_log is not None:
            self.fault_log.append(self.frame, timestamp, faults, control.as_dict())
        return TickOutput(control, False, None, None)
