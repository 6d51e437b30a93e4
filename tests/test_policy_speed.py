"""Policy fast paths: the previous front's vision tokens reused when the agent passes the same image."""
from __future__ import annotations

import numpy as np
import pytest
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


def _graphed_policy_against_eager(name: str, device: str = "cpu"):
    model = _tiny_model(name).to(device)
    eager = DrivePolicy(model, prompt_token_ids=PROMPT, reuse_previous_front=False)
    graphed = DrivePolicy(model, prompt_token_ids=PROMPT, cuda_graphs=True, graph_vision=True)
    graphed.cuda_graphs = True  # forced off CUDA: the tests replace the capture by an eager stand-in
    size = eager.image_size
    first, second = _prepared(3, size), _prepared(4, size)
    second[FRONT_PREVIOUS] = first[FRONT]  # the second call reuses the first call's front tokens
    pairs = []
    for seed, images in ((0, first), (1, second), (2, second)):
        obs = Observation(images=images, ego_history=_history(), jpeg_quality=None, seed=seed)
        pairs.append((graphed.predict(obs), eager.predict(obs)))
    batch = [Observation(images=_prepared(s, size), ego_history=_history(), jpeg_quality=None, seed=s) for s in (5, 6)]
    pairs += list(zip(graphed.predict_batch(batch), eager.predict_batch(batch)))
    return graphed, pairs


def test_graphed_vision_stages_are_wired_like_the_eager_path(monkeypatch) -> None:
    """The two-graph branch (CUDA only) with a stand-in that runs the captured function eagerly."""
    import model.policy as policy_module

    class EagerStandIn:
        def __init__(self, fn, inputs) -> None:
            self.fn = fn

        def __call__(self, *inputs):
            return self.fn(*inputs)

    monkeypatch.setattr(policy_module, "CapturedGraph", EagerStandIn)
    assert DrivePolicy(_tiny_model("tiny-drivepi0"), prompt_token_ids=PROMPT, cuda_graphs=True, graph_vision=True).cuda_graphs is False
    for name in ("tiny-drivemoe", "tiny-drivepi0"):
        graphed, pairs = _graphed_policy_against_eager(name)
        assert all(isinstance(g, EagerStandIn) for g in graphed._stage_graphs.values())
        assert set(graphed._stage_graphs) == {("fronts", 1, False), ("rest", 1), ("fronts", 1, True), ("fronts", 2, False), ("rest", 2)}
        for got, expected in pairs:
            np.testing.assert_allclose(got.normalized_actions, expected.normalized_actions, atol=1e-5, rtol=1e-5)
            assert got.selected_cameras == expected.selected_cameras


def test_graphed_vision_stages_branch_is_taken_when_forced(monkeypatch) -> None:
    import model.policy as policy_module

    keys = []

    class Recorder:
        def __init__(self, fn, inputs) -> None:
            self.fn = fn

        def __call__(self, *inputs):
            return self.fn(*inputs)

    original = DrivePolicy._stage

    def stage(self, key, fn, inputs):
        keys.append(key)
        return original(self, key, fn, inputs)

    monkeypatch.setattr(policy_module, "CapturedGraph", Recorder)
    monkeypatch.setattr(DrivePolicy, "_stage", stage)
    policy = DrivePolicy(_tiny_model("tiny-drivemoe"), prompt_token_ids=PROMPT, graph_vision=True)
    policy.cuda_graphs = True
    first, second = _prepared(3, policy.image_size), _prepared(4, policy.image_size)
    second[FRONT_PREVIOUS] = first[FRONT]
    for seed, images in ((0, first), (1, second)):
        policy.predict(Observation(images=images, ego_history=_history(), jpeg_quality=None, seed=seed))
    assert keys == [("fronts", 1, False), ("rest", 1), ("fronts", 1, True), ("rest", 1)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphed_vision_stages_equal_eager() -> None:
    for name in ("tiny-drivemoe", "tiny-drivepi0"):
        _, pairs = _graphed_policy_against_eager(name, "cuda")
        for got, expected in pairs:
            np.testing.assert_allclose(got.normalized_actions, expected.normalized_actions, atol=1e-4, rtol=1e-4)
            assert got.selected_cameras == expected.selected_cameras


def test_reused_front_tokens_are_dropped_when_the_vision_weights_change() -> None:
    model = _tiny_model("tiny-drivemoe")
    policy = DrivePolicy(model, prompt_token_ids=PROMPT)
    first = _prepared(0, policy.image_size)
    policy.predict(Observation(images=first, ego_history=_history(), jpeg_quality=None, seed=0))
    second = _prepared(1, policy.image_size)
    second[FRONT_PREVIOUS] = first[FRONT]
    assert policy._reusable_front([second]) is not None
    with torch.no_grad():
        model.multi_modal_projector.linear.weight.mul_(1.5)  # e.g. a training step between two evaluations
    assert policy._reusable_front([second]) is None
