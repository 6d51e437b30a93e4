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

import functools
import io
from concurrent.futures import ThreadPoolExecutor
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
    """Encode an RGB uint8 frame as JPEG at `quality` (1-100) with OpenCV and decode it again (Pillow's
    libjpeg-turbo decoder, which gives OpenCV's pixels faster; OpenCV's where `codecs_agree` says not)."""
    if not 1 <= int(quality) <= 100:
        raise ObservationError(f"jpeg_quality must be in 1..100, got {quality}")
    # OpenCV expects BGR; converting keeps the YCbCr transform (and so the artefacts) that of a normal RGB JPEG.
    ok, encoded = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ObservationError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    if codecs_agree()[0]:  # the same pixels, about half the time (see FramePreparer below)
        return np.array(_decode_with_pillow(encoded))
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


# ---- the same result, faster: PIL decode and row strips on a small thread pool -------------------
#
# Per camera, today's exact path is an OpenCV JPEG encode + OpenCV decode + PIL resize of the whole
# frame. Measured on the 1600x900 sample front (one core): Pillow's decoder (libjpeg-turbo, like
# OpenCV's, same integer IDCT and fancy upsampling) returns the same pixels in ~45% of OpenCV's decode
# time, and decodes straight into the image the resize reads. A frame also splits into row strips that
# prepare independently and give the same bytes, so two strips run on two threads (OpenCV and Pillow
# release the GIL):
# * JPEG: a strip starting and ending on 16-row MCU boundaries (4:2:0) encodes to the same quantised
#   blocks as in the whole frame; decoding differs only in the strip's outermost row (the chroma
#   upsampling reads the neighbouring chroma row), so each strip keeps >= 8 exact rows of margin.
# * Resize: PIL's bilinear resize takes a source `box`; an output-row range whose box edges are whole
#   source rows gets vertical filter coefficients equal to the whole frame's (checked below on the
#   integer coefficient table before a plan is used; otherwise the frame is prepared in one piece).

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point resampling coefficients (libImaging/Resample.c)
_MCU_ROWS = 16
_STRIP_MARGIN = 8


def _pil_bilinear_coefficients(in_size: int, in0: float, in1: float, out_size: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """(first source index, integer weights) per output index, computed the way Pillow computes them
    for its 8-bit BILINEAR resample (double arithmetic, float32 box edges, weights rounded half away)."""
    box0, box1 = float(np.float32(in0)), float(np.float32(in1))
    scale = float(np.float32(np.float32(box1) - np.float32(box0))) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale
    firsts, weights = [], []
    for xx in range(out_size):
        center = box0 + (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = []
        for x in range(xmax):
            t = abs((x + xmin - center + 0.5) * ss)
            taps.append(1.0 - t if t < 1.0 else 0.0)
        total = sum(taps)  # Pillow accumulates in the same order
        if total != 0.0:
            taps = [w / total for w in taps]
        fixed = tuple(int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << _PRECISION_BITS)) for w in taps)
        firsts.append(xmin)
        weights.append(fixed)
    return firsts, weights


@dataclass(frozen=True)
class RowStrip:
    """One independent piece of a frame: source rows [row0, row1), output rows [out0, out1)."""

    row0: int
    row1: int
    out0: int
    out1: int


def _strip_candidates(height: int, size: int, parts: int) -> list[int]:
    """Output rows where a strip may start: its box edge out * height / size is a whole source row."""
    exact = [o for o in range(1, size) if (o * height) % size == 0]
    cuts = []
    for k in range(1, parts):
        if exact:
            cut = min(exact, key=lambda o: abs(o - k * size / parts))
            if cut not in cuts and all(cut > c for c in cuts):
                cuts.append(cut)
    return cuts


@functools.lru_cache(maxsize=32)
def row_strip_plan(height: int, width: int, size: int, parts: int, jpeg: bool) -> tuple[RowStrip, ...]:
    """Strips whose results concatenate to the whole-frame result bit for bit; (whole frame,) when no
    split is proven equal for this geometry (the check runs once per geometry)."""
    whole = (RowStrip(0, height, 0, size),)
    if parts < 2 or height < 4 * _MCU_ROWS or size < 2 or (height == size and width == size):
        return whole
    firsts, weights = _pil_bilinear_coefficients(height, 0.0, float(height), size)
    cuts = [0, *_strip_candidates(height, size, parts), size]
    strips = []
    for out0, out1 in zip(cuts, cuts[1:]):
        need0 = firsts[out0]
        need1 = max(firsts[o] + len(weights[o]) for o in range(out0, out1))
        if jpeg:
            row0 = 0 if need0 < _STRIP_MARGIN + _MCU_ROWS else (need0 - _STRIP_MARGIN) // _MCU_ROWS * _MCU_ROWS
            row1 = -(-(need1 + _STRIP_MARGIN) // _MCU_ROWS) * _MCU_ROWS
            row1 = height if row1 >= height - _MCU_ROWS else row1
        else:
            row0, row1 = need0, need1
        strip_firsts, strip_weights = _pil_bilinear_coefficients(
            row1 - row0, out0 * height / size - row0, out1 * height / size - row0, out1 - out0
        )
        if [f + row0 for f in strip_firsts] != firsts[out0:out1] or strip_weights != weights[out0:out1]:
            return whole
        strips.append(RowStrip(row0, row1, out0, out1))
    return tuple(strips) if len(strips) > 1 else whole


def _decode_with_pillow(encoded: np.ndarray) -> Image.Image:
    image = Image.open(io.BytesIO(encoded.tobytes()))
    image.load()
    return image


@functools.cache
def codecs_agree() -> tuple[bool, bool]:
    """(Pillow decodes OpenCV's JPEGs to OpenCV's pixels, MCU-aligned strips decode to the whole
    image's rows), checked once on a small synthetic frame at two qualities. Both hold for the
    libjpeg-turbo builds in the OpenCV and Pillow wheels; where either fails (another libjpeg), the
    FramePreparer falls back to OpenCV's decoder and/or the whole frame, staying exact."""
    rng = np.random.default_rng(12345)
    yy, xx = np.mgrid[0:96, 0:80]
    bgr = np.clip(np.stack([xx * 3, yy * 2, (xx + yy) * 1.5], axis=-1) + rng.normal(0, 20, (96, 80, 3)), 0, 255).astype(np.uint8)
    same_decoder = same_strips = True
    for quality in (20, 90):
        params = [int(cv2.IMWRITE_JPEG_QUALITY), quality]
        whole = cv2.imdecode(cv2.imencode(".jpg", bgr, params)[1], cv2.IMREAD_COLOR)
        pillow = np.asarray(_decode_with_pillow(cv2.imencode(".jpg", bgr, params)[1]))
        same_decoder &= bool(np.array_equal(pillow, whole[:, :, ::-1]))
        top = cv2.imdecode(cv2.imencode(".jpg", bgr[:64], params)[1], cv2.IMREAD_COLOR)
        bottom = cv2.imdecode(cv2.imencode(".jpg", bgr[32:], params)[1], cv2.IMREAD_COLOR)
        same_strips &= bool(np.array_equal(top[:56], whole[:56]) and np.array_equal(bottom[8:], whole[40:]))
    return same_decoder, same_strips


def _prepare_strip(bgr: np.ndarray, strip: RowStrip, height: int, size: int, jpeg_quality: int | None) -> np.ndarray:
    """uint8 [out1 - out0, size, 3] RGB: one strip of the exact path's resized frame."""
    rows = bgr[strip.row0:strip.row1]
    if jpeg_quality is not None:
        ok, encoded = cv2.imencode(".jpg", rows, [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)])
        if not ok:
            raise ObservationError(f"JPEG encoding failed for a frame of shape {bgr.shape}")
        if codecs_agree()[0]:
            image = _decode_with_pillow(encoded)
        else:
            image = Image.fromarray(cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    else:
        code = cv2.COLOR_BGRA2RGB if rows.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = Image.fromarray(cv2.cvtColor(rows, code))
    if (strip.row0, strip.row1, strip.out0, strip.out1) == (0, height, 0, size) and image.size == (size, size):
        return np.asarray(image)
    box = (0.0, strip.out0 * height / size - strip.row0, float(image.size[0]), strip.out1 * height / size - strip.row0)
    resized = image.resize((size, strip.out1 - strip.out0), resample=Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def checked_bgr_frame(bgr: object, size: int, jpeg_quality: int | None, camera: str) -> np.ndarray:
    """The arguments of a frame preparer checked (ObservationError / ValueError naming the camera); contiguous BGR(A)."""
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] not in (3, 4) or min(bgr.shape[:2]) < 1:
        raise ObservationError(f"camera {camera!r}: expected a uint8 [H, W, 3|4] BGR(A) frame, got {getattr(bgr, 'dtype', type(bgr).__name__)} {getattr(bgr, 'shape', '')}")
    if jpeg_quality is not None and not 1 <= int(jpeg_quality) <= 100:
        raise ObservationError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    return np.ascontiguousarray(bgr)


class FramePreparer:
    """BGR(A) camera frames -> PreparedImage, bit-identical to the exact path (JPEG round trip with
    OpenCV, resize as torchvision on PIL), with the frame's row strips prepared on `threads` threads.

    The calling thread prepares the last strip itself; `threads=1` prepares the frame in one piece
    (no pool). `close()` (or use as a context manager) stops the pool.
    """

    def __init__(self, threads: int = 2) -> None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads)
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="frame-strips") if self.threads > 1 else None

    def prepare(self, bgr: np.ndarray, size: int, jpeg_quality: int | None, camera: str = "image") -> PreparedImage:
        """`bgr`: uint8 [H, W, 3] BGR or [H, W, 4] BGRA (a CARLA frame)."""
        bgr = checked_bgr_frame(bgr, size, jpeg_quality, camera)
        height = bgr.shape[0]
        jpeg = jpeg_quality is not None
        parts = self.threads if not jpeg or codecs_agree()[1] else 1
        strips = row_strip_plan(height, bgr.shape[1], size, parts, jpeg)
        if self._pool is None or len(strips) == 1:
            pieces = [_prepare_strip(bgr, s, height, size, jpeg_quality) for s in strips]
        else:
            futures = [self._pool.submit(_prepare_strip, bgr, s, height, size, jpeg_quality) for s in strips[:-1]]
            last = _prepare_strip(bgr, strips[-1], height, size, jpeg_quality)
            pieces = [f.result() for f in futures] + [last]
        hwc = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
        chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        chw.setflags(write=False)
        return PreparedImage(chw=chw, camera=camera)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "FramePreparer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
