"""`drivemoe routing-report`: plots and tables of camera and expert choices over one route or a whole run.

Input: trace folders (docs/trace-format.md), or run folders holding them (searched recursively for
trace.jsonl). Per route: a timeline of the chosen camera (with the ground-truth label when the
folder holds `camera_labels.json`, which `drivemoe replay` writes) and of the action router's expert
weights. Over all routes: choice frequencies per scenario type and per Bench2Drive ability, confusion
matrices against camera labels and against the skill label of the scenario type (model/skills.py),
and, when a Bench2Drive results JSON is given (or found in a run folder), the camera-choice flips in
the `--flip-window` seconds before each located infraction. Writes PNGs (matplotlib Agg), a
Markdown index `report.md` and every number of it in `report.json`.

Definitions: the chosen camera of a line is `camera_router.selected[0]`; the expert of a line is the
highest-weight expert of the final denoising step; a flip is a change of chosen camera between two
consecutive lines of a route. An infraction is located at the trace line nearest to the
`(x=..., y=...)` position in its message (infractions without a position are listed, not located).
"""
from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.debugger.debug_video import TRACE_FILE, Trace, TraceError, load_trace
from bench2drive_eval.jsonio import write_json_atomic
from model.cameras import ROUTER_CANDIDATES, router_class_of_label

try:  # the scoring side's table (Bench2Drive's tools/ability_benchmark.py lists)
    from bench2drive_eval.abilities import ABILITIES as _ABILITIES
except ImportError:  # pragma: no cover - only when bench2drive_eval is trimmed
    _ABILITIES = {}

LABELS_FILE = "camera_labels.json"
_SAVE_NAME = re.compile(r"^RouteScenario_(?P<id>[^_]+)_rep\d+_(?P<town>[^_]+)_(?P<scenario>.+)_(?P<weather>\d+)(?:_\d+){5}$")
_POSITION = re.compile(r"at \(x=(?P<x>-?[\d.]+), y=(?P<y>-?[\d.]+)")


def scenario_type_of(trace: Trace) -> str | None:
    """Scenario type from the trace header (`scenario_type`) or its save name (leaderboard or clip name)."""
    if trace.header and trace.header.get("scenario_type"):
        return str(trace.header["scenario_type"])
    name = trace.save_name
    match = _SAVE_NAME.match(name)
    if match:
        return re.sub(r"_\d+$", "", match.group("scenario"))
    try:
        from model.skills import scenario_of_clip_name

        return scenario_of_clip_name(name)
    except ValueError:
        return None


def abilities_of(scenario_type: str | None) -> list[str]:
    if scenario_type is None:
        return []
    return [name for name, types in _ABILITIES.items() if scenario_type in types]


def chosen_camera(record: dict[str, Any]) -> str | None:
    router = record.get("camera_router")
    if not router or not router.get("selected"):
        return None
    return str(router["selected"][0])


def final_expert(record: dict[str, Any]) -> int | None:
    router = record.get("action_router")
    if not router or not router.get("steps"):
        return None
    last = router["steps"][-1]
    return int(last["experts"][int(np.argmax(last["weights"]))])


def find_trace_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Trace folders among `paths` (a trace folder itself, or any folder below a run folder)."""
    folders: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such trace or run folder")
        if (path / TRACE_FILE).is_file():
            folders.append(path)
        else:
            found = sorted(p.parent for p in path.rglob(TRACE_FILE))
            if not found:
                raise TraceError(f"{path}: no {TRACE_FILE} in this folder or below it")
            folders.extend(found)
    return list(dict.fromkeys(folders))


@dataclass(frozen=True)
class RouteRouting:
    """One route's routing sequence, read from its trace."""

    name: str
    scenario_type: str | None
    frames: list[int]
    times: list[float]
    positions: list[tuple[float, float] | None]
    cameras: list[str | None]
    experts: list[int | None]
    expert_weights: np.ndarray | None  # [lines, E] final-step weights
    labels: dict[int, str] | None  # frame -> camera label (authors' format) when known

    @classmethod
    def from_trace(cls, trace: Trace) -> "RouteRouting":
        records = trace.records
        weights = None
        counts = {int(r["action_router"]["num_experts"]) for r in records if r.get("action_router")}
        if counts:
            weights = np.zeros((len(records), max(counts)))
            for i, r in enumerate(records):
                if r.get("action_router") and r["action_router"].get("steps"):
                    last = r["action_router"]["steps"][-1]
                    for e, w in zip(last["experts"], last["weights"]):
                        weights[i, int(e)] = float(w)
        labels = None
        labels_path = trace.folder / LABELS_FILE
        if labels_path.is_file():
            try:
                raw = json.loads(labels_path.read_text(encoding="utf-8"))
                labels = {int(k): str(v) for k, v in raw.items()}
            except (json.JSONDecodeError, ValueError, AttributeError) as error:
                raise TraceError(f"{labels_path}: not a camera label file (frame index -> camera): {error}") from None
        return cls(
            name=trace.save_name,
            scenario_type=scenario_type_of(trace),
            frames=[int(r["frame"]) for r in records],
            times=[float(r.get("sim_time", r["frame"])) for r in records],
            positions=[tuple(r["position"]) if r.get("position") else None for r in records],
            cameras=[chosen_camera(r) for r in records],
            experts=[final_expert(r) for r in records],
            expert_weights=weights,
            labels=labels,
        )

    def flips(self) -> list[tuple[int, float, str | None, str | None]]:
        """(frame, time, from camera, to camera) at every change of the chosen camera."""
        out = []
        for i in range(1, len(self.cameras)):
            if self.cameras[i] != self.cameras[i - 1]:
                out.append((self.frames[i], self.times[i], self.cameras[i - 1], self.cameras[i]))
        return out


def _frequencies(values: Iterable[Any], keys: Sequence[Any]) -> dict[str, int]:
    counts = Counter(v for v in values if v is not None)
    return {str(k): int(counts.get(k, 0)) for k in keys}


def confusion(true: Sequence[int], predicted: Sequence[int], classes: int) -> np.ndarray:
    """[classes, classes] counts, rows = label, columns = prediction."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(true, predicted):
        matrix[t, p] += 1
    return matrix


def _infractions(record: Any) -> list[tuple[str, str]]:
    out = []
    for kind, messages in record.infractions.items():
        if kind == "min_speed_infractions":
            continue
        out.extend((kind, str(m)) for m in messages)
    return out


def locate_infractions(route: RouteRouting, record: Any, window_s: float) -> list[dict[str, Any]]:
    """Each infraction of a result record, located on the route and with the flips before it."""
    out = []
    positions = np.array([p if p is not None else (np.nan, np.nan) for p in route.positions], dtype=np.float64)
    for kind, message in _infractions(record):
        entry: dict[str, Any] = {"type": kind, "message": message, "frame": None, "flips_before": []}
        match = _POSITION.search(message)
        if match and len(positions) and np.any(np.isfinite(positions[:, 0])):
            point = np.array([float(match.group("x")), float(match.group("y"))])
            distance = np.linalg.norm(positions - point, axis=1)
            index = int(np.nanargmin(distance))
            entry["frame"] = route.frames[index]
            entry["distance_m"] = float(distance[index])
            time = route.times[index]
            entry["flips_before"] = [
                {"frame": f, "from": a, "to": b}
                for f, t, a, b in route.flips()
                if time - window_s <= t <= time
            ]
        out.append(entry)
    return out


def load_results(paths: Sequence[str | Path]) -> dict[str, Any]:
    """save_name -> RouteRecord from Bench2Drive result JSON files."""
    from bench2drive_eval.results import load_result_file

    by_name: dict[str, Any] = {}
    for path in paths:
        records, _errors = load_result_file(path)
        for record in records:
            by_name[record.save_name] = record
    return by_name


def _discover_results(paths: Sequence[str | Path]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / TRACE_FILE).is_file():
            for candidate in sorted(path.glob("*.json")):
                try:
                    data = json.loads(candidate.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                    continue
                if isinstance(data, dict) and isinstance(data.get("_checkpoint"), dict):
                    found.append(candidate)
    return found


# ---------------------------------------------------------------------------------------------
# plots


def _plot_route(route: RouteRouting, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if route.expert_weights is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows), sharex=True, squeeze=False)
    ax = axes[0, 0]
    index = {c: i for i, c in enumerate(ROUTER_CANDIDATES)}
    chosen = [index.get(c, np.nan) if c else np.nan for c in route.cameras]
    ax.step(route.frames, chosen, where="post", color="tab:orange", label="chosen")
    if route.labels:
        frames = [f for f in route.frames if f in route.labels]
        labelled = [router_class_of_label(route.labels[f]) for f in frames]
        ax.plot(frames, labelled, ".", color="tab:blue", markersize=3, label="label (NULL = BACK)")
    ax.set_yticks(range(len(ROUTER_CANDIDATES)), [c.replace("CAM_", "") for c in ROUTER_CANDIDATES])
    ax.set_title(f"{route.name}: camera choice")
    ax.legend(loc="upper right", fontsize=7)
    if route.expert_weights is not None:
        ax2 = axes[1, 0]
        extent = (route.frames[0], route.frames[-1] if len(route.frames) > 1 else route.frames[0] + 1,
                  route.expert_weights.shape[1] - 0.5, -0.5)
        ax2.imshow(route.expert_weights.T, aspect="auto", cmap="Greens", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        ax2.set_ylabel("expert")
        ax2.set_title("action-router weights (final denoising step)")
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_stacked(table: dict[str, dict[str, int]], keys: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(groups) + 3), 4))
    bottom = np.zeros(len(groups))
    for key in keys:
        totals = np.array([max(sum(table[g].values()), 1) for g in groups])
        values = np.array([table[g].get(key, 0) for g in groups]) / totals
        ax.bar(groups, values, bottom=bottom, label=key.replace("CAM_", ""))
        bottom += values
    ax.set_ylabel("fraction of inferences")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_confusion(matrix: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2, 0.8 * len(names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        dark = value > matrix.max() / 2
        ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class ReportResult:
    index: Path
    numbers: dict[str, Any]
    pngs: list[Path]


def build_report(inputs: Sequence[str | Path], out_dir: str | Path, results: Sequence[str | Path] = (),
                 flip_window_s: float = 3.0, max_route_plots: int = 50, progress: bool = True) -> ReportResult:
    from tqdm import tqdm

    from model.skills import SKILL_NAMES, skill_of_scenario

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = find_trace_folders(inputs)
    routes = [RouteRouting.from_trace(load_trace(f)) for f in tqdm(folders, desc="reading traces", disable=not progress)]
    result_records = load_results(list(results) + _discover_results(inputs))
    pngs: list[Path] = []
    candidates = list(ROUTER_CANDIDATES)
    num_experts = max((r.expert_weights.shape[1] for r in routes if r.expert_weights is not None), default=0)
    expert_keys = [str(e) for e in range(num_experts)]

    numbers: dict[str, Any] = {"routes": {}, "camera_by_scenario": {}, "expert_by_scenario": {},
                               "camera_by_ability": {}, "expert_by_ability": {}, "infractions": []}
    camera_true: list[int] = []
    camera_pred: list[int] = []
    skill_true: list[int] = []
    skill_pred: list[int] = []
    for k, route in enumerate(tqdm(routes, desc="routes", disable=not progress)):
        cameras = _frequencies(route.cameras, candidates)
        experts = _frequencies(route.experts, range(num_experts))
        flips = route.flips()
        entry: dict[str, Any] = {"scenario_type": route.scenario_type, "abilities": abilities_of(route.scenario_type),
                                 "inferences": len(route.frames), "camera_counts": cameras, "expert_counts": experts,
                                 "flips": len(flips)}
        if route.labels:
            pairs = [(router_class_of_label(route.labels[f]), candidates.index(c))
                     for f, c in zip(route.frames, route.cameras) if f in route.labels and c in candidates]
            camera_true += [t for t, _ in pairs]
            camera_pred += [p for _, p in pairs]
            entry["camera_accuracy"] = float(np.mean([t == p for t, p in pairs])) if pairs else None
        if route.scenario_type is not None and num_experts == len(SKILL_NAMES):
            try:
                skill = int(skill_of_scenario(route.scenario_type))
            except ValueError:
                skill = None
            if skill is not None:
                predicted = [e for e in route.experts if e is not None]
                skill_true += [skill] * len(predicted)
                skill_pred += predicted
        groups = [("camera_by_scenario", "expert_by_scenario", route.scenario_type or "unknown")]
        groups += [("camera_by_ability", "expert_by_ability", a) for a in entry["abilities"]]
        for camera_table, expert_table, key in groups:
            for table, counts in ((camera_table, cameras), (expert_table, experts)):
                into = numbers[table].setdefault(key, {})
                for name, count in counts.items():
                    into[name] = into.get(name, 0) + count
        if route.name in result_records:
            located = locate_infractions(route, result_records[route.name], flip_window_s)
            for item in located:
                numbers["infractions"].append({"route": route.name, **item})
        if k < max_route_plots:
            path = out / f"route_{k:03d}_timeline.png"
            _plot_route(route, path)
            pngs.append(path)
            entry["timeline_png"] = path.name
        numbers["routes"][route.name] = entry
    totals = _frequencies([c for r in routes for c in r.cameras], candidates)
    numbers["camera_counts"] = totals
    numbers["inferences"] = sum(len(r.frames) for r in routes)
    if camera_true:
        matrix = confusion(camera_true, camera_pred, len(candidates))
        numbers["camera_confusion"] = matrix.tolist()
        numbers["camera_accuracy"] = float(np.trace(matrix) / matrix.sum())
        path = out / "camera_confusion.png"
        _plot_confusion(matrix, [c.replace("CAM_", "") for c in candidates], "camera router vs labels", path)
        pngs.append(path)
    if skill_true:
        matrix = confusion(skill_true, skill_pred, len(SKILL_NAMES))
        numbers["skill_confusion"] = matrix.tolist()
        numbers["skill_accuracy"] = float(np.trace(matrix) / matrix.sum())
        path = out / "skill_confusion.png"
        _plot_confusion(matrix, list(SKILL_NAMES), "top expert (final step) vs scenario skill", path)
        pngs.append(path)
    for table, keys, title in (("camera_by_scenario", candidates, "camera choice per scenario type"),
                               ("camera_by_ability", candidates, "camera choice per ability"),
                               ("expert_by_scenario", expert_keys, "top expert per scenario type"),
                               ("expert_by_ability", expert_keys, "top expert per ability")):
        if numbers[table] and keys:
            path = out / f"{table}.png"
            _plot_stacked(numbers[table], keys, title, path)
            pngs.append(path)
    write_json_atomic(out / "report.json", numbers)
    index = out / "report.md"
    index.write_text(_markdown(numbers, pngs, flip_window_s), encoding="utf-8")
    return ReportResult(index, numbers, pngs)


def _markdown(numbers: dict[str, Any], pngs: Sequence[Path], window: float) -> str:
    candidates = list(ROUTER_CANDIDATES)
    lines = ["# Routing report", "",
             f"{len(numbers['routes'])} route(s), {numbers['inferences']} inferences. "
             "Chosen camera = `camera_router.selected[0]`; expert = highest-weight expert of the final denoising step.", ""]
    lines += ["## Camera choice over all routes", "", "| camera | inferences |", "|---|---|"]
    lines += [f"| {c} | {numbers['camera_counts'][c]} |" for c in candidates]
    if "camera_accuracy" in numbers:
        lines += ["", f"Camera-router accuracy against labels (NULL = CAM_BACK): {numbers['camera_accuracy']:.3f}"]
    if "skill_accuracy" in numbers:
        lines += ["", f"Top expert = scenario skill: {numbers['skill_accuracy']:.3f}"]
    lines += ["", "## Routes", "", "| route | scenario | abilities | inferences | flips | "
              + " | ".join(c.replace("CAM_", "") for c in candidates) + " | timeline |",
              "|---|---|---|---|---|" + "---|" * len(candidates) + "---|"]
    for name, entry in numbers["routes"].items():
        link = f"[png]({entry['timeline_png']})" if "timeline_png" in entry else ""
        lines.append(f"| {name} | {entry['scenario_type']} | {', '.join(entry['abilities'])} | {entry['inferences']} | "
                     f"{entry['flips']} | " + " | ".join(str(entry["camera_counts"][c]) for c in candidates) + f" | {link} |")
    lines += ["", "## Infractions and the camera flips before them", ""]
    if numbers["infractions"]:
        lines += [f"Flips within {window:g} s before the trace line nearest to the infraction's position.", "",
                  "| route | infraction | frame | flips before (frame: from -> to) |", "|---|---|---|---|"]
        for item in numbers["infractions"]:
            flips = "; ".join(f"{f['frame']}: {f['from']} -> {f['to']}" for f in item["flips_before"]) or "none"
            frame = item["frame"] if item["frame"] is not None else "not located"
            lines.append(f"| {item['route']} | {item['type']} | {frame} | {flips} |")
    else:
        lines.append("No result records with infractions were given (`--results`), or none matched these traces.")
    lines += ["", "## Plots", ""] + [f"- [{p.name}]({p.name})" for p in pngs] + [""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_OR_TRACE_DIR", help="trace folders or run folders holding them")
    parser.add_argument("--out", required=True, help="output folder for report.md, report.json and the PNGs")
    parser.add_argument("--results", action="append", default=[], help="Bench2Drive results JSON (repeatable)")
    parser.add_argument("--flip-window", type=float, default=3.0, help="seconds before an infraction to list flips")
    parser.add_argument("--max-route-plots", type=int, default=50, help="timeline PNGs for at most this many routes")


def main(args: argparse.Namespace) -> int:
    if not math.isfinite(args.flip_window) or args.flip_window < 0:
        raise ValueError(f"--flip-window must be >= 0 seconds, got {args.flip_window}")
    result = build_report(args.inputs, args.out, args.results, args.flip_window, args.max_route_plots)
    print(f"routing report: {result.index} ({len(result.pngs)} plots, {result.numbers['inferences']} inferences)")
    return 0
