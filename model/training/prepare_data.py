"""`drivemoe prepare-data`: walk Bench2Drive clips once and write the training-window index.

Per clip: check the frames (no gaps, readable annotations, all six JPEGs present and complete),
build one window per frame t with 4 earlier frames and 9 later ones (5 conditioning steps and 10
future waypoints at 10 Hz, the first waypoint being the current position), compute the ego-state
history with the agent's own definition (model.ego_state.ego_history_from_world_records), attach
the camera label (NULL -> CAM_BACK) and the skill label. Broken clips are reported by name and
skipped. Each finished clip is saved under <out>/clips/, so a rerun continues where it stopped.
Finally the validation clips are chosen (a fixed hash order of clip names), the statistics of the
training split are computed with the authors' percentile rule, and the index is written.
"""
from __future__ import annotations

import argparse
import hashlib
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench2drive_eval.jsonio import read_json, write_json_atomic
from model.dataset.b2d_clip import ANNO_FOLDER, CAMERA_NAMES, B2DClip, ClipError
from model.ego_state import EgoWorldRecord, ego_history_from_world_records, world_to_ego
from model.errors import DriveMoEError
from model.skills import scenario_of_clip_name
from model.training.index import COND_STEPS, HORIZON_STEPS, TRAIN, VALIDATION, write_index
from model.training.labels import (
    LabelError,
    label_file,
    read_camera_labels,
    read_scenario_labels,
    skill_of_frame_annotation,
)
from model.training.statistics import compute_statistics, write_statistics

CLIP_RESULTS = "clips"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class PrepareSettings:
    """What determines the per-clip results; a rerun must use the same settings."""

    root: str
    camera_labels: str | None
    scenario_labels: str | None
    val_fraction: float = 0.05
    check_images: bool = True


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


def validation_clips(clips: list[str], fraction: float) -> set[str]:
    """A fixed, order-independent choice: the clips with the smallest sha1 of their name."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    count = int(round(fraction * len(clips)))
    if fraction > 0 and len(clips) > 1:
        count = max(count, 1)
    ranked = sorted(clips, key=lambda name: hashlib.sha1(name.encode("utf-8")).hexdigest())
    return set(ranked[:count])


def _number(annotation: dict, key: str, where: str, none_as_zero: bool = False) -> float:
    value = annotation.get(key)
    if value is None and none_as_zero:  # Bench2Drive records None for some speedometer/yaw readings
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClipError(f"{where}: annotation field {key!r} is {value!r}, expected a finite number")
    return float(value)


def _vector(annotation: dict, key: str, where: str) -> tuple[float, float, float]:
    value = annotation.get(key)
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise ClipError(f"{where}: annotation field {key!r} is {value!r}, expected 3 numbers")
    out = tuple(float(v) if v is not None else 0.0 for v in value)
    if not all(math.isfinite(v) for v in out):
        raise ClipError(f"{where}: annotation field {key!r} has a non-finite value {value!r}")
    return out  # type: ignore[return-value]


def world_record(annotation: dict, where: str) -> EgoWorldRecord:
    """The shared ego-state record of one dataset frame (annotation `theta` is the compass)."""
    return EgoWorldRecord(
        x=_number(annotation, "x", where),
        y=_number(annotation, "y", where),
        compass=_number(annotation, "theta", where, none_as_zero=True),
        speed=_number(annotation, "speed", where, none_as_zero=True),
        acceleration=_vector(annotation, "acceleration", where),
        angular_velocity=_vector(annotation, "angular_velocity", where),
        command_far=(_number(annotation, "x_command_far", where), _number(annotation, "y_command_far", where)),
    )


def build_window(records: list[EgoWorldRecord], current: int) -> tuple[np.ndarray, np.ndarray]:
    """(ego_state [5, 10] raw, actions [10, 2] metres) of the window whose current step is `current`."""
    history = records[current - COND_STEPS + 1 : current + 1]
    ego = ego_history_from_world_records(history).as_array()
    now = records[current]
    future = np.array([(r.x, r.y) for r in records[current : current + HORIZON_STEPS]], dtype=np.float64)
    actions = world_to_ego(future, np.array([now.x, now.y]), now.compass).astype(np.float32)
    return ego, actions


def process_clip(root: Path, relative: str, settings: PrepareSettings) -> dict:
    """Windows of one clip as arrays plus counts; raises ClipError / LabelError when it must be skipped."""
    clip = B2DClip(Path(root) / relative)
    frames = clip.frame_indices
    if len(frames) < COND_STEPS + HORIZON_STEPS - 1:
        raise ClipError(f"clip {clip.name}: only {len(frames)} frames, a window needs {COND_STEPS + HORIZON_STEPS - 1}")
    gaps = clip.missing_frames()
    if gaps:
        shown = gaps[:10]
        raise ClipError(f"clip {clip.name}: missing frames {shown}{' ...' if len(gaps) > 10 else ''}")
    records = [world_record(clip.annotation(i), f"clip {clip.name} frame {i}") for i in frames]
    if settings.check_images:
        for i in frames:
            for camera in CAMERA_NAMES:
                clip.check_image(camera, i)
    camera_labels = None
    if settings.camera_labels is not None:
        camera_labels = read_camera_labels(label_file(Path(settings.camera_labels), clip.name))
    scenario_labels = None
    if settings.scenario_labels is not None:
        path = label_file(Path(settings.scenario_labels), clip.name)
        if path.exists():
            scenario_labels = read_scenario_labels(path)
    # Base naming <Scenario>_<Town>_Route<id>_Weather<id>; the upstream docs' nested naming
    # <scenario>/<Town>_weather<id>_route<id> carries the scenario in the parent folder.
    scenario_type = relative.split("/")[0] if "/" in relative else scenario_of_clip_name(clip.name)
    out = {"frame": [], "ego_state": [], "actions": [], "camera": [], "skill": []}
    dropped = {"no_camera_label": 0, "no_scenario_label": 0}
    for position in range(COND_STEPS - 1, len(frames) - HORIZON_STEPS + 1):
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
            skill = int(skill_of_frame_annotation(scenario_type, clip.annotation(frame)))
        ego, actions = build_window(records, position)
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
    tmp = stem.with_suffix(".tmp.npz")
    np.savez(tmp, **result, dropped=np.array([dropped["no_camera_label"], dropped["no_scenario_label"]]))
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


def prepare(
    root: Path, out_dir: Path, settings: PrepareSettings, workers: int = 1, retry_failed: bool = False, restart: bool = False
) -> dict:
    """Run the whole preparation; returns the report that is also written to <out>/report.json."""
    root, out_dir = Path(root), Path(out_dir)
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
    val = validation_clips(clips, settings.val_fraction)
    kept: list[str] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("clip", "frame", "ego_state", "actions", "camera", "skill", "split")}
    skipped = {}
    dropped = {"no_camera_label": 0, "no_scenario_label": 0}
    for relative in clips:
        stem = _result_stem(out_dir, relative)
        if stem.with_suffix(".failed.json").exists():
            skipped[relative] = read_json(stem.with_suffix(".failed.json"))["reason"]
            continue
        with np.load(stem.with_suffix(".npz")) as data:
            n = int(data["frame"].shape[0])
            dropped["no_camera_label"] += int(data["dropped"][0])
            dropped["no_scenario_label"] += int(data["dropped"][1])
            if n == 0:
                skipped[relative] = "no window has labels"
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
        "dropped_windows": dropped,
    }
    write_json_atomic(out_dir / "report.json", report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="Bench2Drive-Base folder (one folder per clip)")
    parser.add_argument("--camera-labels", type=Path,
                        help="the authors' camera label folder (<clip>.json); needed for DriveMoE, not for Drive-pi0")
    parser.add_argument("--scenario-labels", type=Path, help="optional scenario label folder (<clip>.json)")
    parser.add_argument("--out", required=True, type=Path, help="index folder to write")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of clips held out (default 0.05: 50 of 1000)")
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
    )
    report = prepare(args.root, args.out, settings, workers=args.workers, retry_failed=args.retry_failed, restart=args.restart)
    print(
        f"{report['windows']} windows ({report['train_windows']} train, {report['validation_windows']} validation) "
        f"from {report['clips_used']} of {report['clips_found']} clips; {len(report['skipped'])} skipped"
    )
    for clip, reason in report["skipped"].items():
        print(f"  skipped {clip}: {reason}")
    print(f"index written to {args.out}")
    return 0
