"""Import a Hugging Face PaliGemma checkpoint folder (safetensors) into the network, for training from scratch.

Mapping (the authors' `load_pretrained_weights`, README section 6):

    language_model.model.embed_tokens.*  -> embed_tokens.*
    vision_tower.vision_model.*          -> vision_tower.vision_model.*
    multi_modal_projector.*              -> multi_modal_projector.*
    language_model.model.layers.*        -> joint_model.mixtures.vlm.layers.*

Key spellings differ between writers: the Hub files and transformers 4.x use the names above;
transformers >= 4.52 may prefix `model.` (`model.language_model.layers.*`, `model.vision_tower.*`);
transformers 5.24's `save_pretrained` writes `vision_tower.embeddings.*` (no `vision_model.`) and
`language_model.model.*`. All are accepted. Gemma's final `norm`, the `lm_head` (tied to the
embeddings) and SigLIP's pooling `head` have no counterpart here and are reported as ignored.
Everything else of ours (action/proprio streams, encoders, routers) is reported as not pretrained.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from model.errors import CheckpointError

# Prefixes of our state dict that PaliGemma provides.
PRETRAINED_PREFIXES: tuple[str, ...] = (
    "embed_tokens.",
    "vision_tower.",
    "multi_modal_projector.",
    "joint_model.mixtures.vlm.",
)
_IGNORED = re.compile(r"^(lm_head\.|language_model\.norm\.|vision_tower\.head\.)")


@dataclass(frozen=True)
class PaliGemmaImportReport:
    """Which of our parameters were filled, and which HF keys were not used."""

    loaded: tuple[str, ...]  # our key names that received a PaliGemma tensor
    missing: tuple[str, ...]  # our pretrained-part keys (see PRETRAINED_PREFIXES) that got nothing
    not_pretrained: tuple[str, ...]  # our keys outside the pretrained parts (trained from scratch)
    ignored: tuple[str, ...]  # HF keys with no counterpart by design (final norm, lm_head, pooling head)
    unexpected: tuple[str, ...]  # HF keys we could not map at all

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}; ignored {len(self.ignored)} "
            f"({', '.join(self.ignored[:3])}{'...' if len(self.ignored) > 3 else ''}); unexpected "
            f"{len(self.unexpected)}; {len(self.not_pretrained)} tensors of ours are not pretrained"
        )


def canonical_hf_key(key: str) -> str:
    """Bring the HF spellings to one form: `language_model.*`, `vision_tower.*`, `multi_modal_projector.*`."""
    if key.startswith("model.") and not key.startswith("model.model."):
        key = key[len("model.") :]
    if key.startswith("language_model.model."):
        key = "language_model." + key[len("language_model.model.") :]
    elif key.startswith("language_model.lm_head."):
        key = "lm_head." + key[len("language_model.lm_head.") :]
    if key.startswith("vision_tower.vision_model."):
        key = "vision_tower." + key[len("vision_tower.vision_model.") :]
    return key


def our_key_of(hf_key: str) -> str | None:
    """Our state-dict key for a HF PaliGemma key, or None when it has no counterpart."""
    key = canonical_hf_key(hf_key)
    if _IGNORED.match(key):
        return None
    if key.startswith("language_model.embed_tokens."):
        return "embed_tokens." + key[len("language_model.embed_tokens.") :]
    if key.startswith("language_model.layers."):
        return "joint_model.mixtures.vlm.layers." + key[len("language_model.layers.") :]
    if key.startswith("vision_tower."):
        return "vision_tower.vision_model." + key[len("vision_tower.") :]
    if key.startswith("multi_modal_projector."):
        return key
    return None


def safetensors_files(hf_dir: Path) -> list[Path]:
    """The weight files of a HF folder: the shards named by the index file, or every *.safetensors."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise CheckpointError(f"{index}: not a safetensors index ({error})") from None
        return [hf_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {hf_dir} (a transformers PaliGemma folder is expected)")
    return files


def load_paligemma_weights(model: nn.Module, hf_dir: str | Path) -> PaliGemmaImportReport:
    """Copy PaliGemma's vision tower, projector, token embeddings and Gemma layers into `model`.

    Tensors are read one at a time (safetensors memory-mapping), cast to the target parameter's dtype
    and copied in place, so a 3B checkpoint never needs two full copies in memory. A shape mismatch
    raises CheckpointError naming both keys and shapes.
    """
    folder = Path(hf_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"PaliGemma folder not found: {folder}")
    ours = model.state_dict(keep_vars=True)
    loaded: list[str] = []
    ignored: list[str] = []
    unexpected: list[str] = []
    files = safetensors_files(folder)
    with torch.no_grad():
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in the index is missing")
            with safe_open(str(path), framework="pt") as handle:
                for hf_key in tqdm(list(handle.keys()), desc=f"import {path.name}", leave=False):
                    target = our_key_of(hf_key)
                    if target is None:
                        (ignored if _IGNORED.match(canonical_hf_key(hf_key)) else unexpected).append(hf_key)
                        continue
                    if target not in ours:
                        unexpected.append(hf_key)
                        continue
                    tensor = handle.get_tensor(hf_key)
                    destination = ours[target]
                    if tuple(tensor.shape) != tuple(destination.shape):
                        raise CheckpointError(
                            f"{path.name}: {hf_key} has shape {tuple(tensor.shape)} but our {target} has shape "
                            f"{tuple(destination.shape)} (does the model config match this PaliGemma?)"
                        )
                    destination.copy_(tensor.to(dtype=destination.dtype))
                    loaded.append(target)
    loaded_set = set(loaded)
    pretrained = [k for k in ours if k.startswith(PRETRAINED_PREFIXES)]
    return PaliGemmaImportReport(
        loaded=tuple(loaded),
        missing=tuple(k for k in pretrained if k not in loaded_set),
        not_pretrained=tuple(k for k in ours if not k.startswith(PRETRAINED_PREFIXES)),
        ignored=tuple(ignored),
        unexpected=tuple(unexpected),
    )
