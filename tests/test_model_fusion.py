"""Fused projections (model/fusion.py) and the grouped-GEMM experts: same results as the separate
projections, same state_dict, no copies of the weights, training untouched."""
from __future__ import annotations

import copy

import pytest
import torch

from model.action_moe import MoEMLP, route
from model.drivemoe import DriveMoE
from model.fusion import fuse_projections, is_fused
from tests.test_model_units import CONFIGS, infer, random_inputs, randomise


@pytest.mark.parametrize("config", CONFIGS)
def test_fused_inference_equals_separate_projections(config) -> None:
    model = randomise(DriveMoE(config))
    x = random_inputs(config, 2)
    with torch.inference_mode():
        reference = infer(model, x)
    fused = fuse_projections(copy.deepcopy(model))
    assert is_fused(fused) and not is_fused(model)
    with torch.inference_mode():
        out = infer(fused, x)
    for key, value in reference.items():
        torch.testing.assert_close(out[key], value, atol=2e-6, rtol=2e-6, msg=key)
    if "action_router_topk_idx" in reference:
        assert torch.equal(out["action_router_topk_idx"], reference["action_router_topk_idx"])


def test_fusion_keeps_the_state_dict_aliases_the_storage_and_follows_loads() -> None:
    config = CONFIGS[0].values[0]
    model = randomise(DriveMoE(config))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    storage_before = sum(p.numel() for p in model.parameters())
    fuse_projections(model)
    fuse_projections(model)  # idempotent
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[n] for n, p in model.named_parameters())  # identity kept (optimisers)
    attn = model.joint_model.mixtures["action"].layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == attn.qkv.data_ptr()  # a view, not a copy
    assert sum(p.numel() for p in model.parameters()) == storage_before
    moe = next(m for m in model.modules() if isinstance(m, MoEMLP))
    assert moe.skill_experts[1].down_proj.weight.data_ptr() == moe.expert_down[1].data_ptr()
    key = next(k for k in after if k.endswith("self_attn.k_proj.weight"))
    model.load_state_dict({**after, key: torch.zeros_like(after[key])})
    layer = model.get_submodule(key.rsplit(".", 2)[0])
    assert torch.count_nonzero(layer.qkv[layer.q_proj.weight.shape[0]:][: layer.k_proj.weight.shape[0]]) == 0


def test_training_through_a_fused_model_still_reaches_every_parameter() -> None:
    config = CONFIGS[0].values[0]
    model = fuse_projections(randomise(DriveMoE(config)))
    for p in model.parameters():
        p.requires_grad_(True)
    vision_q = model.vision_tower.vision_model.encoder.layers[0].self_attn.q_proj.weight
    out = model.encode_images(random_inputs(config, 1)["pixel_values"][:, :2])
    out.sum().backward()  # grad on: the separate projections run, gradients land on the parameters
    assert vision_q.grad is not None and torch.count_nonzero(vision_q.grad) > 0


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_grouped_gemm_experts_equal_the_gathered_and_dense_paths(dtype, tol) -> None:
    gen = torch.Generator().manual_seed(3)
    moe = MoEMLP(16, 24, num_experts=6, num_shared=1)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    moe = moe.to(dtype)
    h = torch.randn(2, 5, 16, generator=gen).to(dtype)
    routing = route(torch.randn(2, 6, generator=gen), 2, dtype)
    with torch.no_grad():
        reference = moe._dense(h, routing) + moe.shared_experts[0](h)
        gathered = moe(h, routing)
        fuse_projections(moe)
        fused_gathered = moe(h, routing)
        moe.grouped_gemm = True
        grouped = moe(h, routing)
    for out in (gathered, fused_gathered, grouped):
        torch.testing.assert_close(out.float(), reference.float(), atol=tol, rtol=tol)
    assert torch.equal(grouped, fused_gathered) or dtype != torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("grouped", [False, True])
def test_cuda_fused_graphed_path_equals_eager_without_host_syncs(grouped) -> None:
    from model.drivemoe import GraphedPrefixAndDenoise
    from model.fusion import set_grouped_experts

    config = CONFIGS[0].values[0]
    dtype = torch.bfloat16 if grouped else torch.float32  # grouped GEMMs run in bf16 only
    model = randomise(DriveMoE(config)).to("cuda", dtype)
    x = {k: v.cuda() for k, v in random_inputs(config, 1).items()}
    tol = 2e-2 if grouped else 1e-5
    with torch.inference_mode():
        routed = model.prepare_image_tokens(x["pixel_values"], x["goal"])
        cache = model.build_prefix_cache(x["input_ids"], x["attention_mask"], routed["image_tokens"], x["proprio"])
        eager = model.denoise(cache, noise=x["noise"])
        set_grouped_experts(fuse_projections(model), grouped)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            cache = model.build_prefix_cache(x["input_ids"], x["attention_mask"], routed["image_tokens"], x["proprio"])
            fused = model.denoise(cache, noise=x["noise"])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    graphed = GraphedPrefixAndDenoise(model, batch=1)
    replay = graphed(x["input_ids"], x["attention_mask"], routed["image_tokens"], x["proprio"], x["noise"])
    for out in (fused, replay):
        torch.testing.assert_close(out["euler_states"], eager["euler_states"], atol=tol, rtol=tol)
        assert torch.equal(out["action_router_topk_idx"], eager["action_router_topk_idx"])


def test_bench_times_each_path_on_one_model_and_checks_agreement() -> None:
    from model.bench import BenchConfig, format_table, run_configuration

    cfg = BenchConfig(presets=("tiny-drivemoe",), device="cpu", dtypes=("bfloat16",), iters=1, warmup=0,
                      paths=("eager", "agent", "fast"), grouped_experts=True, fp32_reference=True)
    results = run_configuration("tiny-drivemoe", "bfloat16", False, cfg)
    assert [r.path for r in results] == ["eager", "agent", "fast"] and all(r.status == "ok" for r in results)
    assert results[0].max_abs_diff_vs_first == 0.0
    for r in results:
        assert r.routing_equal_vs_first and r.max_abs_diff_vs_first < 2e-2 and r.max_abs_diff_vs_fp32 < 5e-2
        assert set(r.median_ms) == {"preprocess", "vision", "router", "prefix", "denoise", "total"}
    assert "fast" in format_table(results)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_with_softcap_equals_the_eager_attention() -> None:
    from model.transformer import flex_grouped_attention, grouped_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(shape, generator=gen) * 3 for shape in ((2, 4, 5, 8), (2, 2, 9, 8), (2, 2, 9, 8)))
    mask = torch.zeros(2, 1, 5, 9)
    mask[0, :, :, 6:] = torch.finfo(torch.float32).min  # padding columns
    mask[1, :, 3:, :] = torch.finfo(torch.float32).min  # fully masked rows
    for softcap in (None, 2.5):
        torch.testing.assert_close(flex_grouped_attention(q, k, v, mask, softcap), grouped_attention(q, k, v, mask, softcap),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_in_the_whole_model_equals_eager() -> None:
    config = CONFIGS[1].values[0]
    model = randomise(DriveMoE(config))
    x = random_inputs(config, 2)
    with torch.inference_mode():
        reference = infer(model, x)
        model.joint_model.attention_kernel = "flex"
        out = infer(model, x)
    torch.testing.assert_close(out["final_action"], reference["final_action"], atol=1e-5, rtol=1e-5)
    assert torch.equal(out["action_router_topk_idx"], reference["action_router_topk_idx"])


def test_fused_grouped_model_traces_under_torch_compile_without_graph_breaks() -> None:
    """Dynamo with the eager backend (no inductor compile on the CPU): the fused and grouped paths
    trace as one graph per module and give the same bf16 result as the unfused eager model."""
    from torch._dynamo.utils import counters

    from model.fusion import set_grouped_experts

    config = CONFIGS[0].values[0]
    model = randomise(DriveMoE(config)).to(torch.bfloat16)
    x = random_inputs(config, 1)
    with torch.inference_mode():
        reference = infer(model, x)
    set_grouped_experts(fuse_projections(model), True)
    model.joint_model.compile(backend="eager")
    model.vision_tower.compile(backend="eager")
    counters.clear()
    with torch.inference_mode():
        out = infer(model, x)
    assert not counters["graph_break"]
    torch.testing.assert_close(out["final_action"].float(), reference["final_action"].float(), atol=1e-2, rtol=0)
    assert torch.equal(out["action_router_topk_idx"], reference["action_router_topk_idx"])
