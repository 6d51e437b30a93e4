"""The training-window index written by `drivemoe prepare-data` and read by the dataset.

An index folder holds:
    index.json        format version, window geometry, the clips (relative paths), split sizes
    windows.npz       one row per window (arrays below), uncompressed so it memory-maps fast
    statistics.json   normalisation statistics of the training split (authors' layout)
    report.json       clips skipped and why, windows dropped and why
    clips/            per-clip partial results, so an interrupted run continues where it stopped

Window arrays (N rows): clip (int32, into `clips`), frame (int32, the current 10 Hz frame t),
ego_state (float32 [N, 5, 10], raw units, steps t-4 .. t, frame 0 repeated before the clip
start), actions (float32 [N, 10, 2], metres, ego frame of t, frames t .. t+9 so row 0 is the
origin), camera (int8, router class 0-4), skill (int8, 0-6), split (int8, 0 train / 1 validation).
The images of a window are front t, front t-1 (frame 0 again at t = 0) and the other cameras at t,
read from the clip. model/training/windows.py defines which frames form the windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench2drive_eval.jsonio import read_json, write_json_atomic

INDEX_FORMAT_VERSION = 1
COND_STEPS = 5
HORIZON_STEPS = 10
DATASET_HZ = 10
TRAIN, VALIDATION = 0, 1
WINDOW_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "clip": ("int32", ()),
    "frame": ("int32", ()),
    "ego_state": ("float32", (COND_STEPS, 10)),
    "actions": ("float32", (HORIZON_STEPS, 2)),
    "camera": ("int8", ()),
    "skill": ("int8", ()),
    "split": ("int8", ()),
}


@dataclass(frozen=True)
class WindowIndex:
    """An index loaded in memory; `root` is the Bench2Drive folder the clip paths are relative to."""

    root: Path
    clips: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    directory: Path
    meta: dict = field(default_factory=dict)  # index.json as written by prepare-data

    @property
    def has_camera_labels(self) -> bool:
        return bool((self.meta.get("settings") or {}).get("camera_labels"))

    def __len__(self) -> int:
        return int(self.arrays["frame"].shape[0])

    def rows(self, split: int) -> np.ndarray:
        """Row numbers of one split (TRAIN or VALIDATION), ascending."""
        return np.flatnonzero(self.arrays["split"] == split)

    def clip_dir(self, row: int) -> Path:
        return self.root / self.clips[int(self.arrays["clip"][row])]

    @property
    def statistics_path(self) -> Path:
        return self.directory / "statistics.json"


def check_window_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Raise ValueError naming `where` and the array when shapes or dtypes are not the format's."""
    n = None
    for name, (dtype, tail) in WINDOW_ARRAYS.items():
        if name not in arrays:
            raise ValueError(f"{where}: array {name!r} missing")
        value = arrays[name]
        if value.dtype != np.dtype(dtype) or tuple(value.shape[1:]) != tail:
            raise ValueError(f"{where}: array {name!r} has dtype {value.dtype} shape {value.shape}, expected {dtype} [N, {tail}]")
        if n is None:
            n = value.shape[0]
        elif value.shape[0] != n:
            raise ValueError(f"{where}: array {name!r} has {value.shape[0]} rows, others have {n}")


def write_index(directory: Path, root: Path, clips: list[str], arrays: dict[str, np.ndarray], meta: dict) -> None:
    directory = Path(directory)
    check_window_arrays(arrays, str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "windows.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(directory / "windows.npz")
    write_json_atomic(
        directory / "index.json",
        {
            "format_version": INDEX_FORMAT_VERSION,
            "root": str(Path(root).resolve()),
            "cond_steps": COND_STEPS,
            "horizon_steps": HORIZON_STEPS,
            "hz": DATASET_HZ,
            "clips": list(clips),
            "num_windows": int(arrays["frame"].shape[0]),
            "num_train": int(np.sum(arrays["split"] == TRAIN)),
            "num_validation": int(np.sum(arrays["split"] == VALIDATION)),
            **meta,
        },
    )


def read_index(directory: Path, root: Path | None = None) -> WindowIndex:
    """Load an index folder; `root` overrides the dataset location recorded in it."""
    directory = Path(directory)
    meta = read_json(directory / "index.json")
    if not isinstance(meta, dict) or meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise ValueError(
            f"{directory / 'index.json'}: format_version {meta.get('format_version') if isinstance(meta, dict) else None!r}"
            f" is not {INDEX_FORMAT_VERSION}; rerun `drivemoe prepare-data`"
        )
    path = directory / "windows.npz"
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: window file missing; rerun `drivemoe prepare-data`") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable window file ({error}); rerun `drivemoe prepare-data`") from None
    check_window_arrays(arrays, str(path))
    clips = tuple(meta["clips"])
    if len(arrays["clip"]) and int(arrays["clip"].max()) >= len(clips):
        raise ValueError(f"{path}: clip ids exceed the {len(clips)} clips listed in index.json")
    return WindowIndex(root=Path(root or meta["root"]), clips=clips, arrays=arrays, directory=directory, meta=meta)
