"""Camera-frame preprocessing shared by the policy and the training data pipeline (one definition).

A raw uint8 RGB frame becomes the model's uint8 [3, S, S] input in two steps:

1. optional JPEG round trip at full resolution (the Bench2Drive dataset stores JPEG quality 20, so
   live CARLA frames are compressed the same way before the model sees them);
2. a resize to S x S that reproduces torchvision `Resize((S, S))` applied to a PIL image, which is what
   the authors' agent and dataset do. torchvision hands PIL images to `PIL.Image.resize(BILINEAR)`,
   whose filter support widens with the scale factor (antialiasing when shrinking), so we call PIL
   directly and the output is identical by construction. Measured on three cameras of the reference sample frame
   (1600x900 -> 224x224) against this PIL path: OpenCV `INTER_LINEAR` (no antialiasing) differs by up
   to 149 grey levels (mean 7.3-8.5), `INTER_AREA` (box filter) by up to 37 (mean 1.9-2.2), so neither
   is used. A q20 round trip of those sample frames (already JPEGs) changes them by 0.01-0.02 levels on average.

Pixel values for the network are p = (u / 255 - 0.5) / 0.5, in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from model.errors import ObservationError


@dataclass(frozen=True)
class PreparedImage:
    """A camera image at the model's input size: uint8 RGB, channel-first [3, S, S]."""

    chw: np.ndarray
    camera: str

    @property
    def size(self) -> int:
        return int(self.chw.shape[-1])


def validate_rgb_frame(rgb: object, camera: str) -> np.ndarray:
    """Return `rgb` as a uint8 [H, W, 3] array or raise ObservationError naming the camera."""
    if not isinstance(rgb, np.ndarray):
        raise ObservationError(f"camera {camera!r}: image must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ObservationError(f"camera {camera!r}: image dtype is {rgb.dtype}, expected uint8 RGB")
    if rgb.ndim != 3:
        raise ObservationError(f"camera {camera!r}: image has shape {rgb.shape}, expected [H, W, 3]")
    if rgb.shape[2] != 3:
        raise ObservationError(
            f"camera {camera!r}: image has {rgb.shape[2]} channels (shape {rgb.shape}), expected 3 (RGB)"
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ObservationError(f"camera {camera!r}: image is empty (shape {rgb.shape})")
    return rgb


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB uint8 frame as JPEG at `quality` (1-100) and decode it again (libjpeg via OpenCV)."""
    if not 1 <= int(quality) <= 100:
        raise ObservationError(f"jpeg_quality must be in 1..100, got {quality}")
    # OpenCV expects BGR; converting keeps the YCbCr transform (and so the artefacts) that of a normal RGB JPEG.
    ok, encoded = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ObservationError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(decoded[:, :, ::-1])


def resize_like_torchvision_pil(rgb: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3] uint8, as torchvision `Resize((size, size))` on a PIL image."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    resized = Image.fromarray(rgb).resize((size, size), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def prepare_camera_image(
    rgb: np.ndarray, size: int, jpeg_quality: int | None, camera: str = "image"
) -> PreparedImage:
    """Raw RGB frame -> PreparedImage at `size` (JPEG round trip first when `jpeg_quality` is set)."""
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    frame = validate_rgb_frame(rgb, camera)
    if jpeg_quality is not None:
        frame = jpeg_round_trip(frame, jpeg_quality)
    resized = resize_like_torchvision_pil(frame, size)
    chw = np.ascontiguousarray(resized.transpose(2, 0, 1))
    chw.setflags(write=False)
    return PreparedImage(chw=chw, camera=camera)


def validate_prepared_image(image: PreparedImage, size: int, camera: str) -> np.ndarray:
    """The chw array of an already-prepared image, checked against the model's input size."""
    chw = image.chw
    if not isinstance(chw, np.ndarray) or chw.dtype != np.uint8:
        dtype = getattr(chw, "dtype", type(chw).__name__)
        raise ObservationError(f"camera {camera!r}: PreparedImage.chw has dtype {dtype}, expected uint8")
    if chw.shape != (3, size, size):
        raise ObservationError(
            f"camera {camera!r}: PreparedImage.chw has shape {chw.shape}, expected (3, {size}, {size})"
        )
    return chw


def to_pixel_values(chw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 pixel values (u / 255 - 0.5) / 0.5 in [-1, 1]."""
    tensor = torch.tensor(chw) if isinstance(chw, np.ndarray) else chw  # copy: prepared arrays are read-only
    if tensor.dtype != torch.uint8:
        raise ObservationError(f"pixel input must be uint8, got {tensor.dtype}")
    return (tensor.to(torch.float32) * (1.0 / 255.0) - 0.5) / 0.5
