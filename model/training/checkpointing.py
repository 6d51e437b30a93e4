"""Resume-exact training checkpoints, and the final export the agent loads.

A training checkpoint (`<out>/checkpoints/step_<N>.pt`, written atomically) holds the model
weights, both optimisers, both schedulers, the loop position (optimiser step, epoch, micro-batches
consumed in the epoch) and every RNG state (python, numpy, torch CPU, torch CUDA). It contains
only tensors and plain containers, so it loads with `torch.load(weights_only=True)`. The final
model is exported with model-core's `save_pretrained` (safetensors + config.json).
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")


@dataclass(frozen=True)
class LoopPosition:
    """Where the training loop stands: optimiser steps done, current epoch, micro-batches of it consumed."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def capture_rng_state() -> dict[str, Any]:
    """All RNG states as tensors / plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate needs tuples
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: Path) -> list[Path]:
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP_FILE.match(p.name))


def save_training_checkpoint(
    out_dir: Path,
    position: LoopPosition,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    rng_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write one checkpoint atomically and delete all but the newest `keep_last`."""
    path = checkpoint_path(out_dir, position.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "drivemoe-training-checkpoint-v1",
        "position": {"step": position.step, "epoch": position.epoch, "batches_in_epoch": position.batches_in_epoch},
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
        "rng": rng_state,
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(out_dir)[: -max(1, keep_last)]:
        old.unlink()
    return path


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by save_training_checkpoint; CheckpointError names the file."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"training checkpoint {path} not found") from None
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"training checkpoint {path} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != "drivemoe-training-checkpoint-v1":
        raise CheckpointError(f"{path} is not a drivemoe training checkpoint")
    return payload


def apply_training_checkpoint(
    payload: dict[str, Any],
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    source: str,
) -> LoopPosition:
    """Load model, optimiser and scheduler states (strictly) and return the loop position.
    RNG states are restored separately, by the caller, at the right moment of the loop."""
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: model weights do not match this configuration ({error})") from None
    for name, optimizer in optimizers.items():
        if name not in payload["optimizers"]:
            raise CheckpointError(f"{source}: no state for optimiser {name!r}")
        optimizer.load_state_dict(payload["optimizers"][name])
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(payload["schedulers"][name])
    p = payload["position"]
    return LoopPosition(step=int(p["step"]), epoch=int(p["epoch"]), batches_in_epoch=int(p["batches_in_epoch"]))


def export_final(model: torch.nn.Module, out_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the agent-loadable model folder `<out>/final` (safetensors + config.json, float32) with
    model-core's save_pretrained; the config carries the normalisation statistics used in training."""
    from model.checkpoints import save_pretrained  # model-core's single definition of the format

    target = Path(out_dir) / "final"
    save_pretrained(model, model.config, target, dtype=torch.float32, extra=extra)
    return target
