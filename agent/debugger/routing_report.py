"""`drivemoe routing-report`: plots and tables of camera and expert choices over one route or a whole run.

Input: trace folders (docs/trace-format.md), or run folders holding them (searched recursively for
trace.jsonl). Per route: a timeline of the chosen camera (with the ground-truth label when the
folder holds `camera_labels.json`, which `drivemoe replay` writes) and of the action router's expert
weights. Over all routes: choice frequencies per scenario type and per Bench2Drive ability, confusion
matrices against camera labels and against the skill label of the scenario type (model/skills.py),
and, when a Bench2Drive results JSON is given (or found in a run folder), the camera-choice flips in
the `--flip-window` seconds before each located infraction. With counterfactuals in the traces
(docs/routing-debug.md), the routing sensitivity over each route and a ranking of the frames where
the choice mattered most. Writes PNGs (matplotlib Agg), a Markdown index `report.md`, the same as
one self-contained `report.html` and every number in `report.json`; unreadable traces are listed,
not fatal.

Definitions: the chosen camera of a line is `camera_router.selected[0]`; the expert of a line is the
highest-weight expert of the final denoising step; a flip is a change of chosen camera between two
consecutive lines of a route. An infraction is located at the trace line nearest to the
`(x=..., y=...)` position in its message (infractions without a position are listed, not located).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.debugger.outputs import output_error
from agent.debugger.debug_video import TRACE_FILE, Trace, TraceError, expert_names_of, load_trace
from bench2drive_eval import html_page
from bench2drive_eval.html_page import write_html_page
from bench2drive_eval.jsonio import write_json_atomic, write_text_atomic
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


def abilities_cell(scenario_type: str | None, abilities: Sequence[str]) -> str:
    """The routes table's abilities cell; when empty, why (never a blank cell)."""
    if abilities:
        return ", ".join(abilities)
    if scenario_type is None:
        return "none (scenario type unknown)"
    # e.g. the demo's LaneChange: a Bench2Drive training-clip type, but none of the 44 evaluation route types
    return f"none ({scenario_type} is not a Bench2Drive route scenario type of tools/ability_benchmark.py)"


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


def _sensitivity(record: dict[str, Any]) -> float | None:
    cf = record.get("counterfactual")
    value = cf.get("sensitivity_m") if isinstance(cf, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _most_different(record: dict[str, Any]) -> str | None:
    cf = record.get("counterfactual")
    worst = cf.get("most_different") if isinstance(cf, dict) else None
    return str(worst.get("name")) if isinstance(worst, dict) and worst.get("name") is not None else None


def _mean_logit_skill(record: dict[str, Any]) -> int | None:
    """Argmax of the action-router logits averaged over the denoising steps (replay_scoring's definition)."""
    router = record.get("action_router")
    if not router or not router.get("steps"):
        return None
    logits = [s.get("logits") for s in router["steps"]]
    try:
        mean = np.nanmean(np.array(logits, dtype=np.float64), axis=0)
    except (TypeError, ValueError):
        return None
    return int(np.nanargmax(mean)) if mean.ndim == 1 and np.any(np.isfinite(mean)) else None


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
    expert_names: list[str] = dataclasses.field(default_factory=list)
    sensitivity: list[float | None] = dataclasses.field(default_factory=list)  # counterfactual, metres (None: not run)
    most_different: list[str | None] = dataclasses.field(default_factory=list)
    mean_logit_skills: list[int | None] = dataclasses.field(default_factory=list)  # argmax of step-averaged logits
    duplicates: int = 0

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
            times=[float("nan") if r.get("sim_time", r["frame"]) is None else float(r.get("sim_time", r["frame"]))
                   for r in records],  # null: the writer could not record the time (`non_finite`)
            positions=[tuple(r["position"]) if r.get("position") else None for r in records],
            cameras=[chosen_camera(r) for r in records],
            experts=[final_expert(r) for r in records],
            expert_weights=weights,
            labels=labels,
            expert_names=expert_names_of(trace.header, weights.shape[1]) if weights is not None else [],
            sensitivity=[_sensitivity(r) for r in records],
            most_different=[_most_different(r) for r in records],
            mean_logit_skills=[_mean_logit_skill(r) for r in records],
            duplicates=trace.duplicates,
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


def _plot_route(route: RouteRouting, path: Path, marks: Sequence[tuple[int, str]] = ()) -> None:
    """Camera choice, expert weights and (with counterfactuals) sensitivity over frames; `marks` draws
    labelled vertical lines (infractions) on every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_cf = any(v is not None for v in route.sensitivity)
    rows = 1 + (route.expert_weights is not None) + has_cf
    heights = [2.2] + ([2.8] if route.expert_weights is not None else []) + ([1.8] if has_cf else [])
    fig, axes = plt.subplots(rows, 1, figsize=(11, sum(heights) + 0.6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    ax = axes[0, 0]
    index = {c: i for i, c in enumerate(ROUTER_CANDIDATES)}
    chosen = [index.get(c, np.nan) if c else np.nan for c in route.cameras]
    ax.step(route.frames, chosen, where="post", color="tab:orange", label="chosen")
    if route.labels:
        frames = [f for f in route.frames if f in route.labels]
        labelled = [router_class_of_label(route.labels[f]) for f in frames]
        ax.plot(frames, labelled, ".", color="tab:blue", markersize=4, label="label (NULL = BACK)")
    ax.set_yticks(range(len(ROUTER_CANDIDATES)), [c.replace("CAM_", "") for c in ROUTER_CANDIDATES], fontsize=9)
    ax.set_ylim(-0.5, len(ROUTER_CANDIDATES) - 0.5)
    ax.set_title(f"{route.name}: camera choice", fontsize=10, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    row = 1
    if route.expert_weights is not None:
        ax2 = axes[row, 0]
        row += 1
        experts = route.expert_weights.shape[1]
        extent = (route.frames[0] - 0.5, (route.frames[-1] if len(route.frames) > 1 else route.frames[0]) + 0.5, experts - 0.5, -0.5)
        image = ax2.imshow(route.expert_weights.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        names = route.expert_names or [str(e) for e in range(experts)]
        ax2.set_yticks(range(experts), [n.replace("_", " ").lower() for n in names], fontsize=8)
        ax2.set_title("action-router weight per skill expert (final denoising step)", fontsize=10, loc="left")
        bar = fig.colorbar(image, cax=ax2.inset_axes([1.01, 0.0, 0.015, 1.0]))  # outside: keeps the x axes aligned
        bar.set_label("weight", fontsize=8)
    if has_cf:
        ax3 = axes[row, 0]
        values = [np.nan if v is None else v for v in route.sensitivity]
        ax3.plot(route.frames, values, ".-", color="tab:red", markersize=3)
        ax3.set_ylabel("metres", fontsize=8)
        ax3.set_ylim(bottom=0)
        ax3.set_title("routing sensitivity: largest ADE between the chosen and an alternative trajectory", fontsize=10, loc="left")
    for axis in axes[:, 0]:
        axis.grid(alpha=0.3)
        for frame, _ in marks:
            axis.axvline(frame, color="tab:red", linewidth=1.5, linestyle="--")
    for frame, label in marks:
        axes[0, 0].annotate(label, (frame, len(ROUTER_CANDIDATES) - 0.5), xytext=(3, -12), textcoords="offset points",
                            color="tab:red", fontsize=8)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
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
                 flip_window_s: float = 3.0, max_route_plots: int = 50, progress: bool = True,
                 videos: Sequence[str | Path] = (), clips_dir: str | Path | None = None) -> ReportResult:
    """The report; `videos` (files or folders of <save_name>.mp4) and `clips_dir` (the output of
    `drivemoe infraction-clips`) are linked per route from the tables."""
    from tqdm import tqdm

    from model.skills import SKILL_NAMES, skill_of_scenario

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write the report to {out}: {error.strerror or error}") from None
    folders = find_trace_folders(inputs)
    routes: list[RouteRouting] = []
    bad_traces: list[dict[str, str]] = []
    warnings: list[str] = []
    for folder in tqdm(folders, desc="reading traces", disable=not progress):
        try:
            route = RouteRouting.from_trace(load_trace(folder))
        except TraceError as error:  # one corrupt trace does not stop the others: listed in the report
            bad_traces.append({"folder": str(folder), "error": str(error)})
            continue
        if route.duplicates:
            warnings.append(f"{folder / TRACE_FILE}: {route.duplicates} duplicated frame line(s) counted once (first kept)")
        routes.append(route)
    if not routes:
        raise TraceError("no readable trace: " + "; ".join(b["error"] for b in bad_traces))
    result_records = load_results(list(results) + _discover_results(inputs))
    pngs: list[Path] = []
    candidates = list(ROUTER_CANDIDATES)
    num_experts = max((r.expert_weights.shape[1] for r in routes if r.expert_weights is not None), default=0)
    names = next((r.expert_names for r in routes if len(r.expert_names) == num_experts), [str(e) for e in range(num_experts)])
    expert_keys = list(names)

    numbers: dict[str, Any] = {"routes": {}, "camera_by_scenario": {}, "expert_by_scenario": {},
                               "camera_by_ability": {}, "expert_by_ability": {}, "infractions": [],
                               "bad_traces": bad_traces, "warnings": warnings, "expert_names": expert_keys}
    camera_true: list[int] = []
    camera_pred: list[int] = []
    skill_true: list[int] = []
    skill_pred: list[int] = []
    mean_logit_true: list[int] = []
    mean_logit_pred: list[int] = []
    sensitive: list[dict[str, Any]] = []
    for k, route in enumerate(tqdm(routes, desc="routes", disable=not progress)):
        cameras = _frequencies(route.cameras, candidates)
        experts = {expert_keys[int(e)]: n for e, n in _frequencies(route.experts, range(num_experts)).items()}
        for frame, value, worst, camera in zip(route.frames, route.sensitivity, route.most_different, route.cameras):
            if value is not None:
                sensitive.append({"route": route.name, "frame": frame, "sensitivity_m": value, "most_different": worst,
                                  "chosen": camera})
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
                by_logits = [e for e in route.mean_logit_skills if e is not None]
                mean_logit_true += [skill] * len(by_logits)
                mean_logit_pred += by_logits
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
        with_cf = [v for v in route.sensitivity if v is not None]
        if with_cf:
            entry["max_sensitivity_m"] = max(with_cf)
            entry["mean_sensitivity_m"] = float(np.mean(with_cf))
        if k < max_route_plots:
            path = out / f"route_{k:03d}_timeline.png"
            _plot_route(route, path)
            pngs.append(path)
            entry["timeline_png"] = path.name
        entry["links"] = route_links(route.name, out, videos, clips_dir)
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
        numbers["top_expert_accuracy"] = float(np.trace(matrix) / matrix.sum())
        path = out / "skill_confusion.png"
        _plot_confusion(matrix, list(SKILL_NAMES), "top expert (final step) vs scenario skill", path)
        pngs.append(path)
    if mean_logit_true:
        matrix = confusion(mean_logit_true, mean_logit_pred, len(SKILL_NAMES))
        numbers["skill_router_accuracy"] = float(np.trace(matrix) / matrix.sum())
        numbers["skill_router_confusion"] = matrix.tolist()
    sensitive.sort(key=lambda item: -item["sensitivity_m"])
    numbers["most_sensitive_frames"] = sensitive[:20]
    numbers["counterfactual_frames"] = len(sensitive)
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
    write_text_atomic(index, _markdown(numbers, pngs, flip_window_s))
    write_html_page(out / "report.html", "Routing report", _html_sections(numbers, pngs, flip_window_s))
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
    for line in _skill_lines(numbers):
        lines += ["", line]
    if numbers["most_sensitive_frames"]:
        lines += ["", "## Where the routing choice mattered most (counterfactual)", "",
                  f"{numbers['counterfactual_frames']} inference(s) with a counterfactual; sensitivity = largest ADE between "
                  "the chosen trajectory and one under another camera or a forced skill expert.", "",
                  "| route | frame | chosen camera | sensitivity (m) | most different |", "|---|---|---|---|---|"]
        lines += [f"| {i['route']} | {i['frame']} | {i['chosen']} | {i['sensitivity_m']:.3f} | {i['most_different']} |"
                  for i in numbers["most_sensitive_frames"]]
    if numbers["bad_traces"] or numbers["warnings"]:
        lines += ["", "## Traces not read, warnings", ""]
        lines += [f"- not read: {b['error']}" for b in numbers["bad_traces"]]
        lines += [f"- warning: {w}" for w in numbers["warnings"]]
    lines += ["", "## Routes", "", "| route | scenario | abilities | inferences | flips | "
              + " | ".join(c.replace("CAM_", "") for c in candidates) + " | timeline |",
              "|---|---|---|---|---|" + "---|" * len(candidates) + "---|"]
    for name, entry in numbers["routes"].items():
        link = " ".join(([f"[png]({entry['timeline_png']})"] if "timeline_png" in entry else [])
                        + [f"[{text}]({href})" for text, href in entry.get("links", {}).items()])
        lines.append(f"| {name} | {entry['scenario_type']} | {abilities_cell(entry['scenario_type'], entry['abilities'])} | {entry['inferences']} | "
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


def route_links(name: str, out: Path, videos: Sequence[str | Path], clips_dir: str | Path | None) -> dict[str, str]:
    """Relative links from the report folder to this route's debug video and infraction clips, when they exist."""
    import os

    from agent.debugger.infraction_clips import route_folder_name

    links: dict[str, str] = {}
    for item in map(Path, videos):
        if item.is_dir():
            candidate = item / f"{name}.mp4"
        elif item.stem == name or len(videos) == 1:
            candidate = item
        else:
            continue
        if candidate.is_file():
            links.setdefault("video", os.path.relpath(candidate, out))
    if clips_dir is not None:
        page = Path(clips_dir) / route_folder_name(name) / "index.html"
        if page.is_file():
            links["infraction clips"] = os.path.relpath(page, out)
    return links


def _skill_lines(numbers: dict[str, Any]) -> list[str]:
    out = []
    if "skill_router_accuracy" in numbers:
        out.append("Skill-router accuracy (argmax of the action-router logits averaged over the denoising steps = "
                   f"scenario skill; the replay's scores.json definition): {numbers['skill_router_accuracy']:.3f}")
    if "top_expert_accuracy" in numbers:
        out.append(f"Top expert of the final denoising step = scenario skill: {numbers['top_expert_accuracy']:.3f}")
    return out


def _html_sections(numbers: dict[str, Any], pngs: Sequence[Path], window: float) -> list[str]:
    h = html_page
    candidates = list(ROUTER_CANDIDATES)
    parts = [h.paragraph(f"{len(numbers['routes'])} route(s), {numbers['inferences']} inferences. Chosen camera = "
                         "camera_router.selected[0]; expert = highest-weight expert of the final denoising step.")]
    summary = [h.table(["camera", "inferences"], [(c, numbers["camera_counts"][c]) for c in candidates])]
    if "camera_accuracy" in numbers:
        summary.append(h.paragraph(f"Camera-router accuracy against labels (NULL = CAM_BACK): {numbers['camera_accuracy']:.3f}"))
    summary += [h.paragraph(line) for line in _skill_lines(numbers)]
    parts.append(h.section("Camera choice over all routes", *summary))
    rows = []
    for name, entry in numbers["routes"].items():
        links = " ".join(h.link(href, text) for text, href in entry.get("links", {}).items())
        rows.append((name, entry["scenario_type"], abilities_cell(entry["scenario_type"], entry["abilities"]), entry["inferences"], entry["flips"],
                     *[entry["camera_counts"][c] for c in candidates], entry.get("max_sensitivity_m", "-"), links))
    parts.append(h.section("Routes", h.table(["route", "scenario", "abilities", "inferences", "flips",
                                              *[c.replace("CAM_", "") for c in candidates], "max sensitivity (m)", "links"],
                                             rows, raw_columns=(6 + len(candidates),))))
    if numbers["most_sensitive_frames"]:
        parts.append(h.section("Where the routing choice mattered most (counterfactual)",
                               h.paragraph("Sensitivity = largest ADE between the chosen trajectory and one under another "
                                           "camera or a forced skill expert."),
                               h.table(["route", "frame", "chosen camera", "sensitivity (m)", "most different"],
                                       [(i["route"], i["frame"], i["chosen"], i["sensitivity_m"], i["most_different"])
                                        for i in numbers["most_sensitive_frames"]])))
    if numbers["infractions"]:
        parts.append(h.section("Infractions and the camera flips before them",
                               h.paragraph(f"Flips within {window:g} s before the trace line nearest to the infraction's position."),
                               h.table(["route", "infraction", "frame", "flips before"],
                                       [(i["route"], i["type"], i["frame"] if i["frame"] is not None else "not located",
                                         "; ".join(f"{f['frame']}: {f['from']} -> {f['to']}" for f in i["flips_before"]) or "none")
                                        for i in numbers["infractions"]])))
    if numbers["bad_traces"] or numbers["warnings"]:
        parts.append(h.section("Traces not read, warnings",
                               *[h.paragraph(f"not read: {b['error']}", "bad") for b in numbers["bad_traces"]],
                               *[h.paragraph(f"warning: {w}") for w in numbers["warnings"]]))
    parts.append(h.section("Plots", *[h.image(p, p.stem) for p in pngs]))
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_OR_TRACE_DIR", help="trace folders or run folders holding them")
    parser.add_argument("--out", required=True, help="output folder for report.md, report.json and the PNGs")
    parser.add_argument("--results", action="append", default=[], help="Bench2Drive results JSON (repeatable)")
    parser.add_argument("--flip-window", type=float, default=3.0, help="seconds before an infraction to list flips")
    parser.add_argument("--max-route-plots", type=int, default=50, help="timeline PNGs for at most this many routes")
    parser.add_argument("--videos", action="append", default=[], metavar="FILE_OR_DIR",
                        help="debug videos to link per route: FILE, or DIR holding <save_name>.mp4 (repeatable)")
    parser.add_argument("--clips", default=None, metavar="DIR", help="output folder of `drivemoe infraction-clips` to link")


def main(args: argparse.Namespace) -> int:
    if not math.isfinite(args.flip_window) or args.flip_window < 0:
        raise ValueError(f"--flip-window must be >= 0 seconds, got {args.flip_window}")
    try:
        result = build_report(args.inputs, args.out, args.results, args.flip_window, args.max_route_plots,
                              videos=args.videos, clips_dir=args.clips)
    except OSError as error:  # full disk or a file that cannot be replaced, after the up-front check
        raise output_error(error) from None
    for bad in result.numbers["bad_traces"]:
        print(f"warning: trace not read: {bad['error']}", file=sys.stderr)
    for warning in result.numbers["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"routing report: {result.index} and {result.index.with_name('report.html')} ({len(result.pngs)} plots, {result.numbers['inferences']} inferences)")
    return 0
