"""The authors' JPEG round trip with its channel-order quirk (`jpeg_channels: authors_swapped`).

Their agent converts the BGRA camera frame to RGB and hands that RGB array to `cv2.imencode`, which
takes BGR (src/agent/team_code/drivemoe_carla_agent.py:214-234); the decoded array is used as RGB.
The JPEG colour transform therefore sees R and B swapped: the chroma subsampling and quantisation
fall on the wrong channels. Against the correct round trip this moves pixels by 0.5-1.1 grey levels
on average, up to 9-19 (the issue's measurement on the sample frames). The `default` preset uses the
correct order (model/image_preprocessing.py), which is what the training JPEGs were written with.
"""
from __future__ import annotations

import cv2
import numpy as np

_DECODE_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2}


def swapped_channel_jpeg_round_trip(rgb: np.ndarray, quality: int, decode_scale: int = 1) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> the authors' round trip: encoded as if it were BGR, decoded, kept as is."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {quality}")
    if decode_scale not in _DECODE_FLAGS:
        raise ValueError(f"decode_scale must be 1 or 2, got {decode_scale}")
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a frame of shape {rgb.shape}")
    return cv2.imdecode(encoded, _DECODE_FLAGS[decode_scale])
