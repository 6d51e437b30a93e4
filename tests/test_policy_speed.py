"""Policy fast paths: the previous front's vision tokens reused when the agent passes the same image."""
from __future__ import annotations

import numpy as np
import torch

from model.cameras import FRONT, FRONT_PREVIOUS, MODEL_IMAGE_ORDER
from model.image_preprocessing import PreparedImage
from model.policy import DrivePolicy, Observation
from tests.test_policy import PROMPT, _history, _tiny_model


def _prepared(seed: int, size: int) -> dict[str, PreparedImage]:
    rng = np.random.default_rng(seed)
    return {c: PreparedImage(rng.integers(0, 256, (3, size, size), dtype=np.uint8), c) for c in MODEL_IMAGE_ORDER}


def test_previous_front_tokens_are_reused_and_give_the_same_prediction() -> None:
    model = _tiny_model("tiny-drivemoe")
    fast = DrivePolicy(model, prompt_token_ids=PROMPT)
    plain = DrivePolicy(model, prompt_token_ids=PROMPT, reuse_previous_front=False)
    size = fast.image_size
    calls: list[int] = []
    original = model.encode_images
    model.encode_images = lambda pixels, **kw: (calls.append(pixels.shape[1]), original(pixels, **kw))[1]  # type: ignore[method-assign]
    first = _prepared(0, size)
    fast.predict(Observation(images=first, ego_history=_history(), jpeg_quality=None, seed=0))
    second = _prepared(1, size)
    second[FRONT_PREVIOUS] = first[FRONT]  # what the agent passes when augmentation is off
    calls.clear()
    reused = fast.predict(Observation(images=second, ego_history=_history(), jpeg_quality=None, seed=1))
    assert calls[0] == 1  # only CAM_FRONT went through the tower
    reference = plain.predict(Observation(images=second, ego_history=_history(), jpeg_quality=None, seed=1))
    np.testing.assert_allclose(reused.normalized_actions, reference.normalized_actions, atol=1e-5, rtol=1e-5)
    assert reused.selected_cameras == reference.selected_cameras
    # A different previous image (e.g. augmented afresh) is encoded again.
    third = _prepared(2, size)
    third[FRONT_PREVIOUS] = PreparedImage(first[FRONT].chw.copy(), FRONT_PREVIOUS)
    calls.clear()
    fast.predict(Observation(images=third, ego_history=_history(), jpeg_quality=None, seed=2))
    assert calls[0] == 2
    model.encode_images = original  # type: ignore[method-assign]
    assert torch.is_tensor(fast._last_front[1])
