"""`drivemoe convert`: an authors' checkpoint (.pt) -> our folder (model.safetensors + config.json).

    drivemoe convert --official CKPT.pt (--preset NAME | --official-config CFG.yaml|json)
                     [--stats STATS.json] [--dtype float32|bfloat16] [--prompt-ids 2,17,...] --out DIR
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError
from tqdm import tqdm

from bench2drive_eval.jsonio import read_text_file
from model.checkpoints import LoadReport, build_model, dtype_name, load_into_model, load_official_checkpoint, parse_dtype, save_pretrained
from model.config import ModelConfig
from model.errors import CheckpointError
from model.normalization import NormalizationStats


@dataclass
class ConversionResult:
    out_dir: Path
    config: ModelConfig
    report: LoadReport
    dtype: torch.dtype
    meta: dict[str, Any]
    bytes_on_disk: int


_REFERENCE = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def _resolve_references(node: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """Resolve plain `${a.b}` references of an unresolved OmegaConf YAML (no resolvers such as eval)."""
    if depth > 20:
        raise ValueError("official config: reference cycle")
    if isinstance(node, Mapping):
        return {k: _resolve_references(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_references(v, root, depth) for v in node]
    if isinstance(node, str) and node.startswith("${"):
        match = _REFERENCE.match(node)
        if not match:
            raise ValueError(f"official config: cannot resolve {node!r}; pass the resolved config (OmegaConf.to_yaml(cfg, resolve=True))")
        target: Any = root
        for part in match.group(1).split("."):
            if not isinstance(target, Mapping) or part not in target:
                raise ValueError(f"official config: reference {node!r} points to a missing field")
            target = target[part]
        return _resolve_references(target, root, depth + 1)
    return node


def read_official_config(path: str | Path) -> dict[str, Any]:
    """The authors' model config from YAML or JSON (a `resolved_merged_config` wrapper is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official config not found: {path}")
    text = read_text_file(path, ValueError, f"official config {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:
        raise ValueError(f"{path}: cannot parse ({error})") from None
    if isinstance(data, Mapping) and "resolved_merged_config" in data:
        data = data["resolved_merged_config"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return _resolve_references(data, data)


# The numeric fields ModelConfig.from_official reads: path -> (kind, required). Checked here first so
# that a wrong type names its field instead of being coerced (32.7 -> 32, true -> 1) or failing in int().
_INT, _FLOAT = "an integer", "a finite number"
OFFICIAL_NUMERIC_FIELDS: dict[str, tuple[str, bool]] = {
    **{f"vision.config.{k}": (_INT, True) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "image_size", "patch_size", "num_image_tokens")},
    "vision.config.num_channels": (_INT, False), "vision.config.layer_norm_eps": (_FLOAT, False),
    **{f"joint.config.{k}": (_INT, True) for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")},
    **{f"joint.config.{k}": (_INT, False) for k in ("num_moe_layers", "num_skill_experts", "num_experts_per_tok", "num_shared_experts")},
    "joint.config.rope_theta": (_FLOAT, True), "joint.config.rms_norm_eps": (_FLOAT, True),
    **{f"mixture.{m}.{k}": (_INT, True) for m in ("vlm", "proprio", "action") for k in ("hidden_size", "intermediate_size")},
    "vision_projector.config.vision_config.projection_dim": (_INT, True),
    "vision_projector.config.vision_config.hidden_size": (_INT, True),
    **{k: (_INT, True) for k in ("max_seq_len", "horizon_steps", "action_dim", "cond_steps", "proprio_dim", "vocab_size",
                                 "image_token_index")},
    **{k: (_INT, False) for k in ("num_camera_views_selected", "num_scenario_selected", "stage", "num_inference_steps", "pad_token_id")},
    "final_action_clip_value": (_FLOAT, False),
    **{f"criterion.{k}": (_FLOAT, False) for k in ("camera_router_weight", "action_router_weight", "action_weight", "gamma")},
}
POSITIVE_FIELDS = ("final_action_clip_value", "joint.config.rope_theta", "joint.config.rms_norm_eps", "vision.config.layer_norm_eps")


def _lookup(data: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_official_numbers(data: Mapping[str, Any], source: str) -> None:
    """Every numeric field has the right type and is finite; the message names the file, field and value."""
    for path, (kind, required) in OFFICIAL_NUMERIC_FIELDS.items():
        found, value = _lookup(data, path)
        if not found or (value is None and not required):
            if required:
                raise ValueError(f"{source}: required field {path!r} is missing")
            continue
        if kind == _FLOAT and isinstance(value, str):
            try:  # PyYAML reads YAML 1.1, where `1e-6` (no dot) is a string; OmegaConf reads it as a float
                value = float(value)
            except ValueError:
                pass
        ok = not isinstance(value, bool) and (isinstance(value, int) if kind == _INT else isinstance(value, (int, float)))
        if ok and kind == _FLOAT:
            ok = math.isfinite(value)
        if not ok:
            raise ValueError(f"{source}: field {path!r} must be {kind}, got {value!r}")
        if path in POSITIVE_FIELDS and value <= 0:
            raise ValueError(f"{source}: field {path!r} must be > 0, got {value!r}")


def official_model_config(path: str | Path) -> ModelConfig:
    """ModelConfig of an authors' config file, its numeric fields checked strictly first."""
    path = Path(path)
    data = read_official_config(path)
    check_official_numbers(data, str(path))
    name = path.parent.name if path.stem == "config" else path.stem
    try:
        return ModelConfig.from_official(data, name=name)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def check_state_dict(state: Mapping[str, Any], source: str) -> None:
    """Only tensors, and only finite values in floating-point ones: a NaN weight makes every output NaN."""
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: the state dict holds non-tensor entries: {', '.join(not_tensors[:6])}"
                              f"{' ...' if len(not_tensors) > 6 else ''}")
    large = sum(v.numel() for v in state.values()) > 100_000_000
    for key, tensor in tqdm(state.items(), desc="checking weights are finite", unit="tensor", disable=not large):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: {key} holds {bad} NaN/inf value(s) of {tensor.numel()}")


def read_stats(path: str | Path) -> NormalizationStats:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        data = json.loads(read_text_file(path, ValueError))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return NormalizationStats.from_dict(data, source=str(path))


def parse_prompt_ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def convert_official(official: str | Path, config: ModelConfig, out_dir: str | Path, dtype: torch.dtype | str = "float32",
                     stats: NormalizationStats | None = None, prompt_ids: Sequence[int] | None = None,
                     shrink_text_embedding: bool = False, source_extra: Mapping[str, Any] | None = None) -> ConversionResult:
    """Convert; `prompt_ids` (e.g. from model/prompt.py's tokenizer) are stored in config.json.

    `shrink_text_embedding` keeps only the embedding rows of the prompt, pad and image tokens
    (ids remapped in the stored config; predictions unchanged); it needs prompt ids."""
    target = parse_dtype(dtype) or torch.float32
    if stats is not None:
        config = replace(config, stats=stats)
    if prompt_ids is not None:
        config = replace(config, sequence=replace(config.sequence, prompt_token_ids=tuple(int(i) for i in prompt_ids)))
    state, meta = load_official_checkpoint(official)
    check_state_dict(state, str(official))
    model = build_model(config, device="cpu", dtype=target)
    report = load_into_model(model, state, source=str(official))
    if shrink_text_embedding:
        from model.prompt import shrink_model_text_embeddings

        model, config = shrink_model_text_embeddings(model, config)
    extra = {"official_checkpoint": Path(official).name, **{k: v for k, v in meta.items() if isinstance(v, (int, float, str))},
             **(source_extra or {})}
    out = _save_atomically(model, config, Path(out_dir), target, extra)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return ConversionResult(out_dir=out, config=config, report=report, dtype=target, meta=meta, bytes_on_disk=size)


def _save_atomically(model, config: ModelConfig, out: Path, dtype: torch.dtype, extra: dict[str, Any]) -> Path:
    """Write into a hidden sibling folder, then move each file into `out`: a failure leaves no partial file."""
    staging = out.with_name(f".{out.name}.partial")
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        save_pretrained(model, config, staging, dtype=dtype, extra=extra)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        staging.rmdir()
    except (OSError, SafetensorError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        where = getattr(error, "filename", None) or out
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"cannot write the converted model to {where}: {reason}") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--official", required=True, help="the authors' checkpoint (.pt, torch.save dict with 'model')")
    arch = parser.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", help="architecture preset: drivemoe-base, drivepi0-base, tiny-drivemoe, tiny-drivepi0")
    arch.add_argument("--official-config", help="the authors' model config: YAML, or JSON (resolved_merged_config)")
    parser.add_argument("--stats", help="b2d_statistics.json-style normalisation statistics (default: the authors')")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored dtype")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-ids", help="token ids of '<bos>predict trajectory\\n', comma-separated")
    prompt.add_argument("--tokenizer", help="PaliGemma tokenizer folder; the prompt ids are read from it (local files only)")
    parser.add_argument("--shrink-text-embedding", action="store_true",
                        help="keep only the text-embedding rows the prompt uses (paper scale: ~1 GB less in bf16)")
    parser.add_argument("--out", required=True, help="output folder")


def main(args: argparse.Namespace) -> int:
    if args.preset:
        config = ModelConfig.preset(args.preset)
    else:
        config = official_model_config(args.official_config)
    stats = read_stats(args.stats) if args.stats else None
    prompt_ids = parse_prompt_ids(args.prompt_ids) if args.prompt_ids else None
    if args.tokenizer:
        from model.prompt import prompt_ids_for_config

        prompt_ids = prompt_ids_for_config(args.tokenizer, config)
    result = convert_official(args.official, config, args.out, dtype=args.dtype, stats=stats, prompt_ids=prompt_ids,
                              shrink_text_embedding=args.shrink_text_embedding)
    r = result.report
    print(f"converted {args.official} -> {result.out_dir}")
    print(f"  architecture: {result.config.name} (camera router {'on' if result.config.use_camera_router else 'off'}, "
          f"action MoE {'on' if result.config.use_action_moe else 'off'}, max_seq_len {result.config.max_seq_len})")
    print(f"  keys loaded: {r.loaded_keys} (source dtypes {', '.join(r.source_dtypes)}); tied proprio->action pairs: {len(r.tied_pairs)}")
    print(f"  dropped known keys: {', '.join(r.dropped_keys) if r.dropped_keys else 'none'}")
    print(f"  parameters: {r.num_parameters:,} unique; stored as {dtype_name(result.dtype)}; {result.bytes_on_disk / 2**20:.2f} MiB on disk")
    if result.meta:
        print(f"  checkpoint meta: {json.dumps({k: v for k, v in result.meta.items() if isinstance(v, (int, float, str, type(None)))})}")
    return 0
