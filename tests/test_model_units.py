"""Invariants of the network on configurations other than the fixtures' (no reference numbers needed).

Other widths, layer counts, KV heads 1 and 4, 48-px images with 16-px patches, top-2 cameras, 4 experts
top-2: cached == uncached, batch of 2 == two batches of 1, SigLIP vs transformers, the joint transformer
vs a direct transcription of the README formulas, bf16 close to fp32, paper-scale layouts, errors.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from model.action_moe import load_balancing_loss, route
from model.checkpoints import load_into_model, load_pretrained, save_pretrained
from model.config import ActionMoEConfig, CameraRouterConfig, JointConfig, MixtureConfig, ModelConfig, SequenceConfig, VisionConfig
from model.drivemoe import DriveMoE, additive_mask, build_attention_mask
from model.errors import CheckpointError
from model.flow_matching import sample_time
from model.normalization import NormalizationStats
from model.transformer import StreamInput


def small_config(kv_heads: int = 1, moe: bool = True, top_k_cameras: int = 2) -> ModelConfig:
    return ModelConfig(
        name=f"unit-kv{kv_heads}-{'moe' if moe else 'pi0'}",
        use_camera_router=moe,
        use_action_moe=moe,
        vision=VisionConfig(hidden_size=24, intermediate_size=40, num_layers=1, num_heads=2, image_size=48, patch_size=16),
        joint=JointConfig(num_layers=4, num_heads=4, num_kv_heads=kv_heads, head_dim=8,
                          vlm=MixtureConfig(48, 80), proprio=MixtureConfig(24, 56), action=MixtureConfig(24, 56)),
        camera_router=CameraRouterConfig(num_heads=4, waypoint_hidden=16, top_k=top_k_cameras),
        action_moe=ActionMoEConfig(num_moe_layers=2, num_experts=4, top_k=2, num_shared_experts=1),
        sequence=SequenceConfig(vocab_size=50, image_token_id=40, pad_token_id=0, text_slots=6),
    )


def randomise(model: DriveMoE, seed: int = 0) -> DriveMoE:
    """Non-trivial random weights: every tensor, norms included, scaled by fan-in."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1 if p.dim() == 1 else max(0.02, 1 / math.sqrt(p.shape[-1]))
            p.copy_(torch.randn(p.shape, generator=gen) * std)
            if name.endswith("temperature"):
                p.fill_(-0.7)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def random_inputs(config: ModelConfig, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    seq = config.sequence
    s = config.vision.image_size
    ids = torch.full((batch, config.max_seq_len), seq.pad_token_id, dtype=torch.long)
    ids[:, : config.num_image_tokens] = seq.image_token_id
    mask = torch.zeros_like(ids)
    for b in range(batch):
        n_text = 3 + b % (seq.text_slots - 2)  # different padding per sample
        ids[b, config.num_image_tokens: config.num_image_tokens + n_text] = torch.randint(1, seq.image_token_id, (n_text,), generator=gen)
        mask[b, : config.num_image_tokens + n_text] = 1
    return {
        "pixel_values": torch.rand((batch, config.num_input_images, 3, s, s), generator=gen) * 2 - 1,
        "input_ids": ids, "attention_mask": mask,
        "proprio": torch.randn((batch, config.flow.cond_steps, config.flow.proprio_dim), generator=gen),
        "goal": torch.randn((batch, 2), generator=gen),
        "noise": torch.randn((batch, config.flow.horizon, config.flow.action_dim), generator=gen),
    }


def infer(model: DriveMoE, x: dict[str, torch.Tensor], cached: bool = True) -> dict[str, torch.Tensor]:
    fn = model.infer_action if cached else model.infer_action_uncached
    return fn(x["pixel_values"], x["input_ids"], x["attention_mask"], x["proprio"], goal=x["goal"], noise=x["noise"])


CONFIGS = [pytest.param(small_config(1, True), id="kv1-moe-top2cams"), pytest.param(small_config(4, True, 1), id="kv4-moe"),
           pytest.param(small_config(4, False), id="kv4-pi0"), pytest.param(small_config(1, False), id="kv1-pi0")]


@pytest.mark.parametrize("config", CONFIGS)
def test_cached_equals_uncached_and_batch_independent(config: ModelConfig) -> None:
    model = randomise(DriveMoE(config))
    x = random_inputs(config, batch=2)
    cached, uncached = infer(model, x), infer(model, x, cached=False)
    torch.testing.assert_close(cached["euler_states"], uncached["euler_states"], atol=1e-5, rtol=1e-5)
    # the trajectory must depend on the inputs (guards against a dead network passing trivially)
    assert (cached["final_action_preclamp"] - x["noise"]).abs().max() > 1e-3
    if config.use_action_moe:
        torch.testing.assert_close(cached["action_router_logits"], uncached["action_router_logits"], atol=1e-5, rtol=1e-5)
        assert cached["action_router_topk_idx"].shape == (config.flow.num_inference_steps, 2, config.action_moe.top_k)
    if config.use_camera_router:
        assert cached["selected_views"].shape == (2, config.camera_router.top_k)
        logits = cached["camera_logits"]
        picked = logits.gather(1, cached["selected_views"])
        assert torch.all(picked[:, :-1] >= picked[:, 1:])  # best first
        assert torch.all(picked[:, -1:] >= logits.sort(dim=1, descending=True).values[:, config.camera_router.top_k - 1: config.camera_router.top_k])
    for b in range(2):
        single = infer(model, {k: v[b: b + 1] for k, v in x.items()})
        torch.testing.assert_close(single["euler_states"], cached["euler_states"][b: b + 1], atol=1e-5, rtol=1e-5)
        if config.use_action_moe:
            assert torch.equal(single["action_router_topk_idx"][:, 0], cached["action_router_topk_idx"][:, b])


def test_only_selected_cameras_are_encoded() -> None:
    config = small_config(1, True, top_k_cameras=2)
    model = randomise(DriveMoE(config))
    x = random_inputs(config, batch=2)
    seen: list[int] = []
    handle = model.vision_tower.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    out = infer(model, x)
    handle.remove()
    assert seen == [2 * 2, 2 * config.camera_router.top_k]  # fronts, then only the K selected views
    # changing an unselected candidate image changes nothing; changing a selected one does
    unselected = [c for c in range(5) if c not in out["selected_views"][0].tolist()][0]
    x2 = {k: v.clone() for k, v in x.items()}
    x2["pixel_values"][0, 2 + unselected] = -x2["pixel_values"][0, 2 + unselected]
    assert torch.equal(infer(model, x2)["final_action"], out["final_action"])
    x3 = {k: v.clone() for k, v in x.items()}
    x3["pixel_values"][0, 2 + int(out["selected_views"][0, 1])] *= -1
    assert not torch.equal(infer(model, x3)["final_action_preclamp"][0], out["final_action_preclamp"][0])


def test_siglip_tower_matches_transformers() -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = small_config()
    model = randomise(DriveMoE(config))
    v = config.vision
    hf = SiglipVisionModel(SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
                                              num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
                                              layer_norm_eps=v.layer_norm_eps, hidden_act="gelu_pytorch_tanh", vision_use_head=False)).eval()
    ours = model.vision_tower.state_dict()
    hf_keys = hf.state_dict().keys()
    mapped = {k: ours["vision_model." + k] if "vision_model." + k in ours else ours[k] for k in hf_keys}
    hf.load_state_dict(mapped, strict=True)
    pixels = torch.rand(3, 3, v.image_size, v.image_size) * 2 - 1
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state
        actual = model.vision_tower(pixels)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def reference_joint(model: DriveMoE, embeds: dict[str, torch.Tensor], positions: dict[str, torch.Tensor], allowed: torch.Tensor) -> dict[str, torch.Tensor]:
    """README 5.4-5.7 transcribed literally: repeat_interleave K/V, explicit masks, per-sample MoE loops."""
    cfg = model.config
    j = cfg.joint
    names = list(embeds)
    x = {n: embeds[n] * math.sqrt(getattr(j, n).hidden_size) for n in names}

    def rms(norm, h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + j.rms_norm_eps) * (1 + norm.weight)

    def rope(t, pos):
        inv = 1.0 / (j.rope_theta ** (torch.arange(0, j.head_dim, 2).float() / j.head_dim))
        ang = pos.float()[:, None] * inv[None, :]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        t1, t2 = t[..., : j.head_dim // 2], t[..., j.head_dim // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def mlp(m, h):
        return m.down_proj(torch.nn.functional.gelu(m.gate_proj(h), approximate="tanh") * m.up_proj(h))

    routing_probs = None
    for li in range(j.num_layers):
        qs, ks, vs = [], [], []
        for n in names:
            layer = model.joint_model.mixtures[n].layers[li]
            h = rms(layer.input_layernorm, x[n])
            b, t, _ = h.shape
            qs.append(rope(layer.self_attn.q_proj(h).view(b, t, j.num_heads, j.head_dim).transpose(1, 2), positions[n]))
            ks.append(rope(layer.self_attn.k_proj(h).view(b, t, j.num_kv_heads, j.head_dim).transpose(1, 2), positions[n]))
            vs.append(layer.self_attn.v_proj(h).view(b, t, j.num_kv_heads, j.head_dim).transpose(1, 2))
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        r = j.num_heads // j.num_kv_heads
        k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        s = q @ k.transpose(-1, -2) / math.sqrt(j.head_dim)
        s = 50.0 * torch.tanh(s / 50.0)
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        o = p @ v
        start = 0
        for n in names:
            t = x[n].shape[1]
            on = o[:, :, start: start + t].transpose(1, 2).reshape(x[n].shape[0], t, -1)
            start += t
            if n == "vlm" and li == j.num_layers - 1:
                continue
            layer = model.joint_model.mixtures[n].layers[li]
            x[n] = x[n] + layer.self_attn.o_proj(on)
            h = rms(layer.post_attention_layernorm, x[n])
            if getattr(layer, "is_moe", False):
                y = torch.zeros_like(h)
                for bi in range(h.shape[0]):
                    w, idx = torch.topk(routing_probs[bi], cfg.action_moe.top_k)
                    w = w / w.sum()
                    for e in sorted(idx.tolist()):
                        y[bi] += w[idx.tolist().index(e)] * mlp(layer.mlp.skill_experts[e], h[bi])
                    for shared in layer.mlp.shared_experts:
                        y[bi] += mlp(shared, h[bi])
                x[n] = x[n] + y
            else:
                x[n] = x[n] + mlp(layer.mlp, h)
            if n == "action" and cfg.use_action_moe and li == cfg.router_layer:
                router = model.joint_model.action_router
                routing_probs = torch.softmax((h @ router.router_linear.weight.T).mean(1) / router.temperature.abs(), -1)
    out = {n: (rms(model.joint_model.mixtures[n].norm, x[n]) if n != "vlm" else x[n]) for n in names}
    return out


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_joint_transformer_matches_formula_reference(config: ModelConfig) -> None:
    model = randomise(DriveMoE(config), seed=3)
    x = random_inputs(config, batch=2, seed=4)
    gen = torch.Generator().manual_seed(5)
    f = config.flow
    embeds = {"vlm": torch.randn(2, config.max_seq_len, config.joint.vlm.hidden_size, generator=gen) * 0.3,
              "proprio": torch.randn(2, f.cond_steps, config.joint.proprio.hidden_size, generator=gen) * 0.3,
              "action": torch.randn(2, f.horizon, config.joint.action.hidden_size, generator=gen) * 0.3}
    positions = {"vlm": torch.arange(1, config.max_seq_len + 1), "proprio": torch.arange(1, f.cond_steps + 1),
                 "action": torch.arange(f.cond_steps + 1, f.cond_steps + f.horizon + 1)}
    allowed = build_attention_mask(x["attention_mask"], f.cond_steps, f.horizon)
    streams = {n: StreamInput(embeds[n], *model._rope(positions[n])) for n in embeds}
    with torch.no_grad():
        ours = model.joint_model(streams, additive_mask(allowed, torch.float32))
        ref = reference_joint(model, embeds, positions, allowed)
    torch.testing.assert_close(ours.hidden["action"], ref["action"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.hidden["proprio"], ref["proprio"], atol=1e-5, rtol=1e-5)
    valid = x["attention_mask"].bool()  # padding rows are unconstrained (never read)
    torch.testing.assert_close(ours.hidden["vlm"][valid], ref["vlm"][valid], atol=1e-5, rtol=1e-5)


def test_attention_mask_blocks() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    allowed = build_attention_mask(mask, cond_steps=2, horizon=3)[:, 0]
    L = 4
    assert allowed.shape == (2, 9, 9)
    assert allowed[0, :3, :3].all() and not allowed[0, :3, 3:].any()
    assert not allowed[0, 3].any()  # pad row
    assert allowed[1, L, :2].all() and not allowed[1, L, 2:L].any() and allowed[1, L, L:L + 2].all() and not allowed[1, L, L + 2:].any()
    assert allowed[1, L + 2, :2].all() and allowed[1, L + 2, L:].all() and not allowed[1, L + 2, 2:L].any()


def test_bfloat16_runs_and_stays_close(drivemoe_reference: Path, tmp_path: Path) -> None:
    from model.convert import convert_official, read_official_config
    from model.predict import model_inputs
    from safetensors.torch import load_file

    for name in ("drivemoe", "drivepi0"):
        config = ModelConfig.from_official(read_official_config(drivemoe_reference / f"tiny_{name}" / "config.json"))
        convert_official(drivemoe_reference / f"tiny_{name}" / "official_checkpoint.pt", config, tmp_path / name)
        fp32, _ = load_pretrained(tmp_path / name)
        bf16, _ = load_pretrained(tmp_path / name, dtype=torch.bfloat16)
        args = model_inputs(load_file(str(drivemoe_reference / f"tiny_{name}" / "inputs.safetensors")), config)
        a = fp32.infer_action(args["pixel_values"], args["input_ids"], args["attention_mask"], args["proprio"], goal=args["goal"], noise=args["noise"])
        b = bf16.infer_action(args["pixel_values"], args["input_ids"], args["attention_mask"], args["proprio"], goal=args["goal"], noise=args["noise"])
        assert b["final_action"].dtype == torch.float32 and torch.isfinite(b["euler_states"]).all()
        assert (a["final_action"] - b["final_action"]).abs().max() < 0.1
        if name == "drivemoe":
            assert torch.equal(a["selected_view"], b["selected_view"])


def test_paper_scale_layout_on_meta_device(drivemoe_reference: Path) -> None:
    for preset, layout_file in (("drivemoe-base", "layout_full_drivemoe.json"), ("drivepi0-base", "layout_full_drivepi0.json")):
        with torch.device("meta"):
            model = DriveMoE(ModelConfig.preset(preset), dtype=torch.bfloat16)
        layout = json.loads((drivemoe_reference / layout_file).read_text())
        expected = {e["key"]: tuple(e["shape"]) for e in layout["state_dict"] if not e["key"].startswith("criterion.")}
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == expected
        assert sum(p.numel() for p in model.parameters()) == layout["total_unique_parameters_after_tie_action_proprio_weights"]
        assert model.dtype == torch.bfloat16
        assert model.config.max_seq_len == (788 if preset == "drivemoe-base" else 532)


def test_save_load_round_trip_and_mismatch(tmp_path: Path) -> None:
    config = small_config(4, True)
    model = randomise(DriveMoE(config))
    save_pretrained(model, config, tmp_path / "m")
    loaded, loaded_config = load_pretrained(tmp_path / "m")
    assert loaded_config == config
    x = random_inputs(config, 2)
    assert torch.equal(infer(model, x)["final_action"], infer(loaded, x)["final_action"])
    other = DriveMoE(dataclasses.replace(config, joint=dataclasses.replace(config.joint, num_kv_heads=2)))
    with pytest.raises(CheckpointError, match=r"k_proj.weight: config .* expects \(16, \d+\), checkpoint has \(32, \d+\)"):
        load_into_model(other, model.state_dict())
    state = model.state_dict()
    state["joint_model.mixtures.proprio.layers.0.mlp.up_proj.weight"] = state["joint_model.mixtures.proprio.layers.0.mlp.up_proj.weight"] + 1
    with pytest.raises(CheckpointError, match="differs from joint_model.mixtures.action.layers.0.mlp.up_proj.weight"):
        load_into_model(DriveMoE(config), state)


def test_action_moe_options() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5], [3.0, 0.0, 0.0, 0.0]])
    r = route(logits, 2, torch.float32)
    assert r.topk_idx[0].tolist() == [1, 3] and int(r.topk_idx[1, 0]) == 0
    torch.testing.assert_close(r.dense_weights.sum(-1), torch.ones(2))
    assert (r.dense_weights > 0).sum(-1).tolist() == [2, 2]
    forced = route(logits, 2, torch.float32, forced_experts=torch.tensor([2, 3]))
    assert forced.dense_weights.tolist() == [[0, 0, 1, 0], [0, 0, 0, 1]]
    uniform = route(torch.zeros(4, 4), 1, torch.float32)
    uniform.topk_idx = torch.arange(4).view(4, 1)  # perfectly balanced dispatch
    assert load_balancing_loss(uniform).item() == pytest.approx(1.0)
    skewed = route(torch.tensor([[5.0, 0, 0, 0]] * 4), 1, torch.float32)
    assert load_balancing_loss(skewed).item() > 3.0

    base = small_config(1, True, 1)
    config = dataclasses.replace(base, action_moe=ActionMoEConfig(num_moe_layers=2, num_experts=4, top_k=2, load_balancing_loss_weight=0.01,
                                                                  ground_truth_expert_selection=True),
                                 loss=dataclasses.replace(base.loss, scenario_class_counts=(10, 20, 30, 40)))
    model = randomise(DriveMoE(config)).train()
    x = random_inputs(config, 2)
    batch = {"pixel_values": x["pixel_values"], "input_ids": x["input_ids"], "attention_mask": x["attention_mask"], "proprio": x["proprio"],
             "goal": x["goal"], "actions": torch.rand(2, 10, 2) * 2 - 1, "camera_ids": torch.tensor([0, 4]), "scenario_ids": torch.tensor([1, 3])}
    out = model.forward_train(batch, stage=1, generator=torch.Generator().manual_seed(0))
    expected_total = out["flow_matching_loss"] + out["camera_router_loss"] + out["action_router_loss"] + 0.01 * out["load_balancing_loss"]
    torch.testing.assert_close(out["total_loss"], expected_total)
    again = model.forward_train(batch, stage=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["t"], again["t"]) and torch.equal(out["x0"], again["x0"])


def test_time_sampling_distribution() -> None:
    cfg = ModelConfig.preset("tiny-drivepi0").flow
    t = sample_time(20000, cfg, generator=torch.Generator().manual_seed(0))
    assert 0 < float(t.min()) and float(t.max()) <= 0.999
    assert abs(float(t.mean()) - 0.999 * (1 - 1.5 / 2.5)) < 0.01  # E[z] = a / (a + b) for Beta(1.5, 1)
    assert torch.equal(t, sample_time(20000, cfg, generator=torch.Generator().manual_seed(0)))


def test_config_validation_and_round_trip() -> None:
    for name in ("drivemoe-base", "drivepi0-base", "tiny-drivemoe", "tiny-drivepi0"):
        config = ModelConfig.preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="joint.num_kv_heads"):
        JointConfig(num_heads=8, num_kv_heads=3)
    with pytest.raises(ValueError, match="camera_router.top_k"):
        CameraRouterConfig(top_k=6)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("nope")
    data = ModelConfig.preset("tiny-drivemoe").to_dict()
    data["joint"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict(data)
    assert small_config(1, True, 2).max_seq_len == 4 * 9 + 6


def test_normalisation_round_trip() -> None:
    stats = NormalizationStats()
    traj = torch.randn(3, 10, 2)
    torch.testing.assert_close(stats.denormalize_trajectory(stats.normalize_trajectory(traj)), traj, atol=1e-5, rtol=1e-5)
    low = stats.denormalize_trajectory(torch.full((2, 1, 2), -1.0))
    assert low[:, 0, 0].tolist() == pytest.approx([stats.fur_x[0]] * 2) and low[:, 0, 1].tolist() == pytest.approx([stats.fur_y[0]] * 2)
    with pytest.raises(ValueError, match="speed"):
        NormalizationStats(speed=(1.0, 0.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_equals_eager() -> None:
    from model.drivemoe import GraphedPrefixAndDenoise

    config = small_config(1, True, 2)
    model = randomise(DriveMoE(config)).to("cuda")
    x = {k: v.cuda() for k, v in random_inputs(config, 2).items()}
    routed = model.prepare_image_tokens(x["pixel_values"], x["goal"])
    eager = model.denoise(model.build_prefix_cache(x["input_ids"], x["attention_mask"], routed["image_tokens"], x["proprio"]), noise=x["noise"])
    graphed = GraphedPrefixAndDenoise(model, batch=2)
    for _ in range(2):
        out = graphed(x["input_ids"], x["attention_mask"], routed["image_tokens"], x["proprio"], x["noise"])
        torch.testing.assert_close(out["euler_states"], eager["euler_states"], atol=1e-5, rtol=1e-5)
        assert torch.equal(out["action_router_topk_idx"], eager["action_router_topk_idx"])


def test_gathered_experts_equal_dense_and_follow_weight_updates() -> None:
    from model.action_moe import MoEMLP

    gen = torch.Generator().manual_seed(7)
    moe = MoEMLP(16, 24, num_experts=5, num_shared=1)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    h = torch.randn(2, 6, 16, generator=gen)
    routing = route(torch.randn(2, 5, generator=gen), 2, torch.float32)
    with torch.no_grad():
        gathered = moe(h, routing)  # B*k = 4 < 5 experts: only the chosen experts run
        reference = moe._dense(h, routing) + moe.shared_experts[0](h)
        torch.testing.assert_close(gathered, reference, atol=1e-6, rtol=1e-6)
        chosen = int(routing.topk_idx[0, 0])
        moe.load_state_dict({**moe.state_dict(), f"skill_experts.{chosen}.up_proj.weight": torch.zeros(24, 16)})
        updated = moe(h, routing)  # the cached stacked weights must not go stale
        torch.testing.assert_close(updated, moe._dense(h, routing) + moe.shared_experts[0](h), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(updated[0], gathered[0])
    with torch.enable_grad():
        loss = moe(h, routing).sum()  # training takes the dense path: gradients reach every chosen expert
        loss.backward()
    assert moe.skill_experts[chosen].gate_proj.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_entry_scale_is_sqrt_width_rounded_to_dtype(dtype: torch.dtype) -> None:
    from model.transformer import entry_scale

    for width in (24, 32, 48, 64, 1024, 1152, 2048, 333):
        assert entry_scale(width, dtype) == float(torch.tensor(width ** 0.5, dtype=dtype))
