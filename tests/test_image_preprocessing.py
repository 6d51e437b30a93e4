"""Camera-frame preprocessing: antialiased bilinear resize, JPEG round trip, pixel scaling, validation."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from model.errors import ObservationError
from model.image_preprocessing import (
    PreparedImage,
    jpeg_round_trip,
    prepare_camera_image,
    to_pixel_values,
    validate_prepared_image,
)


def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of a bilinear (triangle) filter whose support widens when shrinking."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for out_index in range(out_size):
        center = (out_index + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((taps - center + 0.5) / filter_scale), 0.0, None)
        weights[out_index, lo:hi] = w / w.sum()
    return weights


def _reference_antialiased_bilinear(rgb: np.ndarray, size: int) -> np.ndarray:
    """Independent numpy model of torchvision Resize on PIL: horizontal pass, round, vertical pass."""
    horizontal = _triangle_weights(rgb.shape[1], size)
    vertical = _triangle_weights(rgb.shape[0], size)
    channels_first = rgb.astype(np.float64).transpose(2, 0, 1)  # [3, H, W]
    tmp = np.clip(np.floor(channels_first @ horizontal.T + 0.5), 0, 255)  # [3, H, size]
    out = (vertical @ tmp).transpose(1, 2, 0)  # [size, size, 3]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _sample_frame(drivemoe_reference: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(drivemoe_reference / "sample_frame" / f"example_{name}.jpg").convert("RGB"))


def test_resize_matches_antialiased_bilinear_model_on_real_frame(drivemoe_reference: Path) -> None:
    frame = _sample_frame(drivemoe_reference, "f")
    prepared = prepare_camera_image(frame, 224, jpeg_quality=None, camera="CAM_FRONT")
    reference = _reference_antialiased_bilinear(frame, 224).transpose(2, 0, 1)
    diff = np.abs(prepared.chw.astype(int) - reference.astype(int))
    # PIL uses 22-bit fixed-point coefficients; a float model agrees to within one grey level.
    assert diff.max() <= 1
    assert diff.mean() < 0.05
    # A non-antialiased resize is far away: the test would catch a switch to cv2.INTER_LINEAR.
    naive = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    assert np.abs(naive.astype(int) - reference.astype(int)).max() > 50


def test_prepared_image_layout_and_orientation() -> None:
    # Left half red, right half blue, top row green: checks channel order and axes after resizing.
    frame = np.zeros((90, 160, 3), dtype=np.uint8)
    frame[:, :80, 0] = 255
    frame[:, 80:, 2] = 255
    frame[:10, :, 1] = 255
    prepared = prepare_camera_image(frame, 16, jpeg_quality=None, camera="CAM_BACK")
    assert isinstance(prepared, PreparedImage)
    assert prepared.camera == "CAM_BACK" and prepared.size == 16
    assert prepared.chw.shape == (3, 16, 16) and prepared.chw.dtype == np.uint8
    assert prepared.chw[0, 8, 0] == 255 and prepared.chw[2, 8, 0] == 0
    assert prepared.chw[2, 8, 15] == 255 and prepared.chw[0, 8, 15] == 0
    assert prepared.chw[1, 0, 5] > 200 and prepared.chw[1, 15, 5] == 0


def test_jpeg_round_trip_matches_pil_encoder_and_changes_pixels() -> None:
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), (7, 7), 3)
    ours = jpeg_round_trip(smooth, 20)
    assert ours.shape == smooth.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - smooth.astype(int)).mean() > 1.0  # quality 20 is lossy
    # Same colour handling as a plain RGB JPEG written by PIL (both libjpeg; tiny decoder differences only).
    import io

    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=20)
    pil = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.abs(ours.astype(int) - pil.astype(int)).mean() < 1.0
    # Swapping colour channels before encoding (a BGR/RGB mix-up) would be clearly different.
    swapped = jpeg_round_trip(smooth[:, :, ::-1].copy(), 20)[:, :, ::-1]
    assert np.abs(swapped.astype(int) - ours.astype(int)).mean() > np.abs(ours.astype(int) - pil.astype(int)).mean()


def test_jpeg_quality_is_applied_before_resizing() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with_jpeg = prepare_camera_image(frame, 32, jpeg_quality=20)
    expected = np.asarray(Image.fromarray(jpeg_round_trip(frame, 20)).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(with_jpeg.chw, expected.transpose(2, 0, 1))
    without = prepare_camera_image(frame, 32, jpeg_quality=None)
    assert not np.array_equal(with_jpeg.chw, without.chw)


def test_frame_already_at_model_size_is_not_resampled() -> None:
    frame = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_camera_image(frame, 32, None).chw, frame.transpose(2, 0, 1))


def test_pixel_values_formula() -> None:
    chw = np.array([0, 1, 127, 128, 254, 255], dtype=np.uint8).reshape(1, 1, 6).repeat(3, axis=0)
    values = to_pixel_values(chw)
    assert values.dtype == torch.float32
    expected = (torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.float32) * (1.0 / 255.0) - 0.5) / 0.5
    torch.testing.assert_close(values[0, 0], expected, rtol=0, atol=0)
    assert values.min() == -1.0 and values.max() == 1.0
    with pytest.raises(ObservationError, match="uint8"):
        to_pixel_values(chw.astype(np.float32))


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "dtype is float32"),
        (np.zeros((10, 10), dtype=np.uint8), "shape"),
        (np.zeros((10, 10, 4), dtype=np.uint8), "4 channels"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_frames_name_the_camera(frame: object, message: str) -> None:
    with pytest.raises(ObservationError, match=message) as info:
        prepare_camera_image(frame, 16, jpeg_quality=20, camera="CAM_FRONT_LEFT")  # type: ignore[arg-type]
    assert "CAM_FRONT_LEFT" in str(info.value)


def test_bad_jpeg_quality_and_prepared_image_checks() -> None:
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ObservationError, match="jpeg_quality"):
        prepare_camera_image(frame, 8, jpeg_quality=0)
    good = PreparedImage(chw=np.zeros((3, 8, 8), dtype=np.uint8), camera="CAM_BACK")
    assert validate_prepared_image(good, 8, "CAM_BACK").shape == (3, 8, 8)
    with pytest.raises(ObservationError, match=r"CAM_BACK.*\(3, 16, 16\)"):
        validate_prepared_image(good, 16, "CAM_BACK")
    with pytest.raises(ObservationError, match="uint8"):
        validate_prepared_image(PreparedImage(np.zeros((3, 8, 8), np.float32), "CAM_BACK"), 8, "CAM_BACK")
