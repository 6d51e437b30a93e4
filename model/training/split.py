"""Which clips are held out for validation.

Two rules:
* `authors-list`: the DriveMoE authors' fixed list of 50 Bench2Drive-Base clips
  (model/training/data/authors_val_list.txt), so validation numbers compare with the paper's;
* `hash`: the `round(fraction × clips)` clips with the smallest SHA-1 of their name, for other data.
`auto` (the default) takes the authors' list when at least one of its clips is present.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

AUTHORS_LIST = "authors-list"
HASH = "hash"
AUTO = "auto"
SPLIT_RULES: tuple[str, ...] = (AUTO, AUTHORS_LIST, HASH)
AUTHORS_VAL_LIST_FILE = Path(__file__).with_name("data") / "authors_val_list.txt"


@lru_cache(maxsize=1)
def authors_validation_list() -> frozenset[str]:
    """The authors' 50 validation clip names (a data file shipped with the package)."""
    lines = AUTHORS_VAL_LIST_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def clip_folder_name(relative: str) -> str:
    """The clip's own folder name (the authors match only that, not the parent folders)."""
    return relative.rstrip("/").split("/")[-1]


def hash_validation_clips(clips: list[str], fraction: float) -> set[str]:
    """A fixed, order-independent choice: the clips with the smallest sha1 of their name."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    count = int(round(fraction * len(clips)))
    if fraction > 0 and len(clips) > 1:
        count = max(count, 1)
    ranked = sorted(clips, key=lambda name: hashlib.sha1(name.encode("utf-8")).hexdigest())
    return set(ranked[:count])


def resolve_split_rule(rule: str, clips: list[str]) -> str:
    """`auto` -> `authors-list` when one of the authors' validation clips is among `clips`, else `hash`."""
    if rule not in SPLIT_RULES:
        raise ValueError(f"validation split {rule!r} is not one of {SPLIT_RULES}")
    if rule != AUTO:
        return rule
    names = authors_validation_list()
    return AUTHORS_LIST if any(clip_folder_name(c) in names for c in clips) else HASH


def validation_clips(clips: list[str], rule: str, fraction: float) -> set[str]:
    """The held-out clips under a resolved rule (`authors-list` or `hash`)."""
    if rule == AUTHORS_LIST:
        names = authors_validation_list()
        return {c for c in clips if clip_folder_name(c) in names}
    if rule == HASH:
        return hash_validation_clips(clips, fraction)
    raise ValueError(f"validation split {rule!r} must be resolved to {AUTHORS_LIST!r} or {HASH!r} first")
