"""Read and write one Bench2Drive clip in the dataset's own layout.

Layout (one clip folder, named `<Scenario>_<Town>_Route<id>_Weather<id>`):
    anno/<index:05d>.json.gz                       gzip JSON annotation per 10 Hz frame
    camera/<CameraSpec.dataset_folder>/<index:05d>.jpg   RGB JPEG per camera (quality 20 in the dataset)

One reader for training, replay and the demo; every problem with a file is raised as a
`ClipError` that names the clip, the frame and the file.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from model.cameras import BENCH2DRIVE_CAMERAS, CAMERAS_BY_NAME
from model.errors import DriveMoEError

ANNO_FOLDER = "anno"
CAMERA_FOLDER = "camera"
ANNO_SUFFIX = ".json.gz"
IMAGE_SUFFIX = ".jpg"
CAMERA_NAMES: tuple[str, ...] = tuple(c.name for c in BENCH2DRIVE_CAMERAS)
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


class ClipError(DriveMoEError):
    """A clip is missing, truncated or has an unreadable annotation or image."""


def frame_file_name(index: int, suffix: str) -> str:
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return f"{index:05d}{suffix}"


def _camera_folder(camera: str) -> str:
    try:
        return CAMERAS_BY_NAME[camera].dataset_folder
    except KeyError:
        raise ValueError(f"unknown camera {camera!r}: expected one of {CAMERA_NAMES}") from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 HxWx3 image."""
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 HxWx3, got dtype {image.dtype} shape {image.shape}")
    ok, buffer = cv2.imencode(
        IMAGE_SUFFIX, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buffer.tobytes()


def write_frame(
    clip_dir: str | Path,
    index: int,
    annotation: dict,
    images: Mapping[str, np.ndarray],
    jpeg_quality: int = 20,
) -> None:
    """Write frame `index` of a clip: its gzip JSON annotation and one JPEG per given camera.

    `images` maps camera names from model.cameras (e.g. "CAM_FRONT") to RGB uint8 HxWx3 arrays.
    Files are written atomically, so a reader never sees a half-written frame.
    """
    clip = Path(clip_dir)
    if not isinstance(annotation, dict):
        raise ValueError(f"annotation of frame {index} must be a dict, got {type(annotation).__name__}")
    payload = gzip.compress(json.dumps(annotation).encode("utf-8"), mtime=0)
    for camera, image in images.items():
        folder = _camera_folder(camera)
        _atomic_write_bytes(
            clip / CAMERA_FOLDER / folder / frame_file_name(index, IMAGE_SUFFIX), encode_jpeg(image, jpeg_quality)
        )
    # The annotation last: a frame counts as present once its annotation exists.
    _atomic_write_bytes(clip / ANNO_FOLDER / frame_file_name(index, ANNO_SUFFIX), payload)


class B2DClip:
    """One Bench2Drive clip folder; frames are the annotation files present under anno/."""

    def __init__(self, clip_dir: str | Path) -> None:
        self.path = Path(clip_dir)
        if not self.path.is_dir():
            raise ClipError(f"clip {self.path}: not a directory")
        anno_dir = self.path / ANNO_FOLDER
        if not anno_dir.is_dir():
            raise ClipError(f"clip {self.name}: no {ANNO_FOLDER}/ folder in {self.path}")
        indices = []
        for entry in anno_dir.iterdir():
            if not entry.name.endswith(ANNO_SUFFIX):
                continue
            stem = entry.name[: -len(ANNO_SUFFIX)]
            if stem.isdigit():
                indices.append(int(stem))
        self._frame_indices: tuple[int, ...] = tuple(sorted(indices))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frame_indices(self) -> tuple[int, ...]:
        return self._frame_indices

    def __len__(self) -> int:
        return len(self._frame_indices)

    def __repr__(self) -> str:
        return f"B2DClip({str(self.path)!r}, frames={len(self)})"

    def missing_frames(self) -> list[int]:
        """Indices absent between the first and the last annotation (a gap in the 10 Hz sequence)."""
        if not self._frame_indices:
            return []
        present = set(self._frame_indices)
        return [i for i in range(self._frame_indices[0], self._frame_indices[-1] + 1) if i not in present]

    def annotation_path(self, index: int) -> Path:
        return self.path / ANNO_FOLDER / frame_file_name(index, ANNO_SUFFIX)

    def annotation(self, index: int) -> dict:
        """The decoded annotation of frame `index`; ClipError if missing, truncated or not JSON."""
        path = self.annotation_path(index)
        where = f"clip {self.name} frame {index} ({path})"
        try:
            raw = gzip.decompress(path.read_bytes())
        except FileNotFoundError:
            raise ClipError(f"{where}: annotation file missing") from None
        except (EOFError, OSError, zlib.error) as error:
            raise ClipError(f"{where}: truncated or corrupt gzip annotation ({error})") from None
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ClipError(f"{where}: annotation is not valid JSON ({error})") from None
        if not isinstance(value, dict):
            raise ClipError(f"{where}: annotation must be a JSON object, got {type(value).__name__}")
        return value

    def image_path(self, camera: str, index: int) -> Path:
        return self.path / CAMERA_FOLDER / _camera_folder(camera) / frame_file_name(index, IMAGE_SUFFIX)

    def read_image_bytes(self, camera: str, index: int) -> bytes:
        """The JPEG file of one camera and frame, checked for start/end markers (truncation)."""
        path = self.image_path(camera, index)
        where = f"clip {self.name} frame {index} camera {camera} ({path})"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ClipError(f"{where}: image file missing") from None
        if not data.startswith(_JPEG_START):
            raise ClipError(f"{where}: not a JPEG file ({len(data)} bytes)")
        if not data.rstrip(b"\x00").endswith(_JPEG_END):
            raise ClipError(f"{where}: truncated JPEG (no end-of-image marker, {len(data)} bytes)")
        return data

    def check_image(self, camera: str, index: int) -> None:
        """Cheap integrity check without decoding: the file exists and has JPEG start and end markers."""
        path = self.image_path(camera, index)
        where = f"clip {self.name} frame {index} camera {camera} ({path})"
        try:
            with path.open("rb") as handle:
                head = handle.read(2)
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 64))
                tail = handle.read()
        except FileNotFoundError:
            raise ClipError(f"{where}: image file missing") from None
        if head != _JPEG_START:
            raise ClipError(f"{where}: not a JPEG file ({size} bytes)")
        if not tail.rstrip(b"\x00").endswith(_JPEG_END):
            raise ClipError(f"{where}: truncated JPEG (no end-of-image marker, {size} bytes)")

    def read_image(self, camera: str, index: int) -> np.ndarray:
        """RGB uint8 HxWx3 image of one camera at frame `index`."""
        data = self.read_image_bytes(camera, index)
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if decoded is None or decoded.ndim != 3 or decoded.shape[2] != 3:
            raise ClipError(
                f"clip {self.name} frame {index} camera {camera} ({self.image_path(camera, index)}): "
                "JPEG could not be decoded"
            )
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
