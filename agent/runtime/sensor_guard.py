"""Validation of each tick's camera frames and speed, and what the agent does about a bad reading.

A flaky simulator can drop a sensor for a tick or deliver a broken frame; the agent must then neither
crash (a throw in run_step ends the route as "Agent crashed") nor drive on a made-up value.

Cameras: a frame is usable when it is a numpy uint8 [H, W, 3 or 4] array with H, W > 0. An unusable
or absent frame is replaced by that camera's last usable frame while it is at most `max_held_ticks`
old (action "held"); otherwise the camera is left out of the tick's input (action "dropped"). Frames
are checked when the policy reads them (the replay's input decodes cameras on demand): a policy that
asks for a dropped camera (CAM_FRONT always, a side camera when the router picks it) fails, and the
stack brakes for that tick (action "brake").
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
from collections.abc import Iterator, Mapping
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime.routing_trace import strict_json_record
from model.cameras import BENCH2DRIVE_CAMERAS

LOGGER = logging.getLogger(__name__)
MAX_HELD_TICKS = 10  # 0.5 s at 20 Hz: a held camera frame or speed older than this is not used
MAX_SPEED = 100.0  # m/s; a speedometer reading beyond this is not physical for a car
FAULTS_FILE = "faults.jsonl"
EXPECTED_KINDS = frozenset({"not_yet_valid"})  # normal (CARLA's IMU gives NaN in the first frames): logged as info
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

    input_data: "GuardedInput"  # the tick's input_data; camera frames checked (and held over) as they are read
    speed: float  # m/s to use (fresh or held); meaningless when brake_reason is set
    brake_reason: str | None  # set: send a full brake and skip the policy this tick
    faults: tuple[Fault, ...]  # the speed's; input_data's and the cameras' are in input_data.faults (read lazily)

    def camera_faults(self, braked: bool) -> list[Fault]:
        """The faults of input_data and of the cameras read so far; "dropped" becomes "brake" if the tick braked."""
        if not braked:
            return list(self.input_data.faults)
        return [f if f.action != "dropped" else dataclasses.replace(f, action="brake") for f in self.input_data.faults]


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
        """Check tick number `tick`: the speed now (`speed` / `speed_fault` from read_measurements: None /
        (kind, detail) when unusable), the cameras when they are read through the returned input_data."""
        view = GuardedInput(self, input_data, tick)
        if not isinstance(input_data, Mapping):
            view.faults.append(self.note(Fault("input_data", "not_a_mapping", f"input_data is {type(input_data).__name__}", "dropped")))
        elif _is_empty(input_data):
            view.faults.append(self.note(Fault("input_data", "empty", "input_data holds no sensor", "dropped")))
        speed, fault = self._check_speed(speed, speed_fault, tick)
        if fault is not None:
            self.note(fault)
        brake = "no valid speed" if fault is not None and fault.action == "brake" else None
        return GuardedTick(view, speed, brake, (fault,) if fault is not None else ())

    def note(self, fault: Fault, exc_info: BaseException | None = None) -> Fault:
        """Count a fault; log its (sensor, kind) the first time in this route (with `exc_info`'s traceback)."""
        key = (fault.sensor, fault.kind)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] == 1:
            LOGGER.log(logging.INFO if fault.kind in EXPECTED_KINDS else logging.WARNING,"%s: %s (%s); %s. Logged once per route for this kind.", fault.sensor, fault.kind,
                           fault.detail, _ACTION_WORDS.get(fault.action, fault.action), exc_info=exc_info)
        return fault

    def camera_entry(self, input_data: Any, camera: str, tick: int, faults: list[Fault]) -> Any | None:
        """The usable (frame, data) entry of `camera` this tick: the fresh one, or the last usable one while
        it is at most max_held_ticks old, else None. A bad reading is noted and appended to `faults`."""
        try:
            entry = input_data[camera] if isinstance(input_data, Mapping) and camera in input_data else None
            problem = ("missing", "absent from input_data") if entry is None and not _has(input_data, camera) \
                else camera_frame_problem(entry)
        except Exception as error:  # a lazy input (the replay's clip reader) failed to produce the frame
            problem = ("unreadable", f"{type(error).__name__}: {error}"[:200])
        if problem is None:
            self._held_frames[camera] = (tick, entry)
            return entry
        held = self._held_frames.get(camera)
        if held is not None and tick - held[0] <= self.max_held_ticks:
            faults.append(self.note(Fault(camera, *problem, "held")))
            return held[1]
        faults.append(self.note(Fault(camera, *problem, "dropped")))
        return None

    def has_recent_frame(self, camera: str, tick: int) -> bool:
        held = self._held_frames.get(camera)
        return held is not None and tick - held[0] <= self.max_held_ticks

    def _check_speed(self, speed: float | None, problem: tuple[str, str] | None, tick: int) -> tuple[float, Fault | None]:
        if speed is not None and problem is None:
            self._held_speed = (tick, speed)
            return speed, None
        problem = problem or ("none", "speed is None")
        if self._held_speed is not None and tick - self._held_speed[0] <= self.max_held_ticks:
            return self._held_speed[1], Fault("SPEED", *problem, "held")
        last = self._held_speed[1] if self._held_speed is not None else 0.0
        return last, Fault("SPEED", *problem, "brake")


def _has(mapping: Any, key: str) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


def _is_empty(mapping: Mapping) -> bool:
    try:
        return len(mapping) == 0
    except TypeError:
        return False


class GuardedInput(Mapping):
    """A tick's input_data seen through the guard: a camera is checked when it is first read; a bad
    frame is replaced by the held one or, without a recent one, the camera is absent (KeyError, and
    not listed by `in` / iteration). Other sensors pass through unchanged."""

    def __init__(self, guard: SensorGuard, input_data: Any, tick: int) -> None:
        self._guard = guard
        self._input = input_data if isinstance(input_data, Mapping) else {}
        self._tick = tick
        self._checked: dict[str, Any | None] = {}  # camera -> usable entry (None: none this tick)
        self.faults: list[Fault] = []  # camera faults found so far this tick

    def usable(self, camera: str) -> bool:
        if camera not in self._checked:
            self._checked[camera] = self._guard.camera_entry(self._input, camera, self._tick, self.faults)
        return self._checked[camera] is not None

    def __getitem__(self, key: str) -> Any:
        if key in self._guard.cameras:
            if not self.usable(key):
                raise KeyError(f"camera {key!r} has no usable frame this tick")
            return self._checked[key]
        return self._input[key]

    def __contains__(self, key: object) -> bool:
        if key in self._guard.cameras:
            if key in self._checked:
                return self._checked[key] is not None
            return _has(self._input, key) or self._guard.has_recent_frame(key, self._tick)  # type: ignore[arg-type]
        return _has(self._input, key)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        others = [k for k in self._input if k not in self._guard.cameras]
        return iter([c for c in self._guard.cameras if c in self] + others)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_ACTION_WORDS = {
    "held": "using the last valid reading",
    "dropped": "left out of this tick (no recent valid reading)",
    "brake": "braking",
    "relocalised": "taken as the new position",
}


def _float_or_none(value: Any) -> float | None:
    """A number as float (NaN and inf kept, for strict_json_record to null and list), else None."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class FaultLog:
    """Appends one JSON line per tick with faults to <folder>/faults.jsonl (see docs/agent-robustness.md):
    strict JSON like trace.jsonl, a non-finite number written as null and its field named in `non_finite`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / FAULTS_FILE
        self._handle: Any = None  # opened on the first fault: a clean route leaves no file
        self.lines = 0
        self.failed = False

    def append(self, frame: int, sim_time: Any, faults: tuple[Fault, ...] | list[Fault], control: dict[str, float]) -> None:
        if self.failed:
            return
        record = {"frame": int(frame), "sim_time": _float_or_none(sim_time),
                  "faults": [f.as_dict() for f in faults], "control": {k: _float_or_none(v) for k, v in control.items()}}
        line = json.dumps(strict_json_record(record), allow_nan=False)  # strict JSON, as trace.jsonl
        try:
            if self._handle is None:
                self._handle = open(self.path, "w", encoding="utf-8")
            self._handle.write(line + "\n")
            self._handle.flush()
        except OSError as error:  # a full or read-only disk must not change what the car does
            self.failed = True
            LOGGER.warning("%s: cannot write (%s); no more faults are recorded in this route", self.path, error)
            return
        self.lines += 1

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
