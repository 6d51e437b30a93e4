"""`drivemoe prepare-data`: walk Bench2Drive clips once and write the training-window index.

Per clip: check the frames (no gaps, readable annotations, all six JPEGs present and complete),
build the windows of the authors' geometry (model/training/windows.py: N - 10 per clip, history
padded with frame 0), compute the ego-state history with the agent's own definition
(model.ego_state), attach the camera label (NULL -> CAM_BACK) and the skill label. A window whose
frames hold a missing / None / NaN value is skipped and named (clip, frame, field); broken clips
are reported by name and skipped. Each finished clip is saved under <out>/clips/, so a rerun
continues where it stopped. Finally the validation clips are chosen (model/training/split.py), the
statistics of the training split are computed with the authors' percentile rule, and the index is
written. `--layout authors` reproduces the authors' pipeline (see docs/training.md for the list).
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench2drive_eval.jsonio import read_json, write_json_atomic
from model.dataset.b2d_clip import ANNO_FOLDER, CAMERA_NAMES, B2DClip, ClipError
from model.errors import DriveMoEError
from model.skills import scenario_of_clip_name
from model.training.index import COND_STEPS, HORIZON_STEPS, TRAIN, VALIDATION, write_index
from model.training.labels import (
    LabelError,
    check_labels_cover_clip,
    label_file,
    read_camera_labels,
    read_scenario_labels,
    skill_of_frame_annotation,
)
from model.training.split import AUTHORS_LIST, AUTO, SPLIT_RULES, resolve_split_rule, validation_clips
from model.training.statistics import compute_statistics, write_statistics
from model.training.windows import (
    AUTHORS_LAYOUT,
    DEFAULT_LAYOUT,
    LAYOUTS,
    MIN_FRAMES,
    build_window,
    read_frame,
    window_problem,
    window_starts,
)

CLIP_RESULTS = "clips"
SETTINGS_FILE = "settings.json"
DROP_REASONS: tuple[str, ...] = ("no_camera_label", "no_scenario_label", "bad_value")


@dataclass(frozen=True)
class PrepareSettings:
    """What determines the per-clip results; a rerun must use the same settings."""

    root: str
    camera_labels: str | None
    scenario_labels: str | None
    val_fraction: float = 0.05
    check_images: bool = True
    layout: str = DEFAULT_LAYOUT
    val_split: str = AUTO


def discover_clips(root: Path) -> list[str]:
    """Clip folders (containing anno/) under root, at depth 1 or 2, as sorted relative paths."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Bench2Drive root {root} is not a directory")
    found = []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        if (child / ANNO_FOLDER).is_dir():
            found.append(child.name)
            continue
        for grandchild in sorted(child.iterdir()):
            if grandchild.is_dir() and (grandchild / ANNO_FOLDER).is_dir():
                found.append(f"{child.name}/{grandchild.name}")
    return found


def _labels_of_clip(settings: PrepareSettings, clip: B2DClip) -> tuple[dict | None, dict | None]:
    """(camera labels, scenario labels) of a clip; None where the folder is not given or (scenario,
    default layout) the clip has no file. The authors' layout skips a clip whose files are missing or
    do not cover every frame, as their generate_action.py does."""
    authors = settings.layout == AUTHORS_LAYOUT
    camera = None
    if settings.camera_labels is not None:
        path = label_file(Path(settings.camera_labels), clip.name)
        camera = read_camera_labels(path)
        if authors:
            check_labels_cover_clip(path, camera, clip.frame_indices)
    scenario = None
    if settings.scenario_labels is not None:
        path = label_file(Path(settings.scenario_labels), clip.name)
        if path.exists() or authors:
            scenario = read_scenario_labels(path)
            if authors:
                check_labels_cover_clip(path, scenario, clip.frame_indices)
    return camera, scenario


def process_clip(root: Path, relative: str, settings: PrepareSettings) -> dict:
    """Windows of one clip as arrays plus counts; raises ClipError / LabelError when it must be skipped."""
    clip = B2DClip(Path(root) / relative)
    frames = clip.frame_indices
    if len(frames) < MIN_FRAMES:
        raise ClipError(f"clip {clip.name}: only {len(frames)} frames, a window needs {MIN_FRAMES}")
    gaps = clip.missing_frames()
    if gaps:
        shown = gaps[:10]
        raise ClipError(f"clip {clip.name}: missing frames {shown}{' ...' if len(gaps) > 10 else ''}")
    annotations = [clip.annotation(i) for i in frames]
    values = [read_frame(a) for a in annotations]
    if settings.check_images:
        for i in frames:
            for camera in CAMERA_NAMES:
                clip.check_image(camera, i)
    camera_labels, scenario_labels = _labels_of_clip(settings, clip)
    # Base naming <Scenario>_<Town>_Route<id>_Weather<id>; the upstream docs' nested naming
    # <scenario>/<Town>_weather<id>_route<id> carries the scenario in the parent folder.
    scenario_type = None
    if scenario_labels is None:
        scenario_type = relative.split("/")[0] if "/" in relative else scenario_of_clip_name(clip.name)
    out = {"frame": [], "ego_state": [], "actions": [], "camera": [], "skill": []}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    problems = []
    for position in window_starts(len(frames)):
        frame = frames[position]
        if camera_labels is not None and frame not in camera_labels:
            dropped["no_camera_label"] += 1
            continue
        if scenario_labels is not None:
            if frame not in scenario_labels:
                dropped["no_scenario_label"] += 1
                continue
            skill = int(scenario_labels[frame])
        else:
            skill = int(skill_of_frame_annotation(scenario_type, annotations[position]))
        problem = window_problem(values, frames, position)
        if problem is not None:
            dropped["bad_value"] += 1
            problems.append(f"clip {clip.name} window t={frame}: {problem}")
            continue
        ego, actions = build_window(values, position, settings.layout)
        out["frame"].append(frame)
        out["ego_state"].append(ego)
        out["actions"].append(actions)
        out["camera"].append(camera_labels[frame] if camera_labels is not None else 2)
        out["skill"].append(skill)
    return {
        "frame": np.asarray(out["frame"], dtype=np.int32),
        "ego_state": np.asarray(out["ego_state"], dtype=np.float32).reshape(-1, COND_STEPS, 10),
        "actions": np.asarray(out["actions"], dtype=np.float32).reshape(-1, HORIZON_STEPS, 2),
        "camera": np.asarray(out["camera"], dtype=np.int8),
        "skill": np.asarray(out["skill"], dtype=np.int8),
        "dropped": dropped,
        "problems": problems,
    }


def _result_stem(out_dir: Path, relative: str) -> Path:
    return out_dir / CLIP_RESULTS / relative.replace("/", "__")


def _process_and_store(args: tuple[Path, str, PrepareSettings, Path]) -> tuple[str, str | None]:
    root, relative, settings, out_dir = args
    stem = _result_stem(out_dir, relative)
    try:
        result = process_clip(root, relative, settings)
    except (ClipError, LabelError, ValueError) as error:
        write_json_atomic(stem.with_suffix(".failed.json"), {"clip": relative, "reason": str(error)})
        return relative, str(error)
    dropped = result.pop("dropped")
    problems = result.pop("problems")
    tmp = stem.with_suffix(".tmp.npz")
    np.savez(tmp, **result, dropped=np.array([dropped[k] for k in DROP_REASONS]), problems=np.array(problems, dtype=str))
    tmp.replace(stem.with_suffix(".npz"))
    failed = stem.with_suffix(".failed.json")
    if failed.exists():
        failed.unlink()
    return relative, None


def _check_settings(out_dir: Path, settings: PrepareSettings) -> None:
    path = out_dir / CLIP_RESULTS / SETTINGS_FILE
    if path.exists():
        previous = read_json(path)
        if previous != asdict(settings):
            raise DriveMoEError(
                f"{out_dir} holds partial results made with other settings ({previous}); "
                "use a new --out folder or pass --restart"
            )
    else:
        write_json_atomic(path, asdict(settings))


def check_settings(settings: PrepareSettings) -> None:
    """ValueError naming the setting when it cannot be used."""
    if settings.layout not in LAYOUTS:
        raise ValueError(f"--layout {settings.layout!r} is not one of {LAYOUTS}")
    if settings.val_split not in SPLIT_RULES:
        raise ValueError(f"--val-split {settings.val_split!r} is not one of {SPLIT_RULES}")
    if not 0.0 <= settings.val_fraction < 1.0:  # also rejects NaN
        raise ValueError(f"--val-fraction must be in [0, 1), got {settings.val_fraction}")


def split_rule(settings: PrepareSettings, clips: list[str]) -> str:
    """The validation rule used: the authors' list for --layout authors unless another is asked for."""
    if settings.layout == AUTHORS_LAYOUT and settings.val_split == AUTO:
        return AUTHORS_LIST
    return resolve_split_rule(settings.val_split, clips)


def prepare(
    root: Path, out_dir: Path, settings: PrepareSettings, workers: int = 1, retry_failed: bool = False, restart: bool = False
) -> dict:
    """Run the whole preparation; returns the report that is also written to <out>/report.json."""
    root, out_dir = Path(root), Path(out_dir)
    check_settings(settings)
    if settings.camera_labels is not None and not Path(settings.camera_labels).is_dir():
        raise FileNotFoundError(f"camera label folder {settings.camera_labels} is not a directory")
    if settings.scenario_labels is not None and not Path(settings.scenario_labels).is_dir():
        raise FileNotFoundError(f"scenario label folder {settings.scenario_labels} is not a directory")
    clips = discover_clips(root)
    if not clips:
        raise ValueError(f"no Bench2Drive clips (folders with anno/) under {root}")
    results_dir = out_dir / CLIP_RESULTS
    if restart and results_dir.exists():
        for path in results_dir.iterdir():
            path.unlink()
    results_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings)
    todo = []
    for relative in clips:
        stem = _result_stem(out_dir, relative)
        if stem.with_suffix(".npz").exists():
            continue
        if stem.with_suffix(".failed.json").exists() and not retry_failed:
            continue
        todo.append((root, relative, settings, out_dir))
    progress = tqdm(total=len(todo), desc="prepare-data", unit="clip", disable=not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for relative, error in pool.map(_process_and_store, todo, chunksize=1):
                progress.update(1)
                if error:
                    tqdm.write(f"skipped {relative}: {error}")
    else:
        for job in todo:
            relative, error = _process_and_store(job)
            progress.update(1)
            if error:
                tqdm.write(f"skipped {relative}: {error}")
    progress.close()
    return assemble(root, out_dir, clips, settings, resumed=len(clips) - len(todo))


def assemble(root: Path, out_dir: Path, clips: list[str], settings: PrepareSettings, resumed: int) -> dict:
    """Collect the per-clip results into the index, the split, the statistics and the report."""
    rule = split_rule(settings, clips)
    val = validation_clips(clips, rule, settings.val_fraction)
    kept: list[str] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("clip", "frame", "ego_state", "actions", "camera", "skill", "split")}
    skipped = {}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    bad_values: dict[str, list[str]] = {}
    for relative in clips:
        stem = _result_stem(out_dir, relative)
        if stem.with_suffix(".failed.json").exists():
            skipped[relative] = read_json(stem.with_suffix(".failed.json"))["reason"]
            continue
        with np.load(stem.with_suffix(".npz")) as data:
            n = int(data["frame"].shape[0])
            for k, reason in enumerate(DROP_REASONS):
                dropped[reason] += int(data["dropped"][k])
            problems = [str(p) for p in data["problems"]]
            if problems:
                bad_values[relative] = problems
            if n == 0:
                skipped[relative] = f"no usable window ({problems[0]})" if problems else "no window has labels"
                continue
            clip_id = len(kept)
            kept.append(relative)
            for key in ("frame", "ego_state", "actions", "camera", "skill"):
                parts[key].append(data[key])
        parts["clip"].append(np.full(n, clip_id, dtype=np.int32))
        parts["split"].append(np.full(n, VALIDATION if relative in val else TRAIN, dtype=np.int8))
    if not kept:
        raise ValueError(f"no usable clip under {root}: {len(skipped)} skipped (see {out_dir / 'report.json'})")
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    train = arrays["split"] == TRAIN
    if not np.any(train):
        raise ValueError(f"every usable clip went to validation ({len(kept)} clips); lower --val-fraction")
    statistics = compute_statistics(arrays["ego_state"][train], arrays["actions"][train])
    write_statistics(out_dir / "statistics.json", statistics)
    meta = {
        "validation_clips": sorted(c for c in kept if c in val),
        "validation_rule": rule,
        "settings": asdict(settings),
        "camera_counts": np.bincount(arrays["camera"][train], minlength=5).tolist(),
        "skill_counts": np.bincount(arrays["skill"][train], minlength=7).tolist(),
    }
    write_index(out_dir, root, kept, arrays, meta)
    report = {
        "clips_found": len(clips),
        "clips_used": len(kept),
        "clips_resumed": resumed,
        "skipped": skipped,
        "windows": int(arrays["frame"].shape[0]),
        "train_windows": int(np.sum(train)),
        "validation_windows": int(np.sum(~train)),
        "validation_rule": rule,
        "validation_clips": len([c for c in kept if c in val]),
        "dropped_windows": dropped,
        "bad_values": bad_values,
    }
    write_json_atomic(out_dir / "report.json", report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="Bench2Drive-Base folder (one folder per clip)")
    parser.add_argument("--camera-labels", type=Path,
                        help="the authors' camera label folder (<clip>.json); needed for DriveMoE, not for Drive-pi0")
    parser.add_argument("--scenario-labels", type=Path,
                        help="the authors' scenario label folder (<clip>.json); without it skills come from the clip names")
    parser.add_argument("--out", required=True, type=Path, help="index folder to write")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                        help="'authors': the authors' pipeline (unwrapped relative heading, their validation list, "
                             "clips skipped when a label file is missing or incomplete); 'default': the same windows "
                             "with the heading wrapped into [-pi, pi). Both skip windows with None/NaN values, named")
    parser.add_argument("--val-split", choices=SPLIT_RULES, default=AUTO,
                        help="'authors-list': the authors' 50 Bench2Drive-Base validation clips; 'hash': --val-fraction "
                             "of the clips by name hash; 'auto' (default): the authors' list when one of its clips is present")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of clips held out by --val-split hash (default 0.05: 50 of 1000)")
    parser.add_argument("--workers", type=int, default=1, help="parallel clip readers")
    parser.add_argument("--no-image-check", action="store_true", help="skip the JPEG marker check of every image")
    parser.add_argument("--retry-failed", action="store_true", help="retry clips that failed in an earlier run")
    parser.add_argument("--restart", action="store_true", help="drop partial results of an earlier run")


def main(args: argparse.Namespace) -> int:
    settings = PrepareSettings(
        root=str(Path(args.root).resolve()),
        camera_labels=str(Path(args.camera_labels).resolve()) if args.camera_labels else None,
        scenario_labels=str(Path(args.scenario_labels).resolve()) if args.scenario_labels else None,
        val_fraction=args.val_fraction,
        check_images=not args.no_image_check,
        layout=args.layout,
        val_split=args.val_split,
    )
    report = prepare(args.root, args.out, settings, workers=args.workers, retry_failed=args.retry_failed, restart=args.restart)
    print(
        f"{report['windows']} windows ({report['train_windows']} train, {report['validation_windows']} validation) "
        f"from {report['clips_used']} of {report['clips_found']} clips; {len(report['skipped'])} skipped"
    )
    print(f"validation: {report['validation_clips']} clips by the {report['validation_rule']} rule")
    for clip, reason in report["skipped"].items():
        print(f"  skipped {clip}: {reason}")
    for clip, problems in report["bad_values"].items():
        print(f"  {len(problems)} window(s) of {clip} skipped for bad values, first: {problems[0]}")
    print(f"index written to {args.out}")
    return 0
