"""HF PaliGemma import: a tiny random PaliGemma built and saved here, loaded into our network, checked
against transformers' own vision tower + projector and Gemma layers (no download)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.drivemoe import DriveMoE
from model.errors import CheckpointError
from model.paligemma_import import canonical_hf_key, load_paligemma_weights, our_key_of
from model.transformer import KVCache, StreamInput, rope_cos_sin


def _our_config(softcap: float = 0.0) -> ModelConfig:
    """tiny-drivemoe; the soft-cap (authors' quirk Q3, absent in HF Gemma) is off for the comparison."""
    base = ModelConfig.preset("tiny-drivemoe")
    return dataclasses.replace(base, joint=dataclasses.replace(base.joint, attn_softcap=softcap))


def _hf_paligemma(config: ModelConfig):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    v, j = config.vision, config.joint
    hf_config = PaliGemmaConfig(
        vision_config=dict(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
            projection_dim=j.vlm.hidden_size, layer_norm_eps=v.layer_norm_eps, hidden_act="gelu_pytorch_tanh",
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="gemma", hidden_size=j.vlm.hidden_size, intermediate_size=j.vlm.intermediate_size,
            num_hidden_layers=j.num_layers, num_attention_heads=j.num_heads, num_key_value_heads=j.num_kv_heads,
            head_dim=j.head_dim, vocab_size=config.sequence.vocab_size, rms_norm_eps=j.rms_norm_eps,
            rope_theta=j.rope_theta, hidden_activation="gelu_pytorch_tanh",
        ),
        image_token_index=config.sequence.image_token_id, projection_dim=j.vlm.hidden_size,
        hidden_size=j.vlm.hidden_size, vocab_size=config.sequence.vocab_size,
    )
    hf_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(hf_config).eval()
    with torch.no_grad():  # weights well away from the near-identity default init
        for name, param in model.named_parameters():
            siglip_layer_norm = "vision_tower" in name and ("layer_norm" in name or "layernorm" in name)
            if siglip_layer_norm and name.endswith("weight"):  # LayerNorm scales around 1
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias") or name.endswith("norm.weight"):  # biases; Gemma RMSNorm (1 + w)
                param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, max(0.02, 1.0 / param.shape[-1] ** 0.5))
    return model


@pytest.fixture(scope="module")
def saved_paligemma(tmp_path_factory: pytest.TempPathFactory):
    hf = _hf_paligemma(_our_config())
    folder = tmp_path_factory.mktemp("paligemma")
    hf.save_pretrained(str(folder))
    return hf, folder


@pytest.fixture(scope="module")
def imported(saved_paligemma):
    _, folder = saved_paligemma
    torch.manual_seed(1)
    model = DriveMoE(_our_config()).eval()
    report = load_paligemma_weights(model, folder)
    return model, report


def test_report_names_what_was_loaded(imported, saved_paligemma) -> None:
    model, report = imported
    _, folder = saved_paligemma
    assert report.missing == () and report.unexpected == ()
    assert "embed_tokens.weight" in report.loaded
    assert "vision_tower.vision_model.post_layernorm.weight" in report.loaded
    assert "multi_modal_projector.linear.weight" in report.loaded
    assert "joint_model.mixtures.vlm.layers.5.self_attn.k_proj.weight" in report.loaded
    assert any(k.endswith("norm.weight") and "language_model" in k for k in report.ignored)  # Gemma's final norm
    assert "action_decoder.weight" in report.not_pretrained and "camera_router.router_query" in report.not_pretrained
    assert not any(k.startswith("joint_model.mixtures.vlm.") for k in report.not_pretrained)
    saved = load_file(str(folder / "model.safetensors"))
    torch.testing.assert_close(model.embed_tokens.weight, saved["language_model.model.embed_tokens.weight"], rtol=0, atol=0)
    assert "loaded" in report.summary()


def test_vision_tower_and_projector_match_transformers(imported, saved_paligemma) -> None:
    model, _ = imported
    hf, _ = saved_paligemma
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ours_tower = model.vision_tower(pixels)
        theirs_tower = hf.model.vision_tower(pixel_values=pixels).last_hidden_state
        ours = model.multi_modal_projector(ours_tower)
        theirs = hf.model.multi_modal_projector(theirs_tower)
        ours_tokens = model.encode_images(pixels.unsqueeze(0))[0]
    assert theirs_tower.abs().max() > 0.1
    torch.testing.assert_close(ours_tower, theirs_tower, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # Our prefix tokens are the projector output / sqrt(W_v), like HF's get_image_features.
    torch.testing.assert_close(ours_tokens, theirs / 8.0, atol=1e-6, rtol=1e-5)


def _run_vlm_stream(model: DriveMoE, embeds: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    cfg = model.config
    b, length, _ = embeds.shape
    positions = torch.arange(1, length + 1)
    cos, sin = rope_cos_sin(positions, cfg.joint.head_dim, cfg.joint.rope_theta, embeds.dtype)
    cache = KVCache.allocate(cfg, b, length, embeds.device, embeds.dtype)
    mask = torch.zeros(b, 1, length, length)  # fully bidirectional
    with torch.no_grad():
        out = model.joint_model({"vlm": StreamInput(embeds, cos, sin)}, mask, cache=cache, cache_offset=0)
    return out.hidden["vlm"], cache


def _run_hf_gemma(hf, embeds: torch.Tensor):
    """HF Gemma layers on our (unscaled) embeddings; transformers 5.24's GemmaModel does not apply the
    sqrt(width) entry scaling to `inputs_embeds`, while our joint model does, so it is applied here."""
    b, length, width = embeds.shape
    scaled = embeds * torch.tensor(width**0.5, dtype=embeds.dtype)
    with torch.no_grad():
        return hf.model.language_model(
            inputs_embeds=scaled, position_ids=torch.arange(1, length + 1).expand(b, -1),
            attention_mask=torch.ones(b, 1, length, length, dtype=torch.bool), output_hidden_states=True, use_cache=True,
        )


def test_vlm_stream_matches_transformers_gemma(imported, saved_paligemma) -> None:
    """Soft-cap off: our VLM stream equals HF Gemma layer by layer (hidden states and post-RoPE K/V)."""
    model, _ = imported
    hf, _ = saved_paligemma
    n = model.config.joint.num_layers
    embeds = torch.randn(2, 12, 64) * 0.2
    ours, cache = _run_vlm_stream(model, embeds)
    theirs = _run_hf_gemma(hf, embeds)
    # Our VLM stream skips the last layer's o_proj/MLP (only its K/V are used) and has no final norm,
    # so its output is the hidden state entering HF's last layer.
    assert (theirs.hidden_states[n - 1] - theirs.hidden_states[0]).abs().max() > 0.1
    torch.testing.assert_close(ours, theirs.hidden_states[n - 1], atol=1e-5, rtol=1e-5)
    past = theirs.cache if getattr(theirs, "cache", None) is not None else theirs.past_key_values
    for layer in range(n):
        torch.testing.assert_close(cache.keys[layer], past.layers[layer].keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.values[layer], past.layers[layer].values, atol=1e-5, rtol=1e-5)


def test_softcap_is_the_only_difference(saved_paligemma) -> None:
    """With the authors' soft-cap at 50 the outputs move, but only slightly for moderate logits."""
    hf, folder = saved_paligemma
    capped = DriveMoE(_our_config(softcap=50.0)).eval()
    load_paligemma_weights(capped, folder)
    embeds = torch.randn(1, 12, 64) * 0.2
    ours, _ = _run_vlm_stream(capped, embeds)
    reference = _run_hf_gemma(hf, embeds).hidden_states[capped.config.joint.num_layers - 1]
    difference = (ours - reference).abs().max().item()
    assert 0.0 < difference < 0.05 * reference.abs().max().item()


@pytest.mark.parametrize("style", ["hub", "prefixed", "sharded"])
def test_other_key_spellings_load_identically(tmp_path: Path, saved_paligemma, imported, style: str) -> None:
    _, folder = saved_paligemma
    reference_model, _ = imported
    tensors = load_file(str(folder / "model.safetensors"))

    def respell(key: str) -> str:
        key = canonical_hf_key(key)  # language_model.*, vision_tower.*, multi_modal_projector.*
        if style == "prefixed":  # transformers >= 4.52: model.language_model.*, model.vision_tower.*
            return "model." + key
        if key.startswith("language_model."):  # Hub files: language_model.model.*, vision_tower.vision_model.*
            return "language_model.model." + key[len("language_model."):]
        if key.startswith("vision_tower."):
            return "vision_tower.vision_model." + key[len("vision_tower."):]
        return key

    out = tmp_path / style
    out.mkdir()
    renamed = {respell(k): v.contiguous() for k, v in tensors.items()}
    if style == "sharded":
        keys = sorted(renamed)
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, shard_keys in shards.items():
            save_file({k: renamed[k] for k in shard_keys}, str(out / name))
        weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(renamed, str(out / "model.safetensors"))
    model = DriveMoE(_our_config()).eval()
    report = load_paligemma_weights(model, out)
    assert report.missing == () and report.unexpected == ()
    ours = model.state_dict()
    for key in report.loaded:
        torch.testing.assert_close(ours[key], reference_model.state_dict()[key], rtol=0, atol=0)


def test_key_mapping_table() -> None:
    assert our_key_of("language_model.model.embed_tokens.weight") == "embed_tokens.weight"
    assert our_key_of("model.language_model.layers.3.mlp.up_proj.weight") == "joint_model.mixtures.vlm.layers.3.mlp.up_proj.weight"
    assert our_key_of("vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias") == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias"
    assert our_key_of("vision_tower.embeddings.patch_embedding.weight") == "vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert our_key_of("model.multi_modal_projector.linear.bias") == "multi_modal_projector.linear.bias"
    assert our_key_of("language_model.model.norm.weight") is None
    assert our_key_of("language_model.lm_head.weight") is None and our_key_of("lm_head.weight") is None


def test_mismatched_architecture_and_bad_folders(tmp_path: Path, saved_paligemma) -> None:
    _, folder = saved_paligemma
    base = ModelConfig.preset("tiny-drivemoe")
    wider = dataclasses.replace(base, joint=dataclasses.replace(base.joint, vlm=dataclasses.replace(base.joint.vlm, intermediate_size=256)))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape"):
        load_paligemma_weights(DriveMoE(wider), folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_paligemma_weights(DriveMoE(base), tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_paligemma_weights(DriveMoE(base), tmp_path / "missing")
