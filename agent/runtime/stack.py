"""The agent's logic without the leaderboard: one tick of sensor data in, one control (+ trace line) out.

Usage (the leaderboard adapter agent/drivemoe_agent.py and the offline replay both do this):

    stack = AgentStack(config, policy, route_xy, reference, image_size=224, history_steps=5,
                       trace=TraceWriter(folder) or None)
    for frame_data, timestamp in ticks:                       # 20 Hz
        out = stack.tick(frame_data, timestamp)               # TickOutput
        send(out.control)                                     # ControlCommand: steer/throttle/brake

`frame_data` uses the leaderboard's `input_data` layout: sensor id -> (frame, data) with the ids of
agent/runtime/sensor_frames.py: cameras "CAM_*" as uint8 [H, W, 4] BGRA (or [H, W, 3] BGR), "GPS" [lat, lon,
alt], "IMU" [ax, ay, az, gx, gy, gz, compass], "SPEED" {"speed": m/s}. Missing cameras are only an
error if the policy asks for them; missing GNSS / NaN compass are held over (see localization.py).
`route_xy` is the plan in CARLA world metres ([N, 2]); `reference` the GNSS geoReference
(`route_from_plans` builds both from the leaderboard's plans).

Per tick: localise -> advance the route planner -> push the ego record. Every `inference_interval`
ticks (from tick 0) the policy runs on a lazy camera Mapping (front first, then only the camera the
router picks), the controller turns the waypoints into a control, and a trace line is written. In
between, the last control is held. During the first `initial_brake_ticks` ticks the control sent is
a full brake (the model still runs, so the previous-front image and the trace are continuous).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.runtime.config import AgentConfig
from agent.runtime.controller import BRAKE, ControlCommand, Controller
from agent.runtime.ego_history import EgoHistoryBuffer
from agent.runtime.localization import GeoReference, Localizer, gps_to_world, solve_reference
from agent.runtime.route_planner import RoutePlanner
from agent.runtime.sensor_frames import LazyCameraImages, TestTimeAugmentation, read_measurements
from agent.runtime.routing_trace import TraceWriter, trace_record
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
    ) -> None:
        self.config = config
        self.policy = policy
        self.image_size = image_size
        self.localizer = Localizer(reference)
        self.planner = RoutePlanner(route_xy, config.planner.min_distance, config.planner.max_distance)
        self.history = EgoHistoryBuffer(history_steps, config.history_mode)
        self.controller = Controller(config.controller, config.desired_speed_mode)
        self.trace = trace
        self._observation_factory = observation_factory
        self._augment = (
            TestTimeAugmentation(seed=config.seed if config.seeded_noise else None)
            if config.test_time_augmentation
            else None
        )
        self.frame = -1
        self.inferences = 0
        self._last_control: ControlCommand = BRAKE
        self._previous_front: PreparedImage | None = None
        self.last_images: LazyCameraImages | None = None
        # one pool for the route's camera frames (or the device path, agent config gpu_preprocessing)
        self._preparer = DevicePreparer(config.device) if config.gpu_preprocessing else FramePreparer(config.prepare_threads)

    def tick(self, input_data: Mapping[str, Any], timestamp: float) -> TickOutput:
        """Process one 20 Hz tick; see the module docstring."""
        started = time.perf_counter()
        self.frame += 1
        measurements = read_measurements(input_data)
        pose = self.localizer.update(measurements.gnss, measurements.compass)
        target_world = self.planner.step(pose.xy)
        self.history.push(
            EgoWorldRecord(
                x=pose.x,
                y=pose.y,
                compass=pose.compass,
                speed=measurements.speed,
                acceleration=measurements.acceleration,
                angular_velocity=measurements.angular_velocity,
                command_far=(float(target_world[0]), float(target_world[1])),
            )
        )
        initial_brake = self.frame < self.config.controller.initial_brake_ticks
        if self.frame % self.config.inference_interval != 0:
            return TickOutput(BRAKE if initial_brake else self._last_control, False, None, None)

        images = LazyCameraImages(
            input_data,
            self.image_size,
            self.config.jpeg_quality,
            self._previous_front,
            self._augment,
            decode_scale=self.config.jpeg_decode_scale,
            preparer=self._preparer,
        )
        seed = self.config.seed + self.inferences if self.config.seeded_noise else None
        model_started = time.perf_counter()
        prediction = self.policy.predict(
            self._observation_factory(images=images, ego_history=self.history.history(), jpeg_quality=None, seed=seed)
        )
        model_ms = (time.perf_counter() - model_started) * 1000.0
        dt = self.config.inference_interval * TICK_SECONDS
        waypoints = np.asarray(prediction.waypoints, dtype=np.float64)
        if waypoints.ndim == 2 and waypoints.shape[0] >= 2 and np.all(np.isfinite(waypoints)):
            command = self.controller.step(waypoints, measurements.speed, dt=dt)
        else:  # never crash the route on a bad prediction: brake and say so
            LOGGER.warning("frame %d: policy returned unusable waypoints %r; braking", self.frame, waypoints.shape)
            command = BRAKE
        self._last_control = command
        sent = BRAKE if initial_brake else command
        if FRONT in images.accessed:  # this front becomes CAM_FRONT_PREVIOUS of the next inference
            self._previous_front = images.prepared(FRONT)
        self.last_images = images
        self.inferences += 1

        record = None
        if self.trace is not None:
            saved = {}
            every = self.config.save.image_every
            if every and (self.inferences - 1) % every == 0:
                saved = self.trace.save_images(self.frame, images.served)
            latency = {"model": model_ms}
            timings = getattr(prediction, "timings_ms", None) or {}
            for key in ("vision", "prefix", "denoise"):
                if key in timings:
                    latency[key] = float(timings[key])
            latency["tick"] = (time.perf_counter() - started) * 1000.0
            target_ego = world_to_ego(target_world[None], pose.xy, pose.compass)[0]
            record = trace_record(
                frame=self.frame,
                sim_time=timestamp,
                speed=measurements.speed,
                position=(pose.x, pose.y),
                compass=pose.compass,
                target_point=(float(target_ego[0]), float(target_ego[1])),
                prediction=prediction,
                control=sent.as_dict(),
                latency_ms=latency,
                images=saved,
            )
            self.trace.append(record)
        return TickOutput(sent, True, record, prediction)
