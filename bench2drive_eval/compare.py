"""The `bench2drive-eval compare` sub-command: two runs (or two groups of runs, e.g. seeds) with confidence intervals
for every metric and its difference, a verdict per metric, seed-to-seed spread, per-route flips and why."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench2drive_eval import bootstrap, plots
from bench2drive_eval.bootstrap import BootstrapSettings, GroupComparison, MetricDifference
from bench2drive_eval.cli import EvalError
from bench2drive_eval.jsonio import dumps_strict, write_json_atomic
from bench2drive_eval.metrics import Metrics, RouteScore, compute_metrics
from bench2drive_eval.output_folder import staged_output
from bench2drive_eval.report import fmt, markdown_table
from bench2drive_eval.results import MergedResults, load_run
from bench2drive_eval.routes import load_routes
from bench2drive_eval.seeds import expand_runs

IGNORED_IN_EXPLANATION = frozenset({"min_speed_infractions"})
HEADLINE = ("driving_score", "success_rate", "route_completion", "infraction_penalty", "efficiency", "smoothness",
            "ability_mean")


@dataclass(frozen=True)
class LoadedRun:
    label: str
    merged: MergedResults
    metrics: Metrics


@dataclass(frozen=True)
class RouteDelta:
    route_id: str
    scenario_type: str
    town: str
    score_a: float | None  # None: no record in that run
    score_b: float | None
    success_a: bool
    success_b: bool
    status_a: str
    status_b: str
    flip: str  # "fail->success", "success->fail" or ""
    why: str  # infractions / status that explain a flip

    @property
    def delta(self) -> float:
        return (self.score_b or 0.0) - (self.score_a or 0.0)


@dataclass(frozen=True)
class Comparison:
    label_a: str
    label_b: str
    headline: dict[str, tuple[float | None, float | None]]  # metric -> (A, B); a group's mean over its runs
    abilities: dict[str, tuple[float | None, float | None]]
    routes: tuple[RouteDelta, ...]  # per-route deltas between the first run of each group
    runs_a: tuple[str, ...] = ()
    runs_b: tuple[str, ...] = ()
    intervals: GroupComparison | None = None  # None: --bootstrap 0
    notes: tuple[str, ...] = ()

    def interval(self, metric: str) -> MetricDifference | None:
        return None if self.intervals is None else self.intervals.metrics.get(metric)

    @property
    def grouped(self) -> bool:
        return len(self.runs_a) > 1 or len(self.runs_b) > 1

    def flips(self, kind: str) -> list[RouteDelta]:
        return [r for r in self.routes if r.flip == kind]

    def flip_reasons(self, kind: str) -> dict[str, int]:
        """How many flipped routes each reason (infraction type, or failing status) explains."""
        counts: dict[str, int] = {}
        for route in self.flips(kind):
            for part in route.why.split("; "):
                key = part.split(" (")[0] if part.startswith("status") else part.split(" x")[0]
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def _entry(self, metric: str, a: float | None, b: float | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"a": a, "b": b, "delta": _delta(a, b)}
        interval = self.interval(metric)
        if interval is not None:
            details = interval.to_dict()
            entry.update(a_low=details["a"]["low"], a_high=details["a"]["high"], b_low=details["b"]["low"],
                         b_high=details["b"]["high"], delta_low=interval.low, delta_high=interval.high,
                         share_b_better=interval.share_b_better, share_tie=interval.share_tie,
                         verdict=interval.verdict, runs_a=details["a"]["runs"], runs_b=details["b"]["runs"],
                         spread_a=interval.a.spread, spread_b=interval.b.spread)
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "label_a": self.label_a, "label_b": self.label_b,
            "runs_a": list(self.runs_a), "runs_b": list(self.runs_b),
            "bootstrap": None if self.intervals is None else {
                **self.intervals.settings.to_dict(), "routes": self.intervals.routes},
            "headline": {k: self._entry(k, a, b) for k, (a, b) in self.headline.items()},
            "abilities": {k: self._entry(k, a, b) for k, (a, b) in self.abilities.items()},
            "flip_reasons": {kind: self.flip_reasons(kind) for kind in ("fail->success", "success->fail")},
            "routes": [dict(asdict(r), delta=r.delta) for r in self.routes],
            "notes": list(self.notes),
        }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _failing(route: RouteScore | None) -> dict[str, int]:
    if route is None:
        return {}
    return {k: v for k, v in route.infractions.items() if k not in IGNORED_IN_EXPLANATION}


def explain_flip(worse: RouteScore | None, better: RouteScore | None) -> str:
    """What the failing attempt had that the successful one did not: infractions, else its status."""
    if worse is None:
        return "no result in the failing run"
    reasons = [f"{k} x{v}" for k, v in sorted(_failing(worse).items()) if v > _failing(better).get(k, 0)]
    if worse.status not in ("Completed", "Perfect"):
        reasons.append(f"status '{worse.status}' (completion {worse.route_completion:.1f}%)")
    return "; ".join(reasons) or f"status '{worse.status}'"


def compare_metrics(a: Metrics, b: Metrics, label_a: str = "A", label_b: str = "B") -> Comparison:
    routes_a = {r.route_id: r for r in a.per_route}
    routes_b = {r.route_id: r for r in b.per_route}
    ids = sorted(set(routes_a) | set(routes_b) | set(a.missing_routes) | set(b.missing_routes),
                 key=lambda x: (not x.isdigit(), int(x) if x.isdigit() else 0, x))
    deltas = []
    for rid in ids:
        ra, rb = routes_a.get(rid), routes_b.get(rid)
        ok_a, ok_b = bool(ra and ra.success), bool(rb and rb.success)
        flip, why = "", ""
        if ok_b and not ok_a:
            flip, why = "fail->success", explain_flip(ra, rb)
        elif ok_a and not ok_b:
            flip, why = "success->fail", explain_flip(rb, ra)
        known = ra or rb
        deltas.append(RouteDelta(
            route_id=rid, scenario_type=known.scenario_type if known else "", town=known.town if known else "",
            score_a=ra.driving_score if ra else None, score_b=rb.driving_score if rb else None,
            success_a=ok_a, success_b=ok_b, status_a=ra.status if ra else "missing",
            status_b=rb.status if rb else "missing", flip=flip, why=why,
        ))
    headline = {k: (getattr(a, k), getattr(b, k)) for k in HEADLINE}
    abilities = {name: (a.abilities.get(name), b.abilities.get(name)) for name in a.abilities}
    return Comparison(label_a, label_b, headline, abilities, tuple(deltas))


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def compare_runs(group_a: list[LoadedRun], group_b: list[LoadedRun], label_a: str, label_b: str,
                 settings: BootstrapSettings | None, routes: dict | None = None, benchmark: str = "v0.0.3",
                 junction_lookup: Any = None) -> Comparison:
    """Two groups of runs (one or more each): group means, intervals and verdicts, and per-route flips
    between the first run of each group."""
    first = compare_metrics(group_a[0].metrics, group_b[0].metrics, label_a, label_b)
    headline = {k: (_mean([getattr(r.metrics, k) for r in group_a]), _mean([getattr(r.metrics, k) for r in group_b]))
                for k in HEADLINE}
    abilities = {name: (_mean([r.metrics.abilities.get(name) for r in group_a]),
                        _mean([r.metrics.abilities.get(name) for r in group_b]))
                 for name in group_a[0].metrics.abilities}
    if any(r.metrics.ability_mean is None for r in (*group_a, *group_b)):
        # Traffic_Signs n/a (no maps): show the mean of the computable abilities, as the intervals do.
        del headline["ability_mean"]
        headline["ability_mean_of_computable"] = (
            _mean([r.metrics.ability_mean_of_computable for r in group_a]),
            _mean([r.metrics.ability_mean_of_computable for r in group_b]))
    notes: list[str] = []
    if len(group_a) > 1 or len(group_b) > 1:
        notes.append(f"per-route flips and the route scatter compare the first run of each group: "
                     f"{group_a[0].label} vs {group_b[0].label}")
    intervals = None
    if settings is not None:
        runs = (*group_a, *group_b)
        universe = bootstrap.route_universe([r.merged for r in runs], routes, max(r.metrics.total_routes for r in runs))
        tables = [bootstrap.run_table(r.label, r.merged, r.metrics, universe, benchmark, junction_lookup)
                  for r in (*group_a, *group_b)]
        intervals = bootstrap.compare_groups(tables[:len(group_a)], tables[len(group_a):], label_a, label_b, settings)
        notes += intervals.notes
    return Comparison(label_a, label_b, headline, abilities, first.routes,
                      tuple(r.label for r in group_a), tuple(r.label for r in group_b), intervals, tuple(notes))


# The infraction penalty is a factor around 0.7-0.8: two decimals would hide its differences.
DIGITS = {"infraction_penalty": 3}


def _signed(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _ci(low: float | None, high: float | None, digits: int = 2) -> str:
    return "" if low is None or high is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


def _spread(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def metric_table(c: Comparison, rows: dict[str, tuple[float | None, float | None]], first_header: str) -> str:
    """Values, intervals, difference with its interval, share of resamples B > A, verdict, seed spread."""
    headers = [first_header, c.label_a, c.label_b, "delta"]
    if c.intervals is not None:
        conf = c.intervals.settings.level
        headers = [first_header, c.label_a, f"{conf} CI", c.label_b, f"{conf} CI", "delta", f"{conf} CI of delta",
                   f"P({c.label_b} > {c.label_a})", "verdict"]
        if c.grouped:
            headers += [f"seed spread {c.label_a}", f"seed spread {c.label_b}"]
    table = []
    for key, (a, b) in rows.items():
        interval, d = c.interval(key), DIGITS.get(key, 2)
        if c.intervals is None:
            table.append([key, fmt(a, d), fmt(b, d), _signed(_delta(a, b), d)])
            continue
        if interval is None:
            row = [key, fmt(a, d), "", fmt(b, d), "", _signed(_delta(a, b), d), "", "", "no interval (not computable)"]
        else:
            row = [key, fmt(a, d), _ci(interval.a.low, interval.a.high, d), fmt(b, d),
                   _ci(interval.b.low, interval.b.high, d), _signed(interval.delta, d), _ci(interval.low, interval.high, d),
                   f"{interval.share_b_better:.1%}", interval.verdict]
        if c.grouped:
            row += ["", ""] if interval is None else [_spread(interval.a.spread, d), _spread(interval.b.spread, d)]
        table.append(row)
    return markdown_table(headers, table)


def _runs_table(c: Comparison) -> str:
    """Each run's value of every metric with an interval: the seed-to-seed spread in full."""
    assert c.intervals is not None
    labels = [*c.runs_a, *c.runs_b]
    rows = []
    for key, interval in c.intervals.metrics.items():
        values = [*(interval.a.runs or (interval.a.value,)), *(interval.b.runs or (interval.b.value,))]
        rows.append([key, *(f"{v:.{DIGITS.get(key, 2)}f}" for v in values)])
    return markdown_table(["metric", *labels], rows)


def render_comparison(c: Comparison, images: dict[str, str] | None = None) -> str:
    up, down = c.flips("fail->success"), c.flips("success->fail")
    parts = [f"# {c.label_b} vs {c.label_a}", ""]
    if c.grouped or c.runs_a:
        parts += [f"- {c.label_a}: " + ", ".join(c.runs_a or (c.label_a,)),
                  f"- {c.label_b}: " + ", ".join(c.runs_b or (c.label_b,)), ""]
    if c.intervals is not None:
        parts += [f"{c.intervals.settings.describe()}; {c.intervals.routes} routes. A group's value is the mean "
                  "over its runs; 'seed spread' is its largest minus smallest run value.", ""]
    parts += [metric_table(c, c.headline, "metric"), "", "## Abilities", metric_table(c, c.abilities, "ability")]
    if c.intervals is not None and c.grouped:
        parts += ["", "## Every run", _runs_table(c)]
    if c.notes:
        parts += ["", "## Notes", *[f"- {n}" for n in c.notes]]
    if images:
        parts += ["", *[f"![{name}]({file})" for name, file in images.items()]]
    parts += ["", "## Why routes flipped, by infraction",
              "Number of flipped routes whose failing attempt had each infraction (or failing status).", "",
              markdown_table(["reason", f"fail->success ({c.label_a} failed)", f"success->fail ({c.label_b} failed)"],
                             [[reason, c.flip_reasons("fail->success").get(reason, 0),
                               c.flip_reasons("success->fail").get(reason, 0)]
                              for reason in dict.fromkeys([*c.flip_reasons("fail->success"),
                                                           *c.flip_reasons("success->fail")])])]
    for title, rows in ((f"Routes that became successes with {c.label_b} ({len(up)})", up),
                        (f"Routes that became failures with {c.label_b} ({len(down)})", down)):
        parts += ["", f"## {title}", "Why: what the failing run had that the successful one did not.", "",
                  markdown_table(["route", "scenario", "town", c.label_a, c.label_b, "why"],
                                 [[r.route_id, r.scenario_type, r.town, fmt(r.score_a), fmt(r.score_b), r.why]
                                  for r in rows])]
    changed = sorted((r for r in c.routes if abs(r.delta) >= 0.005), key=lambda r: r.delta)
    shown = changed if len(changed) <= 20 else changed[:10] + changed[-10:]
    parts += ["", f"## Largest per-route driving score changes ({len(shown)} of {len(changed)} changed routes)",
              markdown_table(["route", "scenario", c.label_a, c.label_b, "delta"],
                             [[r.route_id, r.scenario_type, fmt(r.score_a), fmt(r.score_b), f"{r.delta:+.2f}"]
                              for r in shown]), ""]
    return "\n".join(parts)


def routes_csv(c: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["route_id", "scenario_type", "town", f"ds_{c.label_a}", f"ds_{c.label_b}", "delta",
                     f"success_{c.label_a}", f"success_{c.label_b}", f"status_{c.label_a}", f"status_{c.label_b}",
                     "flip", "why"])
    for r in c.routes:
        writer.writerow([r.route_id, r.scenario_type, r.town, "" if r.score_a is None else f"{r.score_a:.4f}",
                         "" if r.score_b is None else f"{r.score_b:.4f}", f"{r.delta:.4f}", int(r.success_a),
                         int(r.success_b), r.status_a, r.status_b, r.flip, r.why])
    return buffer.getvalue()


def write_comparison(c: Comparison, group_a: list[LoadedRun], group_b: list[LoadedRun], out: str | Path) -> Path:
    """compare.md, compare.json, compare_routes.csv and the plots, all or nothing (see output_folder)."""
    out = Path(out)
    runs = [*group_a, *group_b]
    with staged_output(out) as stage:
        images = {}
        if c.intervals is not None:
            images["metrics with intervals"] = plots.interval_comparison(c, stage / "compare_intervals.png").name
        images.update({
            "abilities": plots.ability_bars(c, stage / "compare_abilities.png").name,
            "per-route scores": plots.route_scatter(group_a[0].metrics, group_b[0].metrics, group_a[0].label,
                                                    group_b[0].label, stage / "compare_routes.png").name,
            "infractions": plots.infractions([r.metrics for r in runs], [r.label for r in runs],
                                             stage / "compare_infractions.png").name,
            "towns": plots.per_town([r.metrics for r in runs], [r.label for r in runs], stage / "compare_towns.png").name,
        })
        write_json_atomic(stage / "compare.json", c.to_dict())
        # The staging folder is moved into place as a whole, so plain writes are enough here.
        (stage / "compare.md").write_text(render_comparison(c, images), encoding="utf-8")
        (stage / "compare_routes.csv").write_text(routes_csv(c), encoding="utf-8")
    return out / "compare.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="RUN_A RUN_B: baseline and compared run (folder, result "
                        "JSON, or a multi-seed run folder, read as the group of its seeds)")
    parser.add_argument("--a", nargs="+", metavar="RUN", dest="group_a",
                        help="group A instead of RUN_A: one or more runs of the baseline (e.g. its seeds)")
    parser.add_argument("--b", nargs="+", metavar="RUN", dest="group_b", help="group B instead of RUN_B")
    parser.add_argument("--label-a", default="", help="name of A in tables (default: its file name)")
    parser.add_argument("--label-b", default="", help="name of B in tables (default: its file name)")
    parser.add_argument("--routes", help="route XML shared by both runs")
    parser.add_argument("--benchmark", choices=("v0.0.3", "v0.0.4"), default="v0.0.3")
    parser.add_argument("--carla-root", help="CARLA folder with OpenDRIVE maps (Traffic_Signs junction check)")
    parser.add_argument("--out", help="folder for compare.md, compare.json, compare_routes.csv and PNG plots")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")
    bootstrap.add_arguments(parser)


def _groups(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.group_a or args.group_b:
        if not (args.group_a and args.group_b) or args.runs:
            raise EvalError("give either RUN_A RUN_B or both --a RUN... and --b RUN...")
        return list(args.group_a), list(args.group_b)
    if len(args.runs) != 2:
        raise EvalError(f"expected RUN_A RUN_B (or --a/--b groups), got {len(args.runs)} run argument(s)")
    return [args.runs[0]], [args.runs[1]]


def _group_label(paths: list[str], runs: list[tuple[str, Path]]) -> str:
    if len(paths) == 1:
        return Path(paths[0]).stem
    return " + ".join(label for label, _ in runs)


def main(args: argparse.Namespace) -> int:
    if args.routes and not Path(args.routes).is_file():
        raise FileNotFoundError(f"--routes {args.routes}: route file not found")
    settings = bootstrap.settings_from_args(args)
    paths_a, paths_b = _groups(args)
    expanded_a = [run for p in paths_a for run in expand_runs(p)]
    expanded_b = [run for p in paths_b for run in expand_runs(p)]
    label_a = args.label_a or _group_label(paths_a, expanded_a)
    label_b = args.label_b or _group_label(paths_b, expanded_b)
    if label_a == label_b:
        label_a, label_b = f"A:{label_a}", f"B:{label_b}"
    routes = load_routes(args.routes) if args.routes else None
    lookup = bootstrap.junction_lookup_for(args.carla_root)
    groups: list[list[LoadedRun]] = []
    for expanded in (expanded_a, expanded_b):
        group = []
        for label, path in expanded:
            merged = load_run(path)
            group.append(LoadedRun(label, merged, compute_metrics(merged, routes=routes, benchmark=args.benchmark,
                                                                  junction_lookup=lookup)))
        groups.append(group)
    labels = [r.label for g in groups for r in g]
    if len(set(labels)) != len(labels):
        for group, prefix in zip(groups, ("A", "B")):
            group[:] = [LoadedRun(f"{prefix}:{r.label}", r.merged, r.metrics) for r in group]
    comparison = compare_runs(groups[0], groups[1], label_a, label_b, settings, routes, args.benchmark, lookup)
    if args.out:
        path = write_comparison(comparison, groups[0], groups[1], args.out)
    if args.json:
        print(dumps_strict(comparison.to_dict(), "stdout"))
    else:
        print(render_comparison(comparison))
    if args.out:
        print(f"wrote {path} and its plots", file=sys.stderr if args.json else sys.stdout)
    errors = [e for g in groups for r in g for e in r.metrics.errors]
    for error in errors:
        print(f"bench2drive-eval compare: input problem: {error}", file=sys.stderr)
    return 1 if errors else 0
