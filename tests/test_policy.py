"""The inference policy: lazy camera access, seeding, outputs, parity with infer_action and the fixtures, errors."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pytest
import torch

from model.cameras import FRONT, FRONT_PREVIOUS, MODEL_IMAGE_ORDER, ROUTER_CANDIDATES
from model.config import ModelConfig
from model.drivemoe import DriveMoE
from model.ego_state import EgoStateHistory
from model.errors import CheckpointError, ObservationError
from model.image_preprocessing import PreparedImage, prepare_camera_image, to_pixel_values
from model.policy import TIMING_KEYS, DrivePolicy, Observation, Prediction, normalize_ego_history
from model.prompt import build_prompt_tokens

PROMPT = (2, 17, 33, 108)


class RecordingImages(Mapping[str, np.ndarray]):
    """A lazy image mapping that records which cameras were read."""

    def __init__(self, frames: dict[str, np.ndarray]) -> None:
        self.frames = frames
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> np.ndarray:
        self.reads.append(key)
        return self.frames[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def _tiny_model(name: str, seed: int = 0) -> DriveMoE:
    torch.manual_seed(seed)
    model = DriveMoE(ModelConfig.preset(name))
    with torch.no_grad():  # non-trivial norms and router temperature, so every part matters
        for param_name, param in model.named_parameters():
            if param_name.endswith("layernorm.weight") or param_name.endswith("norm.weight"):
                param.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def moe_policy() -> DrivePolicy:
    return DrivePolicy(_tiny_model("tiny-drivemoe"), prompt_token_ids=PROMPT)


@pytest.fixture(scope="module")
def pi0_policy() -> DrivePolicy:
    return DrivePolicy(_tiny_model("tiny-drivepi0"), prompt_token_ids=PROMPT)


def _frames(seed: int, height: int = 45, width: int = 80) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for c in MODEL_IMAGE_ORDER}


def _history(steps: int = 5, goal: tuple[float, float] = (20.0, -3.0)) -> EgoStateHistory:
    t = np.arange(steps, dtype=np.float64)
    return EgoStateHistory(
        speed=3.0 + 0.2 * t,
        acceleration=np.stack([0.1 * t, -0.05 * t, 9.8 + 0 * t], axis=1),
        angular_velocity=np.stack([0 * t, 0.01 * t, -0.02 * t], axis=1),
        theta=0.01 * (t - steps + 1),
        command_far=np.stack([goal[0] + 0.5 * (steps - 1 - t), goal[1] + 0 * t], axis=1),
    )


def test_lazy_access_reads_fronts_then_only_the_selected_camera(moe_policy: DrivePolicy) -> None:
    images = RecordingImages(_frames(1))
    prediction = moe_policy.predict(Observation(images=images, ego_history=_history(), seed=0))
    assert len(prediction.selected_cameras) == 1
    assert images.reads == [FRONT, FRONT_PREVIOUS, prediction.selected_cameras[0]]
    assert set(prediction.prepared_images) == set(images.reads)
    # The selection is the router's argmax.
    assert prediction.selected_cameras[0] == ROUTER_CANDIDATES[int(np.argmax(prediction.camera_logits))]


def test_lazy_access_reads_whichever_camera_the_router_picks(moe_policy: DrivePolicy) -> None:
    import copy

    model = copy.deepcopy(moe_policy.model)
    policy = DrivePolicy(model, prompt_token_ids=PROMPT)
    head = model.camera_router.mlp[3]
    for k, camera in enumerate(ROUTER_CANDIDATES):
        with torch.no_grad():  # force class k through the head's bias
            head.bias.zero_()
            head.bias[k] = 1e3
        images = RecordingImages(_frames(2))
        prediction = policy.predict(Observation(images=images, ego_history=_history(), seed=0))
        assert prediction.selected_cameras == (camera,)
        assert images.reads == [FRONT, FRONT_PREVIOUS, camera]


def test_drivepi0_reads_only_the_fronts(pi0_policy: DrivePolicy) -> None:
    images = RecordingImages(_frames(3))
    prediction = pi0_policy.predict(Observation(images=images, ego_history=_history(), seed=0))
    assert images.reads == [FRONT, FRONT_PREVIOUS]
    assert prediction.selected_cameras == () and prediction.camera_logits is None and prediction.camera_probs is None
    assert prediction.action_router_logits is None and prediction.action_router_experts is None


def test_prediction_fields_and_shapes(moe_policy: DrivePolicy) -> None:
    cfg = moe_policy.config
    p = moe_policy.predict(Observation(images=_frames(4), ego_history=_history(), seed=3))
    assert isinstance(p, Prediction)
    h, a = cfg.flow.horizon, cfg.flow.action_dim
    n, e, k = cfg.flow.num_inference_steps, cfg.action_moe.num_experts, cfg.action_moe.top_k
    assert p.waypoints.shape == (h, a) and p.normalized_actions.shape == (h, a)
    assert np.all(np.abs(p.normalized_actions) <= 1.0)
    # Waypoints are the un-normalised actions (fur_x / fur_y percentiles).
    stats = cfg.stats
    expected_x = (p.normalized_actions[:, 0] + 1) * (stats.fur_x[1] - stats.fur_x[0]) / 2 + stats.fur_x[0]
    expected_y = (p.normalized_actions[:, 1] + 1) * (stats.fur_y[1] - stats.fur_y[0]) / 2 + stats.fur_y[0]
    np.testing.assert_allclose(p.waypoints, np.stack([expected_x, expected_y], 1), rtol=1e-6, atol=1e-6)
    assert p.camera_logits.shape == (5,) and p.camera_probs.shape == (5,)
    np.testing.assert_allclose(p.camera_probs.sum(), 1.0, rtol=1e-6)
    assert p.action_router_logits.shape == (n, e)
    assert p.action_router_weights.shape == (n, k) and p.action_router_experts.shape == (n, k)
    np.testing.assert_allclose(p.action_router_weights.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.diff(p.action_router_weights, axis=1) <= 0)  # by descending weight
    for step in range(n):  # the experts are the top-k of that step's logits
        assert set(p.action_router_experts[step]) == set(np.argsort(-p.action_router_logits[step])[:k])
    assert set(p.timings_ms) == set(TIMING_KEYS) and all(v >= 0 for v in p.timings_ms.values())
    assert p.timings_ms["total"] >= p.timings_ms["denoise"]
    for camera, image in p.prepared_images.items():
        assert image.chw.shape == (3, cfg.vision.image_size, cfg.vision.image_size)


def test_seed_determinism_and_explicit_noise(moe_policy: DrivePolicy) -> None:
    frames = _frames(5)
    first = moe_policy.predict(Observation(images=frames, ego_history=_history(), seed=7))
    again = moe_policy.predict(Observation(images=frames, ego_history=_history(), seed=7))
    other = moe_policy.predict(Observation(images=frames, ego_history=_history(), seed=8))
    np.testing.assert_array_equal(first.normalized_actions, again.normalized_actions)
    np.testing.assert_array_equal(first.action_router_logits, again.action_router_logits)
    assert not np.allclose(first.normalized_actions, other.normalized_actions)
    noise = torch.randn((10, 2), generator=torch.Generator().manual_seed(7)).numpy()
    explicit = moe_policy.predict(Observation(images=frames, ego_history=_history(), noise=noise))
    np.testing.assert_array_equal(first.normalized_actions, explicit.normalized_actions)


def test_prepared_images_are_reused_unchanged(moe_policy: DrivePolicy) -> None:
    frames = _frames(6)
    raw = moe_policy.predict(Observation(images=frames, ego_history=_history(), jpeg_quality=20, seed=1))
    reused = dict(raw.prepared_images)
    for camera in MODEL_IMAGE_ORDER:
        reused.setdefault(camera, frames[camera])
    again = moe_policy.predict(Observation(images=reused, ego_history=_history(), jpeg_quality=20, seed=1))
    np.testing.assert_array_equal(raw.normalized_actions, again.normalized_actions)
    assert again.prepared_images[FRONT] is raw.prepared_images[FRONT]
    # The JPEG round trip is applied to raw frames: switching it off changes the input.
    no_jpeg = moe_policy.predict(Observation(images=frames, ego_history=_history(), jpeg_quality=None, seed=1))
    assert not np.array_equal(no_jpeg.prepared_images[FRONT].chw, raw.prepared_images[FRONT].chw)


def test_agrees_with_infer_action(moe_policy: DrivePolicy) -> None:
    model, cfg = moe_policy.model, moe_policy.config
    observations = [Observation(images=_frames(10 + i), ego_history=_history(goal=(15.0 + 10 * i, 4.0 - 6 * i)), seed=i,
                                jpeg_quality=20) for i in range(2)]
    predictions = moe_policy.predict_batch(observations)
    size = cfg.vision.image_size
    pixels = torch.stack([
        torch.stack([to_pixel_values(prepare_camera_image(obs.images[c], size, 20).chw) for c in MODEL_IMAGE_ORDER])
        for obs in observations
    ])
    ego = [normalize_ego_history(obs.ego_history, cfg.stats, cfg.flow.cond_steps) for obs in observations]
    ids, mask = build_prompt_tokens(PROMPT, cfg.num_image_tokens, cfg.max_seq_len, cfg.sequence.image_token_id)
    noise = torch.stack([torch.randn((10, 2), generator=torch.Generator().manual_seed(i)) for i in range(2)])
    out = model.infer_action(pixels, torch.from_numpy(ids).expand(2, -1), torch.from_numpy(mask).expand(2, -1),
                             torch.stack([p for p, _ in ego]), goal=torch.stack([g for _, g in ego]), noise=noise)
    for i, p in enumerate(predictions):
        np.testing.assert_allclose(p.normalized_actions, out["final_action"][i].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(p.camera_logits, out["camera_logits"][i].numpy(), atol=1e-6, rtol=0)
        assert p.selected_cameras == (ROUTER_CANDIDATES[int(out["selected_view"][i])],)
        np.testing.assert_allclose(p.action_router_logits, out["action_router_logits"][:, i].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(p.action_router_experts, out["action_router_topk_idx"][:, i].numpy())
    # A batch gives the same answers as single predictions.
    single = moe_policy.predict(observations[1])
    np.testing.assert_allclose(single.normalized_actions, predictions[1].normalized_actions, atol=1e-5, rtol=0)


def _fixture_model(folder: Path) -> tuple[DriveMoE, ModelConfig]:
    import json

    from model.checkpoints import load_into_model, load_official_checkpoint

    resolved = json.loads((folder / "config.json").read_text())["resolved_merged_config"]
    config = ModelConfig.from_official(resolved)
    model = DriveMoE(config)
    state, _ = load_official_checkpoint(folder / "official_checkpoint.pt")
    load_into_model(model, state, source="fixture")
    return model.eval(), config


@pytest.mark.parametrize("name", ["tiny_drivemoe", "tiny_drivepi0"])
def test_policy_reproduces_reference_fixture(drivemoe_reference: Path, name: str) -> None:
    """From raw uint8 images and raw ego states, the policy gives the authors' outputs (atol 1e-5)."""
    from safetensors.numpy import load_file

    folder = drivemoe_reference / name
    model, config = _fixture_model(folder)
    inputs = load_file(str(folder / "inputs.safetensors"))
    expected = load_file(str(folder / "expected_inference.safetensors"))
    prompts = ([2, 17, 33, 108], [2, 17, 33, 41, 59, 108])
    for sample, prompt in enumerate(prompts):
        policy = DrivePolicy(model, config, prompt_token_ids=prompt)
        raw = inputs["raw_images_uint8"][sample]
        images = RecordingImages({c: PreparedImage(raw[i], c) for i, c in enumerate(MODEL_IMAGE_ORDER[: raw.shape[0]])})
        history = EgoStateHistory(
            speed=inputs["raw_his_speed"][sample], acceleration=inputs["raw_his_acceleration"][sample],
            angular_velocity=inputs["raw_his_angular_velocity"][sample], theta=inputs["raw_his_theta"][sample],
            command_far=np.stack([inputs["raw_x_command_far"][sample], inputs["raw_y_command_far"][sample]], axis=1),
        )
        proprio, goal = normalize_ego_history(history, config.stats, config.flow.cond_steps)
        np.testing.assert_allclose(proprio.numpy(), inputs["proprios"][sample], atol=1e-6, rtol=0)
        if "waypoints" in inputs:
            np.testing.assert_allclose(goal.numpy(), inputs["waypoints"][sample], atol=1e-6, rtol=0)
        p = policy.predict(Observation(images=images, ego_history=history, jpeg_quality=None,
                                       noise=inputs["init_noise"][sample]))
        np.testing.assert_allclose(p.normalized_actions, expected["final_action"][sample], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(p.waypoints, expected["unnormalised_trajectory"][sample], atol=1e-5, rtol=1e-5)
        if config.use_camera_router:
            view = int(expected["selected_view"][sample])
            assert p.selected_cameras == (ROUTER_CANDIDATES[view],)
            assert images.reads == [FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES[view]]
            np.testing.assert_allclose(p.camera_logits, expected["camera_logits"][sample], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(p.action_router_logits, expected["action_router_logits"][:, sample], atol=1e-5, rtol=1e-5)
            np.testing.assert_array_equal(p.action_router_experts, expected["action_router_topk_idx"][:, sample])
            np.testing.assert_allclose(p.action_router_weights, expected["action_router_topk_weights"][:, sample], atol=1e-5)
        else:
            assert images.reads == [FRONT, FRONT_PREVIOUS]


def test_from_pretrained_round_trip(tmp_path: Path, moe_policy: DrivePolicy) -> None:
    from model.checkpoints import save_pretrained

    save_pretrained(moe_policy.model, moe_policy.config, tmp_path / "tiny")
    loaded = DrivePolicy.from_pretrained(tmp_path / "tiny", device="cpu", dtype="float32")
    assert loaded.config.sequence.prompt_token_ids == PROMPT
    obs = Observation(images=_frames(20), ego_history=_history(), seed=2)
    np.testing.assert_array_equal(loaded.predict(obs).normalized_actions, moe_policy.predict(obs).normalized_actions)
    bf16 = DrivePolicy.from_pretrained(tmp_path / "tiny", device="cpu", dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    p = bf16.predict(obs)
    assert p.normalized_actions.dtype == np.float32 and np.all(np.isfinite(p.waypoints))


def test_config_without_prompt_ids_is_rejected() -> None:
    model = DriveMoE(ModelConfig.preset("tiny-drivepi0"))
    with pytest.raises(CheckpointError, match="prompt_token_ids"):
        DrivePolicy(model)


def _bad(images: dict | None = None, history: EgoStateHistory | None = None, **kw: object) -> Observation:
    return Observation(images=_frames(30) if images is None else images, ego_history=history or _history(), **kw)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _bad(images={k: v for k, v in _frames(30).items() if k != FRONT_PREVIOUS}), "CAM_FRONT_PREVIOUS.*missing"),
        (lambda: _bad(images={**_frames(30), FRONT: np.zeros((45, 80, 3), np.float32)}), "'CAM_FRONT'.*dtype"),
        (lambda: _bad(images={**_frames(30), FRONT: np.zeros((45, 80), np.uint8)}), "'CAM_FRONT'.*shape"),
        (lambda: _bad(images={**_frames(30), FRONT: np.zeros((45, 80, 4), np.uint8)}), "'CAM_FRONT'.*4 channels"),
        (lambda: _bad(images={**_frames(30), FRONT: PreparedImage(np.zeros((3, 16, 16), np.uint8), FRONT)}), r"\(3, 32, 32\)"),
        (lambda: _bad(history=dataclasses.replace(_history(), speed=np.array([1.0, np.nan, 1, 1, 1]))), "speed.*NaN"),
        (lambda: _bad(history=dataclasses.replace(_history(), command_far=np.full((5, 2), np.inf))), "command_far.*inf"),
        (lambda: _bad(history=_history(steps=4)), "4 steps.*cond_steps = 5"),
        (lambda: _bad(history=dataclasses.replace(_history(), acceleration=np.zeros((5, 2)))), "acceleration.*shape"),
        (lambda: _bad(noise=np.zeros((10, 3))), "noise has shape"),
        (lambda: _bad(noise=np.zeros((10, 2)), seed=1), "either seed or noise"),
        (lambda: _bad(jpeg_quality=0), "jpeg_quality"),
        (lambda: Observation(images=_frames(30), ego_history="history"), "EgoStateHistory"),  # type: ignore[arg-type]
        (lambda: Observation(images=list(_frames(30).values()), ego_history=_history()), "Mapping"),  # type: ignore[arg-type]
    ],
)
def test_bad_observations_raise_clear_errors(moe_policy: DrivePolicy, make, message: str) -> None:
    with pytest.raises(ObservationError, match=message):
        moe_policy.predict(make())


def test_missing_selected_camera_and_empty_batch(moe_policy: DrivePolicy) -> None:
    probe = moe_policy.predict(Observation(images=_frames(31), ego_history=_history(), seed=0))
    chosen = probe.selected_cameras[0]
    images = {k: v for k, v in _frames(31).items() if k != chosen}
    with pytest.raises(ObservationError, match=f"{chosen}.*missing"):
        moe_policy.predict(Observation(images=images, ego_history=_history(), seed=0))
    with pytest.raises(ObservationError, match="at least one"):
        moe_policy.predict_batch([])


def test_cuda_graph_path_is_wired_like_the_eager_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph branch of predict_batch (GPU only) hands the graph the same inputs the eager
    path uses; a stand-in that runs eagerly replaces the capture so the wiring is checked on the CPU.
    (The capture itself is compared with eager on a GPU in test_model_units.)"""
    import model.policy as policy_module

    built: list[int] = []

    class EagerStandIn:
        def __init__(self, model: DriveMoE, batch: int) -> None:
            built.append(batch)
            self.model, self.batch = model, batch

        def __call__(self, input_ids, attention_mask, image_tokens, proprio, noise):
            assert input_ids.shape[0] == attention_mask.shape[0] == image_tokens.shape[0] == self.batch
            assert noise.device == self.model.device and noise.dtype == torch.float32
            cache = self.model.build_prefix_cache(input_ids, attention_mask, image_tokens, proprio)
            return self.model.denoise(cache, noise=noise)

    monkeypatch.setattr(policy_module, "GraphedPrefixAndDenoise", EagerStandIn)
    model = _tiny_model("tiny-drivemoe")
    eager = DrivePolicy(model, prompt_token_ids=PROMPT)
    graphed = DrivePolicy(model, prompt_token_ids=PROMPT, cuda_graphs=True)
    assert graphed.cuda_graphs is False  # ignored off CUDA
    graphed.cuda_graphs = True  # force the branch, as on a GPU
    observations = [Observation(images=_frames(s), ego_history=_history(), seed=s) for s in (1, 2)]
    for batch in (observations[:1], observations, observations[:1]):
        expected = eager.predict_batch(batch)
        got = graphed.predict_batch(batch)
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g.normalized_actions, e.normalized_actions)
            assert g.selected_cameras == e.selected_cameras
            np.testing.assert_array_equal(g.action_router_experts, e.action_router_experts)
            assert g.timings_ms["prefix"] == 0.0 and g.timings_ms["denoise"] > 0.0
    assert built == [1, 2]  # one capture per batch size, reused afterwards
