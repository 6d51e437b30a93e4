"""The authors' test-time image augmentation, as a pure numpy function equal to TensorFlow's output.

The authors' agent passes every 224x224 uint8 image through `augment_image` of their
`src/data/utils/augmentations.py` (lines 64-131, called without a seed from
`src/agent/team_code/drivemoe_carla_agent.py:486`): random resized crop -> brightness -> contrast ->
saturation -> hue, in that fixed order, on float32 in [0, 1], clipped after each op, then converted
back to uint8 with TF's saturating rule. `augment(image, params)` reproduces TensorFlow's CPU kernels
bit for bit (tests/test_official_augmentation.py checks every case of
shared/drivemoe_reference/augmentation/); `sample_params(rng)` draws the parameters as the authors'
seed chain does: one uniform u for all four crop draws, an independent u for each colour op.

Every step is float32 arithmetic in TF's operation order; the comments say where the order matters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model.image_preprocessing import PreparedImage

F32 = np.float32
_TO_FLOAT = F32(1.0 / 255.0)  # convert_image_dtype multiplies by the rounded constant, it does not divide
_TO_UINT8 = F32(255.5)  # convert_image_dtype(float -> uint8, saturate=True): trunc(clip(x * 255.5, 0, 255))


@dataclass(frozen=True)
class AugmentationConfig:
    """The ranges of the authors' `image_augment_kwargs` (drivemoe_carla_agent.py:473-485)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)  # area fraction of the crop
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # width / height of the crop
    brightness: float = 0.1  # additive delta uniform in [-b, b)
    contrast: tuple[float, float] = (0.9, 1.1)
    saturation: tuple[float, float] = (0.9, 1.1)
    hue: float = 0.05  # delta uniform in [-h, h) of a full turn


@dataclass(frozen=True)
class AugmentationParams:
    """The parameters of one image's augmentation, all float32 values."""

    box: tuple[float, float, float, float]  # crop box (y1, x1, y2, x2) in [0, 1] image fractions
    brightness_delta: float
    contrast_factor: float
    saturation_factor: float
    hue_delta: float


def _uniform(u: float, low: float, high: float) -> np.float32:
    """TF's stateless_uniform scalar from its unit draw u: u * (hi - lo) + lo, all in float32."""
    return F32(F32(u) * (F32(high) - F32(low)) + F32(low))


def _log32(value: float) -> np.float32:
    # TF's float32 log is the correctly rounded one here; numpy's float32 log(1.1) is one ulp lower.
    return F32(math.log(float(F32(value))))


def params_from_uniforms(u_crop: float, u_brightness: float, u_contrast: float, u_saturation: float,
                         u_hue: float, config: AugmentationConfig = AugmentationConfig()) -> AugmentationParams:
    """The parameters TF's ops derive from their unit draws (augmentations.py:11-35 for the crop).

    The crop's box can differ from TF's by ~1e-7 because numpy's float32 exp is not TF's; that only
    matters for bit-exact replays, which take TF's box directly.
    """
    scale = _uniform(u_crop, *config.crop_scale)
    log_low, log_high = _log32(config.crop_ratio[0]), _log32(config.crop_ratio[1])
    ratio = F32(np.exp(F32(F32(u_crop) * F32(log_high - log_low) + log_low)))
    new_h = F32(min(max(np.sqrt(F32(scale / ratio)), F32(0)), F32(1)))
    new_w = F32(min(max(np.sqrt(F32(scale * ratio)), F32(0)), F32(1)))
    h_off = F32(F32(u_crop) * F32(F32(1) - new_h))
    w_off = F32(F32(u_crop) * F32(F32(1) - new_w))
    return AugmentationParams(
        box=(float(h_off), float(w_off), float(F32(h_off + new_h)), float(F32(w_off + new_w))),
        brightness_delta=float(_uniform(u_brightness, -config.brightness, config.brightness)),
        contrast_factor=float(_uniform(u_contrast, *config.contrast)),
        saturation_factor=float(_uniform(u_saturation, *config.saturation)),
        hue_delta=float(_uniform(u_hue, -config.hue, config.hue)),
    )


def sample_params(rng: np.random.Generator, config: AugmentationConfig = AugmentationConfig()) -> AugmentationParams:
    """One image's parameters: TF's float32 unit draws are multiples of 2^-23 in [0, 1)."""
    u = rng.integers(0, 1 << 23, size=5) / float(1 << 23)
    return params_from_uniforms(*(float(v) for v in u), config=config)


# ---- the five ops (TF CPU kernels), each on a planar float32 [3, H, W] image --------------------
def crop_and_resize(planes: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """tf.image.crop_and_resize(bilinear, extrapolation 0) of one box back to the image's size."""
    channels, height, width = planes.shape
    y1, x1, y2, x2 = (F32(v) for v in box)

    def sample_points(low: np.float32, high: np.float32, size: int) -> np.ndarray:
        step = F32(F32(F32(high - low) * F32(size - 1)) / F32(size - 1)) if size > 1 else F32(0)
        index = np.arange(size, dtype=F32)
        return F32(low * F32(size - 1)) + index * step  # two roundings: no fused multiply-add

    in_y = sample_points(y1, y2, height)
    in_x = sample_points(x1, x2, width)
    valid_y = (in_y >= 0) & (in_y <= height - 1)
    valid_x = (in_x >= 0) & (in_x <= width - 1)
    top = np.clip(np.floor(in_y), 0, height - 1).astype(np.intp)
    bottom = np.clip(np.ceil(in_y), 0, height - 1).astype(np.intp)
    left = np.clip(np.floor(in_x), 0, width - 1).astype(np.intp)
    right = np.clip(np.ceil(in_x), 0, width - 1).astype(np.intp)
    ly = (in_y - np.floor(in_y)).astype(F32)[:, None]
    lx = (in_x - np.floor(in_x)).astype(F32)[None, :]
    flat = planes.reshape(channels, height * width)

    def gather(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return flat[:, (rows[:, None] * width + cols[None, :]).ravel()].reshape(channels, height, width)

    tl, tr, bl, br = gather(top, left), gather(top, right), gather(bottom, left), gather(bottom, right)
    upper = tl + (tr - tl) * lx  # horizontal first, as the kernel does
    lower = bl + (br - bl) * lx
    out = (upper + (lower - upper) * ly).astype(F32)
    out[:, ~valid_y] = 0
    out[:, :, ~valid_x] = 0
    return out


def channel_means(planes: np.ndarray) -> np.ndarray:
    """Per-channel mean over all pixels, summed in float32 by repeated halving like TF's reduction."""
    s = planes.reshape(planes.shape[0], -1).astype(F32, copy=True)
    n = s.shape[1]
    while n > 1:
        r = n // 2
        left = n - r
        s[:, :r] += s[:, left:left + r]  # an odd middle element (index r when left > r) is carried over
        n = left
    return (s[:, 0] * F32(1.0 / (planes.shape[1] * planes.shape[2]))).astype(F32)


def adjust_contrast(planes: np.ndarray, factor: float) -> np.ndarray:
    mean = channel_means(planes)[:, None, None]
    return (mean + F32(factor) * (planes - mean)).astype(F32)


def _rgb_to_hsv(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.maximum(r, np.maximum(g, b))
    span = v - np.minimum(r, np.minimum(g, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, span / v, F32(0))
        norm = F32(1) / (F32(6) * span)
        # TF tests r == max first, then g; the 2/6 and 4/6 offsets are added in double, then rounded
        h = np.where(g == v, ((norm * (b - r)).astype(np.float64) + 2.0 / 6.0).astype(F32),
                     ((norm * (r - g)).astype(np.float64) + 4.0 / 6.0).astype(F32))
        h = np.where(r == v, norm * (g - b), h)
    h = np.where(span <= 0, F32(0), h)
    h = np.where(h < 0, h + F32(1), h)
    return h, s, v


# hsv_to_rgb: per sextant k, which of (c, x, 0) each output channel takes; k = 6 (h == 1) gives black
_HSV_ROLES = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 2, 2]])


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = s * v
    m = v - c
    dh = h * F32(6)
    category = np.clip(dh.astype(np.intp), 0, 6)  # C++ static_cast<int>: truncation
    fold = np.where(dh <= 0, dh + F32(2), dh)
    while np.any(fold >= 2):
        fold = np.where(fold >= 2, fold - F32(2), fold)
    x = c * (F32(1) - np.abs(fold - F32(1)))
    choices = (c, x, np.zeros_like(c))
    return np.stack([np.choose(_HSV_ROLES[:, i][category], choices) + m for i in range(3)]).astype(F32)


def adjust_saturation(planes: np.ndarray, factor: float) -> np.ndarray:
    h, s, v = _rgb_to_hsv(planes[0], planes[1], planes[2])
    s = np.clip(s * F32(factor), F32(0), F32(1))
    return _hsv_to_rgb(h, s, v)


# hue: the channel holding the middle value per category k (the max and the min are the channel max / min)
_HUE_MID_CHANNEL = np.array([1, 0, 2, 1, 0, 2])
# hv_range_to_rgb: per category, which of (max, mid, min) each output channel takes
_HUE_ROLES = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0], [0, 2, 1]])


def adjust_hue(planes: np.ndarray, delta: float) -> np.ndarray:
    """TF's hue kernel: hue in [0, 6) from the sorted channels, shifted, mapped back (no HSV round trip)."""
    r, g, b = planes[0], planes[1], planes[2]
    category = np.where(
        r < g,
        np.where(b < r, 1, np.where(b > g, 3, 2)),
        np.where(b < g, 0, np.where(b > r, 4, 5)),
    )
    high = np.maximum(r, np.maximum(g, b))
    low = np.minimum(r, np.minimum(g, b))
    mid = np.choose(_HUE_MID_CHANNEL[category], (r, g, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (mid - low) / (high - low)
    h = np.where((category & 1) == 0, category.astype(F32) + ratio, category.astype(F32) + (F32(1) - ratio))
    h = np.where(high == low, F32(0), h).astype(F32)
    h = h + F32(F32(delta) * F32(6))
    while np.any(h < 0):
        h = np.where(h < 0, h + F32(6), h)
    while np.any(h >= 6):
        h = np.where(h >= 6, h - F32(6), h)
    k = h.astype(np.intp)
    t = h - k.astype(F32)
    t = np.where((k & 1) == 0, t, F32(1) - t)
    new_mid = low + t * (high - low)
    choices = (high, new_mid, low)
    return np.stack([np.choose(_HUE_ROLES[:, i][k], choices) for i in range(3)]).astype(F32)


def to_float(image_u8: np.ndarray) -> np.ndarray:
    return image_u8.astype(F32) * _TO_FLOAT


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip((image * _TO_UINT8).astype(F32), 0, 255).astype(np.uint8)


def augment_stages(image_u8: np.ndarray, params: AugmentationParams) -> dict[str, np.ndarray]:
    """Every stage of `augment` as [H, W, 3] (each after its clip), for checks against TF's intermediates."""
    if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[2] != 3:
        raise ValueError(f"augment expects a uint8 [H, W, 3] RGB image, got {image_u8.dtype} {image_u8.shape}")
    stages: dict[str, np.ndarray] = {}
    x = np.ascontiguousarray(to_float(image_u8).transpose(2, 0, 1))  # planar: contiguous channel planes
    ops = (
        ("crop", lambda v: crop_and_resize(v, params.box)),
        ("brightness", lambda v: (v + F32(params.brightness_delta)).astype(F32)),
        ("contrast", lambda v: adjust_contrast(v, params.contrast_factor)),
        ("saturation", lambda v: adjust_saturation(v, params.saturation_factor)),
        ("hue", lambda v: adjust_hue(v, params.hue_delta)),
    )
    for name, op in ops:
        x = np.clip(op(x), F32(0), F32(1)).astype(F32)
        stages[name] = x.transpose(1, 2, 0)
    stages["final_u8"] = np.ascontiguousarray(to_uint8(x).transpose(1, 2, 0))
    return stages


def augment(image_u8: np.ndarray, params: AugmentationParams) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> augmented uint8 [H, W, 3], equal to the authors' TF augment_image."""
    return augment_stages(image_u8, params)["final_u8"]


class TestTimeAugmentation:
    """Callable PreparedImage -> augmented PreparedImage, one fresh parameter draw per image.

    `seed=None` draws unseeded, as the authors' agent does (augment_image without a seed); an int
    makes the sequence of draws reproducible (`seeded_noise`).
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, config: AugmentationConfig = AugmentationConfig(), seed: int | None = None) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: "PreparedImage") -> "PreparedImage":
        from model.image_preprocessing import PreparedImage

        hwc = np.ascontiguousarray(image.chw.transpose(1, 2, 0))
        out = augment(hwc, sample_params(self.rng, self.config))
        chw = np.ascontiguousarray(out.transpose(2, 0, 1))
        chw.setflags(write=False)
        return PreparedImage(chw=chw, camera=image.camera)
