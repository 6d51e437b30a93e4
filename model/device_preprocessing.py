"""Camera frames prepared on the policy's device (the agent's `gpu_preprocessing` option; not exact).

`DevicePreparer.prepare` has FramePreparer's contract (BGR(A) frame in, PreparedImage out) but runs
the resize on the device: the full-resolution frame is uploaded once and shrunk there with
`F.interpolate(bilinear, antialias=True)`, the same triangle filter as PIL's but in float without
PIL's uint8 rounding between the horizontal and the vertical pass, so it is not bit-identical to the
exact path (measured in docs/model.md: mean and max grey levels). The JPEG round trip runs on the
device too when torchvision's nvJPEG encoder/decoder work there (probed once at construction);
otherwise on the CPU with the exact path's codec. The exact path (FramePreparer) stays the default,
and the `official` preset never uses this.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.errors import ObservationError
from model.image_preprocessing import PreparedImage, checked_bgr_frame


def _device_jpeg_codec(device: torch.device):
    """(encode, decode) on `device` through torchvision's nvJPEG, or None when unavailable."""
    if device.type != "cuda":
        return None
    try:
        from torchvision.io import decode_jpeg, encode_jpeg

        def round_trip(chw: torch.Tensor, quality: int) -> torch.Tensor:
            encoded = encode_jpeg(chw, quality=quality)
            return decode_jpeg(encoded.cpu() if encoded.is_cuda else encoded, device=device)

        probe = torch.zeros((3, 16, 16), dtype=torch.uint8, device=device)
        if tuple(round_trip(probe, 20).shape) != (3, 16, 16):
            return None
        return round_trip
    except Exception:  # no torchvision, no nvJPEG, an old version: the CPU codec is used instead
        return None


class DevicePreparer:
    """BGR(A) frames -> PreparedImage with the resize (and, where possible, the JPEG round trip) on `device`."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self._jpeg = _device_jpeg_codec(self.device)
        self.jpeg_backend = "nvjpeg" if self._jpeg is not None else "cpu"

    def prepare(self, bgr: np.ndarray, size: int, jpeg_quality: int | None, camera: str = "image") -> PreparedImage:
        bgr = checked_bgr_frame(bgr, size, jpeg_quality, camera)
        if jpeg_quality is not None and self._jpeg is None:  # CPU codec, the exact path's
            ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)])
            if not ok:
                raise ObservationError(f"camera {camera!r}: JPEG encoding failed for a frame of shape {bgr.shape}")
            rgb = np.array(Image.open(io.BytesIO(encoded.tobytes())).convert("RGB"))  # writable for torch
            chw = torch.from_numpy(rgb).to(self.device, non_blocking=True).permute(2, 0, 1)
        else:
            frame = torch.from_numpy(bgr).to(self.device, non_blocking=True)
            chw = frame[..., [2, 1, 0]].permute(2, 0, 1).contiguous()  # BGR(A) -> RGB, channels first
            if jpeg_quality is not None:
                chw = self._jpeg(chw, int(jpeg_quality))
        if chw.shape[1:] != (size, size):
            resized = F.interpolate(chw.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            chw = resized.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)
        out = np.ascontiguousarray(chw.cpu().numpy())
        out.setflags(write=False)
        return PreparedImage(chw=out, camera=camera)
