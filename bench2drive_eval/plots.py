"""PNG plots of Bench2Drive metrics (matplotlib, Agg backend): scores, abilities, infractions, towns, route deltas."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bench2drive_eval.metrics import INFRACTION_LABELS, Metrics  # noqa: E402

if TYPE_CHECKING:
    from bench2drive_eval.bootstrap import RunIntervals
    from bench2drive_eval.compare import Comparison

Interval = "tuple[float | None, float | None] | None"

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
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


def score_distribution(metrics: Metrics, path: str | os.PathLike, title: str = "",
                       interval: "tuple[float | None, float | None, str] | None" = None) -> Path:
    """Histogram of per-route driving scores, successes and failures stacked; missing routes shown at 0;
    with `interval` (low, high, level) the DS interval as a band around the DS line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = [i * 10 for i in range(11)]
    ok = [r.driving_score for r in metrics.per_route if r.success]
    bad = [r.driving_score for r in metrics.per_route if not r.success] + [0.0] * len(metrics.missing_routes)
    ax.hist([ok, bad], bins=bins, stacked=True, color=[SUCCESS_COLOR, FAIL_COLOR],
            label=[f"success ({len(ok)})", f"not success ({len(bad)}, incl. {len(metrics.missing_routes)} missing)"])
    ax.axvline(metrics.driving_score, color="black", linestyle="--", label=f"DS {metrics.driving_score:.2f}")
    if interval is not None and interval[0] is not None and interval[1] is not None:
        ax.axvspan(interval[0], interval[1], color="black", alpha=0.12,
                   label=f"DS {interval[2]} interval [{interval[0]:.2f}, {interval[1]:.2f}]")
    ax.set_xlabel("route driving score")
    ax.set_ylabel("routes")
    ax.set_xticks(bins)
    ax.set_title(title or "Driving score per route")
    ax.legend()
    return _save(fig, path)


def _error_bars(values: Sequence[float | None], intervals: Sequence[Interval]) -> list[list[float]]:
    """Matplotlib's yerr (distance below, above) from (low, high) intervals; NaN draws no bar."""
    below, above = [], []
    for value, interval in zip(values, intervals):
        if value is None or interval is None or interval[0] is None or interval[1] is None:
            below.append(float("nan"))
            above.append(float("nan"))
        else:
            below.append(max(value - interval[0], 0.0))
            above.append(max(interval[1] - value, 0.0))
    return [below, above]


def _grouped_bars(ax: "plt.Axes", names: Sequence[str], series: Sequence[Sequence[float | None]],
                  labels: Sequence[str], rotation: int = 20,
                  intervals: Sequence[Sequence[Interval]] | None = None,
                  run_values: Sequence[Sequence[Sequence[float]]] | None = None) -> None:
    """Bars per name and series, value on top; with `intervals`, error bars from each (low, high); with
    `run_values`, the value of each run of a group as a dot on its bar (the seed-to-seed spread)."""
    width = 0.8 / max(len(series), 1)
    for i, (values, label) in enumerate(zip(series, labels)):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        heights = [0.0 if v is None else v for v in values]
        yerr = None if intervals is None else _error_bars(values, intervals[i])
        bars = ax.bar(xs, heights, width, label=label, color=COLORS[i % len(COLORS)], yerr=yerr,
                      error_kw={"ecolor": "black", "capsize": 3, "elinewidth": 1})
        for j, (bar, value) in enumerate(zip(bars, values)):
            text = "n/a" if value is None else f"{value:.1f}"
            top = bar.get_height() if yerr is None or yerr[1][j] != yerr[1][j] else bar.get_height() + yerr[1][j]
            # 3+ bars per group are too narrow for a horizontal "92.5": the value then stands upright
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points",
                        rotation=90 if len(series) >= 3 else 0)
            runs = run_values[i][j] if run_values is not None else ()
            if len(runs) > 1:
                ax.plot([bar.get_x() + bar.get_width() / 2] * len(runs), runs, "o", color="white",
                        markeredgecolor="black", markersize=4, zorder=3,
                        label="one run of a group" if i == 0 and j == 0 else None)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=rotation, ha="right" if rotation else "center", fontsize=8)


def abilities(runs: Sequence[Metrics], labels: Sequence[str], path: str | os.PathLike,
              intervals: "Sequence[RunIntervals] | None" = None) -> Path:
    """Ability success rates (and their mean) per run; 'n/a' where not computable; with `intervals` (one
    bootstrap result per run, bench2drive_eval.bootstrap.run_intervals) as error bars."""
    partial = any(m.ability_mean is None for m in runs)
    # Without maps Traffic_Signs is n/a; then the last bar is the mean of the computable abilities, labelled so.
    names = list(runs[0].abilities) + ["Mean of computable" if partial else "Mean"]
    series = [[m.abilities[n] for n in names[:-1]] + [m.ability_mean_of_computable if partial else m.ability_mean]
              for m in runs]
    bounds = None
    if intervals is not None:
        keys = [*names[:-1], "ability_mean_of_computable" if partial else "ability_mean"]
        bounds = [[next(((m.low, m.high) for m in result.metrics if m.metric == key), None) for key in keys]
                  for result in intervals]
    fig, ax = plt.subplots(figsize=(8, 4))
    _grouped_bars(ax, names, series, labels, intervals=bounds)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    level = f" {intervals[0].settings.level}" if intervals else ""
    ax.set_title("Abilities" + (f" (error bars:{level} bootstrap intervals)" if intervals else "")
                 + (" (n/a: not computable, see the notes)" if partial else ""))
    ax.legend()
    return _save(fig, path)


def infractions(runs: Sequence[Metrics], labels: Sequence[str], path: str | os.PathLike,
                intervals: "Sequence[Mapping[str, tuple[float | None, float | None]]] | None" = None) -> Path:
    """Infractions per km driven, per type and run; with `intervals` (per run: kind -> (low, high)) as error bars."""
    names = [INFRACTION_LABELS[k] for k in PLOTTED_INFRACTIONS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    height = 0.8 / len(runs)
    for i, (m, label) in enumerate(zip(runs, labels)):
        ys = [j + (i - (len(runs) - 1) / 2) * height for j in range(len(names))]
        values = [m.infractions_per_km[k] for k in PLOTTED_INFRACTIONS]
        xerr = None if not intervals or not intervals[i] else _error_bars(values, [intervals[i].get(k) for k in PLOTTED_INFRACTIONS])
        ax.barh(ys, values, height, label=label, color=COLORS[i % len(COLORS)], xerr=xerr,
                error_kw={"ecolor": "black", "capsize": 3, "elinewidth": 1})
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("events per km driven")
    ax.set_title("Infractions per km" + (" (error bars: bootstrap intervals over routes)" if intervals else ""))
    ax.legend()
    return _save(fig, path)


def per_town(runs: Sequence[Metrics], labels: Sequence[str], path: str | os.PathLike,
             intervals: "Sequence[Mapping[str, tuple[float | None, float | None]]] | None" = None) -> Path:
    """Mean driving score per town (over evaluated routes), per run; with `intervals` (per run: town ->
    (low, high), bench2drive_eval.bootstrap.group_mean_intervals) as error bars."""
    return _save(per_town_figure(runs, labels, intervals), path)


def per_town_figure(runs: Sequence[Metrics], labels: Sequence[str],
                    intervals: "Sequence[Mapping[str, tuple[float | None, float | None]]] | None" = None) -> "plt.Figure":
    towns = sorted({row.name for m in runs for row in m.per_town})
    series = []
    for m in runs:
        by_name = {row.name: row for row in m.per_town}
        series.append([by_name[t].driving_score if t in by_name and by_name[t].evaluated else None for t in towns])
    # wider with more runs, so bars keep their width; the legend sits below the axis, never on a bar
    fig, ax = plt.subplots(figsize=(max(9.0, 2.0 + 0.22 * len(towns) * (len(runs) + 1)), 4.6 + 0.25 * ((len(runs) - 1) // 4)))
    _grouped_bars(ax, [f"{t}\n({next((r.routes for r in runs[0].per_town if r.name == t), 0)})" for t in towns],
                  series, labels, rotation=0,
                  intervals=None if intervals is None else [[bounds.get(t) for t in towns] for bounds in intervals])
    ax.set_ylabel("mean driving score")
    ax.set_ylim(0, 115 if intervals is not None or len(runs) >= 3 else 105)
    ax.set_title("Driving score per town (routes in brackets" + ("; error bars: bootstrap intervals over the "
                                                                 "town's routes)" if intervals is not None else ")"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(runs), 4), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


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


def ability_bars(c: "Comparison", path: str | os.PathLike) -> Path:
    """Ability success rates of both groups (a group: the mean over its runs) with their intervals."""
    names = list(c.abilities)
    partial = any(v is None for pair in c.abilities.values() for v in pair)
    mean_key = "ability_mean_of_computable" if partial else "ability_mean"
    series, intervals, runs = [], [], []
    for side in (0, 1):
        values = [c.abilities[n][side] for n in names]
        computable = [v for v in values if v is not None]
        values.append(sum(computable) / len(computable) if computable else None)
        series.append(values)
        bounds = []
        for n in [*names, mean_key]:
            interval = c.interval(n)
            group = None if interval is None else (interval.a if side == 0 else interval.b)
            bounds.append(None if group is None else (group.low, group.high))
        intervals.append(bounds)
        runs.append([_runs_of(c, n, side) for n in [*names, mean_key]])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _grouped_bars(ax, [*names, "Mean of computable" if partial else "Mean"], series, [c.label_a, c.label_b],
                  intervals=intervals if c.intervals is not None else None, run_values=runs)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 115)
    title = "Abilities" + (f" with {c.intervals.settings.level} intervals" if c.intervals else "")
    ax.set_title(title + (" (n/a: not computable)" if partial else ""))
    ax.legend(loc="upper center", fontsize=8, ncol=3)
    return _save(fig, path)


def _runs_of(c: "Comparison", metric: str, side: int) -> tuple[float, ...]:
    interval = c.interval(metric)
    if interval is None:
        return ()
    return (interval.a if side == 0 else interval.b).runs


# Shown in the difference panel, on one percentage-point axis (the penalty factor scaled by 100).
DIFFERENCE_SCALE = {"infraction_penalty": 100.0}


def interval_comparison(c: "Comparison", path: str | os.PathLike) -> Path:
    """Left: DS, SR and route completion of both groups with intervals. Right: B - A of every metric with its
    interval against 0 (green: B better, red: A better, grey: no detectable difference)."""
    assert c.intervals is not None
    metrics = c.intervals.metrics
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    headline = [k for k in ("driving_score", "success_rate", "route_completion") if k in metrics]
    series = [[metrics[k].a.value for k in headline], [metrics[k].b.value for k in headline]]
    bounds = [[(metrics[k].a.low, metrics[k].a.high) for k in headline],
              [(metrics[k].b.low, metrics[k].b.high) for k in headline]]
    _grouped_bars(left, headline, series, [c.label_a, c.label_b], rotation=0, intervals=bounds,
                  run_values=[[_runs_of(c, k, side) for k in headline] for side in (0, 1)])
    left.set_ylim(0, 120)
    left.set_title(f"{c.label_a} and {c.label_b} ({c.intervals.settings.level} intervals)")
    left.legend(loc="upper center", fontsize=8, ncol=3)
    names = [k for k in metrics if k != "efficiency"]
    ys = list(range(len(names)))
    for y, name in zip(ys, names):
        d, scale = metrics[name], DIFFERENCE_SCALE.get(name, 1.0)
        if d.low is None or d.high is None:
            continue
        color = SUCCESS_COLOR if d.low > 0 else FAIL_COLOR if d.high < 0 else "#7f7f7f"
        right.plot([d.low * scale, d.high * scale], [y, y], color=color, linewidth=2.5)
        right.plot([d.delta * scale], [y], "o", color=color)
    right.axvline(0.0, color="black", linewidth=0.8)
    right.set_yticks(ys)
    right.set_yticklabels([f"{n} x100" if n in DIFFERENCE_SCALE else n for n in names], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel(f"{c.label_b} - {c.label_a} (points)")
    right.set_title(f"Difference, {c.intervals.settings.resamples} paired resamples over routes")
    return _save(fig, path)
