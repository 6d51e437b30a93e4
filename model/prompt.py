"""The PaliGemma prompt: its token layout, its ids from a tokenizer folder, and text-embedding shrinking.

Layout of one sample's `input_ids` (length `max_seq_len`, the model's L):

    <image> x num_image_tokens, then the prompt ids ("<bos>predict trajectory\\n"), then pad ids (0)

The attention mask is 1 on every non-pad token (image tokens included). No automatic BOS/EOS is
added: the "<bos>" is part of the prompt text, as in the authors' processor. The real ids come from
the PaliGemma tokenizer once, at conversion time, and are stored in the converted config, so
inference needs no tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np
import torch

if TYPE_CHECKING:
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE

PROMPT_TEXT = "predict trajectory"
IMAGE_TOKEN = "<image>"
BOS_TOKEN = "<bos>"
EMBED_TOKENS_KEY = "embed_tokens.weight"


@dataclass(frozen=True)
class TokenizerPrompt:
    """What conversion needs from a PaliGemma tokenizer: the prompt ids and the special ids."""

    prompt_ids: tuple[int, ...]  # "<bos>" + prompt + "\n", no image tokens, no padding
    image_token_id: int
    pad_token_id: int
    bos_token_id: int
    vocab_size: int


def prompt_string(num_image_tokens: int, prompt: str = PROMPT_TEXT) -> str:
    """The text the authors' processor tokenizes: image tokens, "<bos>", the prompt, a newline."""
    return IMAGE_TOKEN * num_image_tokens + BOS_TOKEN + prompt + "\n"


def build_prompt_tokens(
    prompt_ids: Iterable[int],
    num_image_tokens: int,
    max_seq_len: int,
    image_token_id: int,
    pad_token_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One sample's (input_ids, attention_mask), both int64 [max_seq_len], right-padded."""
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("prompt_ids is empty: expected the ids of '<bos>predict trajectory\\n'")
    if pad_token_id in ids or image_token_id in ids:
        raise ValueError(
            f"prompt_ids {ids} contain the pad id {pad_token_id} or the image token id {image_token_id}"
        )
    used = num_image_tokens + len(ids)
    if used > max_seq_len:
        # The authors' processor would silently truncate the prompt; a model that cannot hold its
        # own prompt is a configuration error.
        raise ValueError(
            f"{num_image_tokens} image tokens + {len(ids)} prompt ids = {used} exceed max_seq_len {max_seq_len}"
        )
    input_ids = np.full(max_seq_len, pad_token_id, dtype=np.int64)
    input_ids[:num_image_tokens] = image_token_id
    input_ids[num_image_tokens:used] = ids
    attention_mask = np.zeros(max_seq_len, dtype=np.int64)
    attention_mask[:used] = 1
    return input_ids, attention_mask


def read_tokenizer_prompt(tokenizer_dir: str | Path, prompt: str = PROMPT_TEXT) -> TokenizerPrompt:
    """Tokenize the prompt with a local PaliGemma tokenizer folder (never downloads)."""
    from transformers import AutoTokenizer  # imported here: only conversion needs transformers' tokenizers

    folder = Path(tokenizer_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a tokenizer from {folder}: {error}") from None
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    bos_token_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    unk = tokenizer.unk_token_id
    for token, token_id in ((IMAGE_TOKEN, image_token_id), (BOS_TOKEN, bos_token_id)):
        if token_id is None or (unk is not None and token_id == unk and token != tokenizer.unk_token):
            raise ValueError(f"tokenizer in {folder} has no {token!r} token (not a PaliGemma tokenizer?)")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {folder} has no pad token")
    # Tokenize with one image token in front, exactly as the processor sees the string, then drop it.
    ids = list(tokenizer(prompt_string(1, prompt), add_special_tokens=False)["input_ids"])
    if len(ids) < 3 or ids[0] != image_token_id or ids[1] != bos_token_id:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"tokenizer in {folder} does not split {IMAGE_TOKEN!r} and {BOS_TOKEN!r} as special tokens: {pieces}"
        )
    return TokenizerPrompt(
        prompt_ids=tuple(int(i) for i in ids[1:]),
        image_token_id=int(image_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        bos_token_id=int(bos_token_id),
        vocab_size=len(tokenizer),
    )


def prompt_token_ids_from_tokenizer(tokenizer_dir: str | Path) -> list[int]:
    """The ids of "<bos>predict trajectory\\n" from a PaliGemma tokenizer folder (local files only)."""
    return list(read_tokenizer_prompt(tokenizer_dir).prompt_ids)


def prompt_ids_for_config(tokenizer_dir: str | Path, config: "ModelConfig") -> tuple[int, ...]:
    """Prompt ids from a tokenizer folder, checked against the model's vocabulary (for `convert --tokenizer`)."""
    info = read_tokenizer_prompt(tokenizer_dir)
    seq = config.sequence
    problems = []
    if info.image_token_id != seq.image_token_id:
        problems.append(f"<image> is id {info.image_token_id} in the tokenizer but {seq.image_token_id} in the model")
    if info.pad_token_id != seq.pad_token_id:
        problems.append(f"<pad> is id {info.pad_token_id} in the tokenizer but {seq.pad_token_id} in the model")
    if info.vocab_size > seq.vocab_size:
        problems.append(f"the tokenizer has {info.vocab_size} tokens, the model's embedding only {seq.vocab_size}")
    if len(info.prompt_ids) > seq.text_slots:
        problems.append(f"the prompt has {len(info.prompt_ids)} ids but the model has {seq.text_slots} text slots")
    if problems:
        raise ValueError(f"tokenizer {tokenizer_dir} does not match model config {config.name!r}: " + "; ".join(problems))
    return info.prompt_ids


@dataclass(frozen=True)
class ShrunkVocabulary:
    """Result of `shrink_embedding_rows`: the old id of each kept row, and the old -> new id map."""

    kept_ids: tuple[int, ...]  # ascending; new id i is old id kept_ids[i]

    def new_id(self, old_id: int) -> int:
        try:
            return self.kept_ids.index(int(old_id))
        except ValueError:
            raise ValueError(f"token id {old_id} was dropped from the shrunk text embedding") from None


def shrink_embedding_rows(
    state_dict: Mapping[str, torch.Tensor], keep_ids: Iterable[int], key: str = EMBED_TOKENS_KEY
) -> tuple[dict[str, torch.Tensor], ShrunkVocabulary]:
    """Keep only the embedding rows in `keep_ids` (ascending order); all other tensors are untouched."""
    if key not in state_dict:
        raise ValueError(f"state dict has no {key!r}: cannot shrink the text embedding")
    weight = state_dict[key]
    kept = tuple(sorted({int(i) for i in keep_ids}))
    bad = [i for i in kept if not 0 <= i < weight.shape[0]]
    if bad:
        raise ValueError(f"token ids {bad} are outside the embedding of {weight.shape[0]} rows")
    shrunk = dict(state_dict)
    shrunk[key] = weight[list(kept)].clone()
    return shrunk, ShrunkVocabulary(kept_ids=kept)


def embedding_bytes_saved(vocab_size: int, width: int, kept_rows: int, bytes_per_value: int) -> int:
    """Bytes saved by keeping `kept_rows` of a [vocab_size, width] embedding."""
    return (vocab_size - kept_rows) * width * bytes_per_value


def shrink_text_embeddings(
    state_dict: Mapping[str, torch.Tensor], config: "ModelConfig", keep_ids: Iterable[int] | None = None
) -> tuple[dict[str, torch.Tensor], "ModelConfig"]:
    """Drop text-embedding rows no prompt uses; returns the new state dict and the remapped config.

    `keep_ids` defaults to the config's prompt ids; the pad and image token ids are always kept. The
    returned config has the smaller vocabulary and every id (pad, image token, prompt) remapped, so
    a model built from it gives the same outputs for these prompts. At paper scale the embedding is
    257216 x 2048: 1.05 GB in bf16 (2.1 GB in fp32), of which a few kB remain.
    """
    seq = config.sequence
    ids = set(seq.prompt_token_ids or ()) if keep_ids is None else {int(i) for i in keep_ids}
    if not ids:
        raise ValueError("shrink_text_embeddings: no prompt ids to keep (the config has no prompt_token_ids)")
    ids |= {seq.pad_token_id, seq.image_token_id}
    shrunk, vocab = shrink_embedding_rows(state_dict, ids)
    new_sequence = replace(
        seq,
        vocab_size=len(vocab.kept_ids),
        image_token_id=vocab.new_id(seq.image_token_id),
        pad_token_id=vocab.new_id(seq.pad_token_id),
        prompt_token_ids=None if seq.prompt_token_ids is None else tuple(vocab.new_id(i) for i in seq.prompt_token_ids),
    )
    return shrunk, replace(config, sequence=new_sequence)


def shrink_model_text_embeddings(
    model: "DriveMoE", config: "ModelConfig", keep_ids: Iterable[int] | None = None
) -> tuple["DriveMoE", "ModelConfig"]:
    """A new model (same device/dtype) with the shrunk text embedding; see `shrink_text_embeddings`."""
    from model.checkpoints import build_model, load_into_model

    state, new_config = shrink_text_embeddings(model.state_dict(), config, keep_ids)
    shrunk = build_model(new_config, device=model.device, dtype=model.dtype)
    load_into_model(shrunk, state, source="shrunk text embedding")
    return shrunk.train(model.training), new_config
