"""Sensor declarations, per-tick sensor reading, and the lazy camera-image Mapping for the policy.

`leaderboard_sensors()` declares the six Bench2Drive cameras (or, `declared_cameras()`, the two the
authors' Drive-pi0 agent declares) exactly as model/cameras.py defines them, plus GNSS and IMU at
(-1.4, 0, 0) and the speedometer. `read_measurements()` pulls GNSS, IMU and speed out of the leaderboard's `input_data` (dict id -> (frame, data)) without ever raising on
a missing or NaN reading. `LazyCameraImages` converts a camera only when the policy asks for it
(BGRA -> RGB, JPEG round trip, resize via model/image_preprocessing.py), records the order of
those requests, and serves the previous inference's prepared front as CAM_FRONT_PREVIOUS.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.runtime.sensor_guard import speed_problem
from model.cameras import BENCH2DRIVE_CAMERAS, FRONT, FRONT_PREVIOUS, MODEL_IMAGE_ORDER
from agent.runtime.authors_jpeg import swapped_channel_jpeg_round_trip
from model.errors import ObservationError
from model.image_preprocessing import FramePreparer, PreparedImage, resize_like_torchvision_pil

GNSS_ID = "GPS"
IMU_ID = "IMU"
SPEED_ID = "SPEED"
IMU_GNSS_POSE = {"x": -1.4, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}


def gnss_mount_offset() -> tuple[float, float]:
    """Where the GNSS antenna sits on the car: (forward, right) metres from the vehicle origin."""
    return IMU_GNSS_POSE["x"], IMU_GNSS_POSE["y"]


ALL_CAMERAS: tuple[str, ...] = tuple(camera.name for camera in BENCH2DRIVE_CAMERAS)
# What the authors' Drive-pi0 agent declares (drivepi0_carla_agent.py:134-150); it feeds only the two
# fronts to the model, CAM_BACK is read and dropped. Their extra top-down "bev" camera (:174-182) only
# feeds their saved pictures and is not declared here (docs/conventions.md, `camera_set`).
DRIVE_PI0_AUTHORS_CAMERAS: tuple[str, ...] = (FRONT, "CAM_BACK")


def declared_cameras(camera_set: str, uses_camera_router: bool) -> tuple[str, ...]:
    """The camera ids `sensors()` declares: the whole rig, or (`authors_agent`) what the authors' agent of
    this model declares: all six for DriveMoE (drivemoe_carla_agent.py:132-176), front and back for Drive-pi0."""
    if camera_set == "authors_agent" and not uses_camera_router:
        return DRIVE_PI0_AUTHORS_CAMERAS
    return ALL_CAMERAS


def leaderboard_sensors(cameras: tuple[str, ...] = ALL_CAMERAS) -> list[dict[str, Any]]:
    """The agent's `sensors()` list: the given cameras of the rig (in rig order), GNSS, IMU and the
    speedometer (all within 3 m of the origin)."""
    sensors: list[dict[str, Any]] = [camera.leaderboard_sensor() for camera in BENCH2DRIVE_CAMERAS if camera.name in cameras]
    sensors.append({"type": "sensor.other.gnss", "id": GNSS_ID, **IMU_GNSS_POSE, "sensor_tick": 0.05})
    sensors.append({"type": "sensor.other.imu", "id": IMU_ID, **IMU_GNSS_POSE, "sensor_tick": 0.05})
    sensors.append({"type": "sensor.speedometer", "id": SPEED_ID, "reading_frequency": 20})
    return sensors


@dataclass(frozen=True)
class Measurements:
    """Non-image sensor values of one tick; None where the reading was absent or malformed."""

    gnss: np.ndarray | None  # (lat, lon) degrees, not yet checked (None: absent or not numeric)
    compass: float | None  # rad, 0 = north, clockwise (NaN in the first frames -> None)
    acceleration: tuple[float, float, float]  # m/s^2, ego frame; zeros when absent
    angular_velocity: tuple[float, float, float]  # rad/s, ego frame; zeros when absent
    speed: float | None  # m/s; None when absent or unusable (never read as 0)
    speed_fault: tuple[str, str] | None = None  # (kind, detail) of an unusable speed reading


def _float_list(value: Any) -> list[float] | None:
    """A sensor reading as a flat list of floats, or None when it is not numeric."""
    if value is None:
        return None
    try:
        return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1).tolist()]
    except (TypeError, ValueError):
        return None


def _reading(input_data: Mapping[str, Any], sensor_id: str) -> Any:
    """The data part of input_data[sensor_id] = (frame, data), or None when absent or malformed."""
    try:
        return input_data[sensor_id][1]
    except (KeyError, IndexError, TypeError):
        return None


def _finite3(values: list[float]) -> tuple[float, float, float]:
    return tuple(v if math.isfinite(v) else 0.0 for v in values[:3])  # type: ignore[return-value]


def read_measurements(input_data: Mapping[str, Any]) -> Measurements:
    """GNSS, IMU and speed from `input_data`; a missing or broken reading becomes None / zeros
    (speed: None and the reason, see agent/runtime/sensor_guard.py)."""
    gnss = None
    raw = _float_list(_reading(input_data, GNSS_ID))
    if raw is not None and len(raw) >= 2:  # range, finiteness and jumps: agent/runtime/localization.py
        gnss = np.array(raw[:2])
    acceleration = angular_velocity = (0.0, 0.0, 0.0)
    compass = None
    imu = _float_list(_reading(input_data, IMU_ID))
    if imu is not None and len(imu) >= 7:
        acceleration = _finite3(imu[0:3])
        angular_velocity = _finite3(imu[3:6])
        compass = imu[6] if math.isfinite(imu[6]) else None
    speed, speed_fault = _read_speed(input_data)
    return Measurements(gnss, compass, acceleration, angular_velocity, speed, speed_fault)


def _read_speed(input_data: Mapping[str, Any]) -> tuple[float | None, tuple[str, str] | None]:
    """(speed m/s, None) or (None, (kind, detail)) from the speedometer entry {"speed": v} (or a bare v)."""
    try:
        present = SPEED_ID in input_data
    except TypeError:
        present = False
    if not present:
        return None, ("missing", "absent from input_data")
    value = _reading(input_data, SPEED_ID)
    if isinstance(value, Mapping):
        if "speed" not in value:
            return None, ("missing", f"no 'speed' key in {sorted(map(str, value))}")
        value = value["speed"]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    problem = speed_problem(value)
    return (None, problem) if problem is not None else (float(value), None)


def _check_frame(frame: Any, camera: str) -> np.ndarray:
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4) or array.size == 0:
        raise ValueError(f"camera {camera!r}: expected a uint8 [H, W, 4] BGRA frame, got {array.dtype} {array.shape}")
    return array


def bgra_to_rgb(frame: np.ndarray, camera: str) -> np.ndarray:
    """A CARLA camera frame (uint8 [H, W, 4] BGRA, or [H, W, 3] BGR) -> contiguous uint8 [H, W, 3] RGB."""
    array = _check_frame(frame, camera)
    code = cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(np.ascontiguousarray(array), code)


_REDUCED_DECODE = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2}


def prepare_sensor_frame(
    frame: np.ndarray, size: int, jpeg_quality: int | None, camera: str, decode_scale: int = 1,
    jpeg_channels: str = "rgb",
) -> PreparedImage:
    """BGRA sensor frame -> PreparedImage, identical to prepare_camera_image(bgra_to_rgb(frame)).

    Faster on the hot path: the JPEG encoder takes BGR, so the frame goes BGRA -> BGR -> JPEG -> BGR
    -> RGB with cv2 conversions instead of numpy channel-reversal copies (which cost ~10x more).
    `decode_scale=2` decodes the JPEG at half resolution in the DCT domain before the resize: no
    longer bit-identical (mean 0.3 grey levels, 99th percentile 2, on the sample frame made non-JPEG)
    but about 2.5x cheaper; see docs/agent-config.md.
    """
    if decode_scale not in _REDUCED_DECODE:
        raise ValueError(f"decode_scale must be 1 or 2, got {decode_scale}")
    array = np.ascontiguousarray(_check_frame(frame, camera))
    if jpeg_channels == "authors_swapped" and jpeg_quality is not None:
        rgb = swapped_channel_jpeg_round_trip(bgra_to_rgb(array, camera), int(jpeg_quality), decode_scale)
        return _resized(rgb, size, camera)
    bgr = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR) if array.shape[2] == 4 else array
    if jpeg_quality is not None:
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)])
        if not ok:
            raise ValueError(f"camera {camera!r}: JPEG encoding failed for a frame of shape {bgr.shape}")
        bgr = cv2.imdecode(encoded, _REDUCED_DECODE[decode_scale])
    return _resized(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, camera)


def _resized(rgb: np.ndarray, size: int, camera: str) -> PreparedImage:
    chw = np.ascontiguousarray(resize_like_torchvision_pil(rgb, size).transpose(2, 0, 1))
    chw.setflags(write=False)
    return PreparedImage(chw=chw, camera=camera)


class LazyCameraImages(Mapping):
    """Mapping camera name -> PreparedImage, converting a sensor frame only when it is read.

    `accessed` lists the cameras in the order they were first prepared (CAM_FRONT_PREVIOUS only
    counts as prepared when it had to be built from the current front because no previous one
    existed). `augment`, when given, is applied to every image handed out (official preset).
    """

    def __init__(
        self,
        input_data: Mapping[str, Any],
        image_size: int,
        jpeg_quality: int | None,
        previous_front: PreparedImage | None,
        augment: Callable[[PreparedImage], PreparedImage] | None = None,
        keys: tuple[str, ...] = MODEL_IMAGE_ORDER,
        decode_scale: int = 1,
        jpeg_channels: str = "rgb",
        preparer: FramePreparer | None = None,  # or a DevicePreparer (same prepare() contract)
    ) -> None:
        self._input = input_data
        self._preparer = preparer  # the exact path on a thread pool (decode_scale 1 only)
        self._size = image_size
        self._quality = jpeg_quality
        self._previous = previous_front
        self._augment = augment
        self._keys = keys
        self._decode_scale = decode_scale
        self._jpeg_channels = jpeg_channels
        self._prepared: dict[str, PreparedImage] = {}  # before augmentation
        self._served: dict[str, PreparedImage] = {}
        self.accessed: list[str] = []

    # The mapping's keys are the cameras this tick can serve: a camera missing from the input (or
    # left out by agent/runtime/sensor_guard.py) is not listed, so errors never call it available.
    def _available(self, name: str) -> bool:
        if name == FRONT_PREVIOUS:
            return self._previous is not None or self._available(FRONT)
        try:
            return name in self._input
        except TypeError:
            return False

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._keys if self._available(name))

    def __contains__(self, key: object) -> bool:
        return key in self._keys and self._available(key)  # type: ignore[arg-type]

    def prepared(self, name: str) -> PreparedImage:
        """The un-augmented prepared image of `name` (converting it now if needed)."""
        if name not in self._prepared:
            if name == FRONT_PREVIOUS:
                if self._previous is not None:
                    return self._previous
                image = self.prepared(FRONT)
                self._prepared[name] = PreparedImage(chw=image.chw, camera=FRONT_PREVIOUS)
                return self._prepared[name]
            try:
                entry = self._input[name]
            except KeyError:
                raise KeyError(f"camera {name!r} is missing from this tick's sensor data") from None
            self._prepared[name] = self._convert(entry[1], name)
            self.accessed.append(name)
        return self._prepared[name]

    def _convert(self, frame: Any, name: str) -> PreparedImage:
        # the fast preparer implements the exact (training) channel order only; the authors' quirk stays on cv2
        if self._preparer is None or self._decode_scale != 1 or self._jpeg_channels != "rgb":
            return prepare_sensor_frame(frame, self._size, self._quality, name, self._decode_scale, self._jpeg_channels)
        try:
            return self._preparer.prepare(_check_frame(frame, name), self._size, self._quality, name)
        except ObservationError as error:  # same exception type as prepare_sensor_frame raises
            raise ValueError(str(error)) from None

    def __getitem__(self, name: str) -> PreparedImage:
        if name not in self._keys:
            raise KeyError(f"unknown camera {name!r}; expected one of {self._keys}")
        if name not in self._served:
            image = self.prepared(name)
            self._served[name] = self._augment(image) if self._augment is not None else image
        return self._served[name]

    @property
    def served(self) -> dict[str, PreparedImage]:
        """Images actually handed out this tick (augmented when augmentation is on)."""
        return dict(self._served)
