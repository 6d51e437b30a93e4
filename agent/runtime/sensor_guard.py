"""Validation of each tick's camera frames and speed, and what the agent does about a bad reading.

A flaky simulator can drop a sensor for a tick or deliver a broken frame; the agent must then neither
crash (a throw in run_step ends the route as "Agent crashed") nor drive on a made-up value.

Cameras: a frame is usable when it is a numpy uint8 [H, W, 3 or 4] array with H, W > 0. An unusable
or absent frame is replaced by that camera's last usable frame while it is at most `max_held_ticks`
old (action "held"); otherwise the camera is left out of the tick's input (action "dropped"). Without
CAM_FRONT the policy cannot run, so the tick brakes without an inference (action "brake"); a dropped
side camera only matters if the router picks it (the stack then brakes too).
Speed: missing, None, non-numeric, non-finite or beyond `MAX_SPEED` is never read as 0 m/s (the
controller would then give full throttle): the last valid speed is held for up to `max_held_ticks`,
then the agent brakes until a valid reading arrives.
Each (sensor, kind) is logged once per route as a warning; every occurrence is counted and returned
as a `Fault` for the trace (see docs/agent-robustness.md).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.cameras import BENCH2DRIVE_CAMERAS, FRONT

LOGGER = logging.getLogger(__name__)
MAX_HELD_TICKS = 10  # 0.5 s at 20 Hz: a held camera frame or speed older than this is not used
MAX_SPEED = 100.0  # m/s; a speedometer reading beyond this is not physical for a car
FAULTS_FILE = "faults.jsonl"
CAMERA_NAMES: tuple[str, ...] = tuple(camera.name for camera in BENCH2DRIVE_CAMERAS)


@dataclass(frozen=True)
class Fault:
    """One bad reading of one tick and what was done about it."""

    sensor: str  # a camera name, "SPEED", "GPS", "IMU" or "policy"
    kind: str  # e.g. missing, none, shape, dtype, channels, empty, not_finite, out_of_range, jump
    detail: str  # what was received, shortly
    action: str  # held, dropped, brake

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class GuardedTick:
    """A tick's input after the guard: what the stack may use."""

    input_data: Mapping[str, Any]  # leaderboard layout; bad cameras replaced by held frames or left out
    speed: float  # m/s to use (fresh or held); meaningless when brake_reason says "speed"
    brake_reason: str | None  # set: send a full brake and skip the policy this tick
    faults: tuple[Fault, ...]


def camera_frame_problem(entry: Any) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one input_data entry (frame id, data) of a camera, or None."""
    if not isinstance(entry, (tuple, list)) or len(entry) < 2:
        return "malformed", f"entry is {type(entry).__name__}, expected (frame, data)"
    frame = entry[1]
    if frame is None:
        return "none", "data is None"
    if not isinstance(frame, np.ndarray):
        return "not_an_array", f"data is {type(frame).__name__}"
    if frame.ndim != 3:
        return "shape", f"shape {frame.shape}, expected [H, W, 4]"
    if frame.dtype != np.uint8:
        return "dtype", f"dtype {frame.dtype}, expected uint8"
    if frame.shape[2] not in (3, 4):
        return "channels", f"{frame.shape[2]} channels, expected 4 (BGRA) or 3 (BGR)"
    if frame.size == 0:
        return "empty", f"shape {frame.shape}"
    return None


def speed_problem(value: Any) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with a speedometer reading (after unwrapping {"speed": v}), or None."""
    if value is None:
        return "none", "speed is None"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return "not_a_number", f"speed is {type(value).__name__}"
    if not math.isfinite(float(value)):
        return "not_finite", f"speed is {float(value)!r}"
    if abs(float(value)) > MAX_SPEED:
        return "out_of_range", f"speed {float(value):.6g} m/s beyond {MAX_SPEED:g}"
    return None


class SensorGuard:
    """Per-route state of the camera and speed checks (last usable values, logged kinds, counts)."""

    def __init__(self, cameras: tuple[str, ...] = CAMERA_NAMES, max_held_ticks: int = MAX_HELD_TICKS) -> None:
        self.cameras = cameras
        self.max_held_ticks = int(max_held_ticks)
        self._held_frames: dict[str, tuple[int, Any]] = {}  # camera -> (tick it was received, entry)
        self._held_speed: tuple[int, float] | None = None
        self.counts: dict[tuple[str, str], int] = {}

    def check(self, input_data: Any, speed: float | None, speed_fault: tuple[str, str] | None, tick: int) -> GuardedTick:
        """Validate the cameras of `input_data` of tick number `tick`; `speed` / `speed_fault` come from
        read_measurements (None / (kind, detail) when the speedometer reading is unusable)."""
        data = dict(input_data) if isinstance(input_data, Mapping) else {}
        faults: list[Fault] = []
        if not isinstance(input_data, Mapping) or not input_data:
            shown = "empty" if isinstance(input_data, Mapping) else type(input_data).__name__
            faults.append(Fault("input_data", "empty" if shown == "empty" else "not_a_mapping", f"input_data is {shown}", "held"))
        for camera in self.cameras:
            fault = self._check_camera(data, camera, tick)
            if fault is not None:
                faults.append(fault)
        speed, speed_fault = self._check_speed(speed, speed_fault, tick)
        if speed_fault is not None:
            faults.append(speed_fault)
        brake = None
        if FRONT not in data:
            brake = f"no usable {FRONT} frame"
        elif speed_fault is not None and speed_fault.action == "brake":
            brake = "no valid speed"
        if brake is not None:
            faults = [f if f.action == "held" else Fault(f.sensor, f.kind, f.detail, "brake") for f in faults]
        for fault in faults:
            self.note(fault)
        return GuardedTick(data, speed, brake, tuple(faults))

    def note(self, fault: Fault, exc_info: BaseException | None = None) -> Fault:
        """Count a fault; log its (sensor, kind) the first time in this route (with `exc_info`'s traceback)."""
        key = (fault.sensor, fault.kind)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] == 1:
            LOGGER.warning("%s: %s (%s); %s. Logged once per route for this kind.", fault.sensor, fault.kind,
                           fault.detail, _ACTION_WORDS.get(fault.action, fault.action), exc_info=exc_info)
        return fault

    def _check_camera(self, data: dict[str, Any], camera: str, tick: int) -> Fault | None:
        if camera not in data:
            problem: tuple[str, str] | None = ("missing", "absent from input_data")
        else:
            problem = camera_frame_problem(data[camera])
        if problem is None:
            self._held_frames[camera] = (tick, data[camera])
            return None
        held = self._held_frames.get(camera)
        if held is not None and tick - held[0] <= self.max_held_ticks:
            data[camera] = held[1]
            return Fault(camera, *problem, "held")
        data.pop(camera, None)
        return Fault(camera, *problem, "dropped")

    def _check_speed(self, speed: float | None, problem: tuple[str, str] | None, tick: int) -> tuple[float, Fault | None]:
        if speed is not None and problem is None:
            self._held_speed = (tick, speed)
            return speed, None
        problem = problem or ("none", "speed is None")
        if self._held_speed is not None and tick - self._held_speed[0] <= self.max_held_ticks:
            return self._held_speed[1], Fault("SPEED", *problem, "held")
        last = self._held_speed[1] if self._held_speed is not None else 0.0
        return last, Fault("SPEED", *problem, "brake")


_ACTION_WORDS = {
    "held": "using the last valid reading",
    "dropped": "left out of this tick (no recent valid frame)",
    "brake": "braking",
    "relocalised": "taken as the new position",
}


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class FaultLog:
    """Appends one JSON line per tick with faults to <folder>/faults.jsonl (see docs/agent-robustness.md)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / FAULTS_FILE
        self._handle: Any = None  # opened on the first fault: a clean route leaves no file
        self.lines = 0

    def append(self, frame: int, sim_time: Any, faults: tuple[Fault, ...] | list[Fault], control: dict[str, float]) -> None:
        if self._handle is None:
            self._handle = open(self.path, "w", encoding="utf-8")
        self.lines += 1
        record = {"frame": int(frame), "sim_time": _finite_or_none(sim_time),
                  "faults": [f.as_dict() for f in faults], "control": {k: float(v) for k, v in control.items()}}
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
