"""PNG plots of Bench2Drive metrics (matplotlib, Agg backend): scores, abilities, infractions, towns, route deltas."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bench2drive_eval.metrics import INFRACTION_LABELS, Metrics  # noqa: E402

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
SUCCESS_COLOR, FAIL_COLOR = "#2ca02c", "#d62728"
# Shown per km; min-speed events are efficiency checkpoints, and off-road is a distance, not a count.
PLOTTED_INFRACTIONS = tuple(k for k in INFRACTION_LABELS if k not in ("min_speed_infractions", "outside_route_lanes"))


def _save(fig: "plt.Figure", path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def score_distribution(metrics: Metrics, path: str | os.PathLike, title: str = "") -> Path:
    """Histogram of per-route driving scores, successes and failures stacked; missing routes shown at 0."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = [i * 10 for i in range(11)]
    ok = [r.driving_score for r in metrics.per_route if r.success]
    bad = [r.driving_score for r in metrics.per_route if not r.success] + [0.0] * len(metrics.missing_routes)
    ax.hist([ok, bad], bins=bins, stacked=True, color=[SUCCESS_COLOR, FAIL_COLOR],
            label=[f"success ({len(ok)})", f"not success ({len(bad)}, incl. {len(metrics.missing_routes)} missing)"])
    ax.axvline(metrics.driving_score, color="black", linestyle="--", label=f"DS {metrics.driving_score:.2f}")
    ax.set_xlabel("route driving score")
    ax.set_ylabel("routes")
    ax.set_xticks(bins)
    ax.set_title(title or "Driving score per route")
    ax.legend()
    return _save(fig, path)


def _grouped_bars(ax: "plt.Axes", names: Sequence[str], series: Sequence[Sequence[float | None]],
                  labels: Sequence[str], rotation: int = 20) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (values, label) in enumerate(zip(series, labels)):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(xs, heights, width, label=label, color=COLORS[i % len(COLORS)])
        for bar, value in zip(bars, values):
            text = "n/a" if value is None else f"{value:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=rotation, ha="right" if rotation else "center", fontsize=8)


def abilities(runs: Sequence[Metrics], labels: Sequence[str], path: str | os.PathLike) -> Path:
    """Ability success rates (and their mean) per run; 'n/a' where not computable."""
    partial = any(m.ability_mean is None for m in runs)
    # Without maps Traffic_Signs is n/a; then the last bar is the mean of the computable abilities, labelled so.
    names = list(runs[0].abilities) + ["Mean of computable" if partial else "Mean"]
    series = [[m.abilities[n] for n in names[:-1]] + [m.ability_mean_of_computable if partial else m.ability_mean]
              for m in runs]
    fig, ax = plt.subplots(figsize=(8, 4))
    _grouped_bars(ax, names, series, labels)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Abilities" + (" (n/a: not computable, see the notes)" if partial else ""))
    ax.legend()
    return _save(fig, path)


def infractions(runs: Sequence[Metrics], labels: Sequence[str], path: str | os.PathLike) -> Path:
    """Infractions per km driven, per type and run."""
    names = [INFRACTION_LABELS[k] for k in PLOTTED_INFRACTIONS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    height = 0.8 / len(runs)
    for i, (m, label) in enumerate(zip(runs, labels)):
        ys = [j + (i - (len(runs) - 1) / 2) * height for j in range(len(names))]
        ax.barh(ys, [m.infractions_per_km[k] for k in PLOTTED_INFRACTIONS], height, label=label,
                color=COLORS[i % len(COLORS)])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("events per km driven")
    ax.set_title("Infractions per km")
    ax.legend()
    return _save(fig, path)


def per_town(runs: Sequence[Metrics], labels: Sequence[str], path: str | os.PathLike) -> Path:
    """Mean driving score per town (over evaluated routes), per run."""
    towns = sorted({row.name for m in runs for row in m.per_town})
    series = []
    for m in runs:
        by_name = {row.name: row for row in m.per_town}
        series.append([by_name[t].driving_score if t in by_name and by_name[t].evaluated else None for t in towns])
    fig, ax = plt.subplots(figsize=(9, 4))
    _grouped_bars(ax, [f"{t}\n({next((r.routes for r in runs[0].per_town if r.name == t), 0)})" for t in towns],
                  series, labels, rotation=0)
    ax.set_ylabel("mean driving score")
    ax.set_ylim(0, 105)
    ax.set_title("Driving score per town (routes in brackets)")
    ax.legend()
    return _save(fig, path)


def route_scatter(a: Metrics, b: Metrics, label_a: str, label_b: str, path: str | os.PathLike) -> Path:
    """Per-route driving score of run A against run B, coloured by success flips."""
    score_a = {r.route_id: r for r in a.per_route}
    score_b = {r.route_id: r for r in b.per_route}
    common = sorted(set(score_a) & set(score_b))
    groups = {"fail -> success": ([], [], SUCCESS_COLOR), "success -> fail": ([], [], FAIL_COLOR),
              "unchanged": ([], [], "#7f7f7f")}
    for rid in common:
        ra, rb = score_a[rid], score_b[rid]
        key = ("fail -> success" if rb.success and not ra.success
               else "success -> fail" if ra.success and not rb.success else "unchanged")
        groups[key][0].append(ra.driving_score)
        groups[key][1].append(rb.driving_score)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for name, (xs, ys, color) in groups.items():
        ax.scatter(xs, ys, s=18, color=color, label=f"{name} ({len(xs)})", alpha=0.8)
    ax.plot([0, 100], [0, 100], color="black", linewidth=0.8)
    ax.set_xlabel(f"{label_a} route driving score")
    ax.set_ylabel(f"{label_b} route driving score")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_title("Per-route driving score")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
