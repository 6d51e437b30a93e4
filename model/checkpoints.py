"""Checkpoints: reading the authors' torch.save files safely, and our safetensors + config.json folder.

The authors' file is a dict whose `model` holds the state_dict of a torch.compile'd module (keys
prefixed `_orig_mod.`), with the ego-state/action weights tied (stored under both names) and the focal
class-weight buffers `criterion.*.alpha` (recomputed from the config here, so dropped). Our folder is
`model.safetensors` (each tied tensor stored once) + `config.json` (architecture, normalisation
statistics, prompt token ids, dtype, the tied names).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench2drive_eval.jsonio import read_text_file
from model.config import ModelConfig
from model.drivemoe import DriveMoE
from model.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "drivemoe-model/1"
COMPILE_PREFIX = "_orig_mod."
KNOWN_DROPPED_PREFIXES = ("criterion.",)  # focal-loss alpha buffers; recomputed from LossConfig
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


@dataclass
class LoadReport:
    """What mapping a state_dict onto the model did."""

    loaded_keys: int
    dropped_keys: list[str] = field(default_factory=list)
    tied_pairs: list[tuple[str, str]] = field(default_factory=list)
    num_parameters: int = 0  # unique parameters after tying
    source_dtypes: list[str] = field(default_factory=list)


def _progress(items: dict[str, torch.Tensor], what: str):
    """tqdm over a state_dict's items, shown only for large (paper-scale) models."""
    large = sum(t.numel() for t in items.values()) > 100_000_000
    return tqdm(items.items(), desc=what, unit="tensor", disable=not large)


def load_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch.load(weights_only=True) an authors' checkpoint -> (state_dict without `_orig_mod.`, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # truncated zip, foreign pickle, ... : one clear line
        raise CheckpointError(f"cannot read official checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        state = data["model"]
        meta = {k: v for k, v in data.items() if k != "model" and not k.endswith(("optimizer", "lr_scheduler"))}
    elif isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        state, meta = data, {}
    else:
        raise CheckpointError(f"{path}: expected the authors' checkpoint dict with a 'model' state_dict, got keys {list(data)[:8] if isinstance(data, dict) else type(data).__name__}")
    stripped = {(k[len(COMPILE_PREFIX):] if k.startswith(COMPILE_PREFIX) else k): v for k, v in state.items()}
    return stripped, meta


def _check_against_model(model: DriveMoE, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Every model key present with its shape, no unknown key; the error names keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    for key in sorted(set(expected) & set(shapes)):
        if tuple(expected[key].shape) != tuple(shapes[key]):
            problems.append(f"shape mismatch for {key}: config {model.config.name!r} expects {tuple(expected[key].shape)}, checkpoint has {tuple(shapes[key])}")
            break
    if problems:
        raise CheckpointError(f"{source} does not match model config {model.config.name!r}: " + "; ".join(problems))


def load_into_model(model: DriveMoE, state: dict[str, torch.Tensor], source: str = "checkpoint") -> LoadReport:
    """Copy an official-named state_dict into `model` (cast to the model's dtype), checking every key.

    Tied proprio/action pairs must hold equal values (the authors' training ties them); a pair given
    under one name only is filled from the other.
    """
    state = dict(state)
    dropped = sorted(k for k in state if k.startswith(KNOWN_DROPPED_PREFIXES))
    for key in dropped:
        del state[key]
    pairs = model.joint_model.tied_parameter_names()
    for proprio_key, action_key in pairs:
        if action_key in state and proprio_key not in state:
            state[proprio_key] = state[action_key]
        elif proprio_key in state and action_key not in state:
            state[action_key] = state[proprio_key]
    _check_against_model(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    for proprio_key, action_key in pairs:
        if not torch.equal(state[proprio_key], state[action_key]):
            raise CheckpointError(f"{source}: {proprio_key} differs from {action_key}, but this architecture ties them")
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    aliases = {proprio for proprio, _ in pairs}
    with torch.no_grad():  # tensor by tensor, casting on the fly: no second full copy of the weights
        for key, tensor in _progress(model.state_dict(), "loading weights"):
            if key not in aliases:  # tied names share storage with their action twin
                tensor.copy_(state[key])
    unique = sum(p.numel() for p in model.parameters())  # parameters() yields shared tensors once
    return LoadReport(loaded_keys=len(state), dropped_keys=dropped, tied_pairs=pairs, num_parameters=unique, source_dtypes=dtypes)


def build_model(config: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> DriveMoE:
    """A model with uninitialised storage on `device` (built on the meta device: cheap at paper scale)."""
    with torch.device("meta"):
        model = DriveMoE(config, dtype=dtype)
    return model.to_empty(device=device)


def save_pretrained(model: DriveMoE, config: ModelConfig, directory: str | os.PathLike, dtype: torch.dtype | str | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write directory/model.safetensors (tied tensors once) and directory/config.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(dtype) or model.dtype
    pairs = model.joint_model.tied_parameter_names()
    tied_aliases = {proprio for proprio, _ in pairs}
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items() if k not in tied_aliases}
    weights_tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": FORMAT})
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    payload = {"format": FORMAT, "dtype": dtype_name(dtype), "tied_weights": [list(p) for p in pairs], "model": config.to_dict()}
    if extra:
        payload["source"] = extra
    config_tmp = directory / (CONFIG_FILE + ".tmp")
    config_tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(config_tmp, directory / CONFIG_FILE)
    return directory


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the whole config.json) of a converted folder."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"model folder {directory}: {CONFIG_FILE} not found")
    try:
        payload = json.loads(read_text_file(path, CheckpointError))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"{path}: not a {FORMAT} config (missing 'format'/'model')")
    try:
        config = ModelConfig.from_dict(payload["model"], source=str(path))
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return config, payload


def load_pretrained(directory: str | os.PathLike, device: torch.device | str = "cpu",
                    dtype: torch.dtype | str | None = None) -> tuple[DriveMoE, ModelConfig]:
    """Load a converted folder. dtype None keeps the stored dtype. Errors name the file / key / shapes."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    config, payload = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"model folder {directory}: {WEIGHTS_FILE} not found")
    target = parse_dtype(dtype) or parse_dtype(payload.get("dtype", "float32"))
    model = build_model(config, device=device, dtype=target)
    pairs = model.joint_model.tied_parameter_names()
    aliases = {proprio for proprio, _ in pairs}
    try:
        # one tensor at a time from the file into the model: peak memory ~ the model plus one tensor
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            stored = set(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in stored}
            for proprio_key, action_key in pairs:
                if action_key in shapes and proprio_key not in shapes:
                    shapes[proprio_key] = shapes[action_key]
            _check_against_model(model, shapes, str(weights))
            with torch.no_grad():
                for key, tensor in _progress(model.state_dict(), f"loading {weights.name}"):
                    if key not in aliases or key in stored:
                        tensor.copy_(f.get_tensor(key))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"cannot read {weights}: {error}") from None
    model.eval()
    return model, config
