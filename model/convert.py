"""`drivemoe convert`: an authors' checkpoint (.pt) -> our folder (model.safetensors + config.json).

    drivemoe convert --official CKPT.pt (--preset NAME | --official-config CFG.yaml|json)
                     [--stats STATS.json] [--dtype float32|bfloat16] [--prompt-ids 2,17,...] --out DIR
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from model.checkpoints import LoadReport, build_model, dtype_name, load_into_model, load_official_checkpoint, parse_dtype, save_pretrained
from model.config import ModelConfig
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
    text = path.read_text(encoding="utf-8")
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


def read_stats(path: str | Path) -> NormalizationStats:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
                     shrink_text_embedding: bool = False) -> ConversionResult:
    """Convert; `prompt_ids` (e.g. from model/prompt.py's tokenizer) are stored in config.json.

    `shrink_text_embedding` keeps only the embedding rows of the prompt, pad and image tokens
    (ids remapped in the stored config; predictions unchanged); it needs prompt ids."""
    target = parse_dtype(dtype) or torch.float32
    if stats is not None:
        config = replace(config, stats=stats)
    if prompt_ids is not None:
        config = replace(config, sequence=replace(config.sequence, prompt_token_ids=tuple(int(i) for i in prompt_ids)))
    state, meta = load_official_checkpoint(official)
    model = build_model(config, device="cpu", dtype=target)
    report = load_into_model(model, state, source=str(official))
    if shrink_text_embedding:
        from model.prompt import shrink_model_text_embeddings

        model, config = shrink_model_text_embeddings(model, config)
    out = save_pretrained(model, config, out_dir, dtype=target, extra={"official_checkpoint": Path(official).name,
                                                                         **{k: v for k, v in meta.items() if isinstance(v, (int, float, str))}})
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return ConversionResult(out_dir=out, config=config, report=report, dtype=target, meta=meta, bytes_on_disk=size)


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
        cfg_path = Path(args.official_config)
        name = cfg_path.parent.name if cfg_path.stem == "config" else cfg_path.stem
        config = ModelConfig.from_official(read_official_config(cfg_path), name=name)
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
