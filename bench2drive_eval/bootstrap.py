"""Paired bootstrap over route ids: confidence intervals for one run, and for the difference between two groups of runs.

Routes are the resampling unit. One draw picks N route ids with replacement from the N routes of the route
set; every run (of both groups) is scored on that same draw, so pairs stay together. A metric is scored on a
draw exactly as `compute_metrics` scores a run: each route's contribution (numerator, denominator) comes from
calling `compute_metrics` on that route alone, and the contributions are checked to add up to the full run's
point estimate. When they do not (a metric that is not a sum over routes), the draw is scored by calling
`compute_metrics` on the resampled records themselves: slow, but still exact.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from bench2drive_eval.abilities import ABILITY_NAMES, JunctionLookup
from bench2drive_eval.cli import EvalError
from bench2drive_eval.metrics import BENCHMARK_ROUTE_COUNT, Metrics, compute_metrics
from bench2drive_eval.results import MergedResults, RouteRecord, route_key
from bench2drive_eval.routes import Route

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
METHOD = "paired percentile bootstrap over route ids"
# Headline metrics that are a mean over routes; efficiency only over the routes that have a value.
ROUTE_METRICS = ("driving_score", "success_rate", "route_completion", "infraction_penalty", "efficiency")
METRIC_LABELS = {
    "driving_score": "Driving Score", "success_rate": "Success Rate (%)", "route_completion": "Route completion",
    "infraction_penalty": "Infraction penalty", "efficiency": "Efficiency",
    "ability_mean": "Ability mean", "ability_mean_of_computable": "Ability mean (computable)",
}
CHUNK = 2_000  # resamples scored at once (bounds memory: CHUNK x routes counts)
RELATIVE_TOLERANCE = 1e-9
PHANTOM_PREFIX = "~no-record-"  # route slots counted by the 220 denominator that no run has a record for
RESAMPLED_SUFFIX = re.compile(r"#\d+$")  # '<id>#<k>': the k-th route of a resampled run (see resampled_run)


class BootstrapError(EvalError):
    """Bad bootstrap settings or runs that cannot be paired; one line."""


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 100:
            raise BootstrapError(f"--bootstrap must be an integer >= 100 (or 0 to turn intervals off), got {self.resamples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BootstrapError(f"--bootstrap-seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.confidence, float) or not math.isfinite(self.confidence) or not 0.5 <= self.confidence < 1.0:
            raise BootstrapError(f"--confidence must be a number in [0.5, 1), got {self.confidence!r}")

    @property
    def level(self) -> str:
        """The confidence level as a percentage: '95%', '97.5%'."""
        return f"{round(self.confidence * 100, 6):g}%"

    def describe(self) -> str:
        return f"{self.level} intervals: {METHOD}, {self.resamples} resamples, seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "resamples": self.resamples, "seed": self.seed, "confidence": self.confidence}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--bootstrap / --bootstrap-seed / --confidence, shared by `metrics` and `compare`."""
    group = parser.add_argument_group("confidence intervals (paired bootstrap over routes)")
    group.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                       help=f"number of resamples (default {DEFAULT_RESAMPLES}; 0: no intervals)")
    group.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, metavar="SEED",
                       help=f"seed of the resampling (default {DEFAULT_SEED}); the same seed gives the same intervals")
    group.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                       help=f"confidence level of the intervals (default {DEFAULT_CONFIDENCE})")


def settings_from_args(args: argparse.Namespace) -> BootstrapSettings | None:
    if args.bootstrap == 0:
        return None
    return BootstrapSettings(args.bootstrap, args.bootstrap_seed, args.confidence)


# ---- the route set and each run's per-route contributions ---------------------------------------------------


class CachedLookup:
    """A junction lookup that traces each route once: the point estimates, the per-route split and the exact
    path ask about the same routes (a resampled copy has a new id but the same town and keypoints)."""

    def __init__(self, lookup: JunctionLookup) -> None:
        self._lookup = lookup
        self._results: dict[tuple, Any] = {}
        self.planner_note = getattr(lookup, "planner_note", None)

    def __call__(self, route: Route) -> "tuple[int, int] | None":
        key = (RESAMPLED_SUFFIX.sub("", route.route_id), route.town, route.keypoints)
        if key not in self._results:
            try:
                self._results[key] = ("value", self._lookup(route))
            except Exception as error:  # JunctionUnavailable and the like: the same answer every time
                self._results[key] = ("error", error)
        kind, value = self._results[key]
        if kind == "error":
            raise value
        return value


def junction_lookup_for(carla_root: str | None) -> CachedLookup | None:
    """The Traffic_Signs junction check on CARLA_ROOT's maps, cached per route; None without --carla-root."""
    if not carla_root:
        return None
    from bench2drive_eval.junctions import JunctionChecker

    return CachedLookup(JunctionChecker(carla_root))


class _WithoutProgressBar:
    """The same lookup, for the one-route calls: compute_abilities shows its junction progress bar only for a
    truthy lookup, and hundreds of one-route bars would bury the real one."""

    def __init__(self, lookup: JunctionLookup) -> None:
        self._lookup = lookup
        self.planner_note = getattr(lookup, "planner_note", None)

    def __call__(self, route: Route) -> "tuple[int, int] | None":
        return self._lookup(route)

    def __bool__(self) -> bool:
        return False


def _quiet(lookup: JunctionLookup | None) -> JunctionLookup | None:
    return None if lookup is None else _WithoutProgressBar(lookup)


def route_universe(runs: Sequence[MergedResults], routes: Mapping[str, Route] | None,
                   slots: int = BENCHMARK_ROUTE_COUNT) -> dict[str, Route]:
    """The routes to resample: the route file's, else every route id with a record plus empty slots up to `slots`.

    Without a route file compute_metrics divides by a route count (`Metrics.total_routes`, 220 upstream) that
    can exceed the records: the slots no run has a record for count 0 there, so they are resampled as empty
    routes here.
    """
    if routes is not None:
        return dict(routes)
    universe: dict[str, Route] = {}
    for run in runs:
        for record in run.records:
            universe.setdefault(record.route_id, Route(record.route_id, record.town, (record.scenario_type,), ()))
    for i in range(slots - len(universe)):
        universe[f"{PHANTOM_PREFIX}{i}"] = Route(f"{PHANTOM_PREFIX}{i}", "", (), ())
    return universe


def metric_names(point: Metrics) -> list[str]:
    """What gets an interval: the route metrics that have a value, the computable abilities, their mean."""
    names = [k for k in ROUTE_METRICS if getattr(point, k) is not None]
    names += [a for a in ABILITY_NAMES if point.abilities.get(a) is not None]
    if point.ability_mean is not None:
        names.append("ability_mean")
    elif point.ability_mean_of_computable is not None:
        names.append("ability_mean_of_computable")
    return names


def point_value(metrics: Metrics, name: str) -> float | None:
    if name in metrics.abilities:
        return metrics.abilities[name]
    return getattr(metrics, name)


@dataclass
class RunTable:
    """One run over the route set: per-route (numerator, denominator) of every metric, and how to score a draw."""

    label: str
    point: Metrics
    units: tuple[str, ...]
    route_map: dict[str, Route]
    records: dict[str, tuple[RouteRecord, ...]]  # unit -> its records (all repetitions)
    benchmark: str
    junction_lookup: JunctionLookup | None
    names: list[str]
    numerators: np.ndarray  # (units, ratio columns): the route metrics, then successes per ability
    denominators: np.ndarray
    additive: bool
    mismatch: str = ""  # why the contributions do not reproduce the point estimate

    @property
    def ability_columns(self) -> list[str]:
        return [n for n in self.names if n in ABILITY_NAMES]

    def _ratio_columns(self) -> list[str]:
        return [n for n in self.names if n in ROUTE_METRICS] + self.ability_columns

    def _finish(self, ratios: np.ndarray) -> np.ndarray:
        """Ratio columns (in %) -> one column per name, adding the ability mean where asked for."""
        columns = self._ratio_columns()
        out = np.empty((ratios.shape[0], len(self.names)))
        for j, name in enumerate(self.names):
            if name in columns:
                out[:, j] = ratios[:, columns.index(name)]
            else:  # the mean of the (computable) abilities, as compute_metrics takes it
                picked = [columns.index(a) for a in self.ability_columns]
                out[:, j] = ratios[:, picked].mean(axis=1)
        return out

    def scores(self, counts: np.ndarray) -> np.ndarray:
        """Each metric on each draw, from per-route counts (draws x units); NaN where a denominator is 0."""
        ratios = ratio_samples(counts, self.numerators, self.denominators)
        scale = np.array([1.0 if n in ROUTE_METRICS else 100.0 for n in self._ratio_columns()])
        return self._finish(ratios * scale)

    def exact_scores(self, indices: np.ndarray) -> np.ndarray:
        """Each metric on each draw by scoring the resampled records with compute_metrics (the slow, exact path)."""
        out = np.full((indices.shape[0], len(self.names)), np.nan)
        for row, draw in enumerate(tqdm(indices, desc=f"bootstrap {self.label} (exact path)", unit="resample",
                                        leave=False, disable=None)):
            metrics = compute_metrics(*resampled_run(self, draw), benchmark=self.benchmark,
                                      junction_lookup=_quiet(self.junction_lookup))
            for j, name in enumerate(self.names):
                value = point_value(metrics, name)
                out[row, j] = np.nan if value is None else value
        return out


def resampled_run(table: RunTable, draw: np.ndarray) -> tuple[MergedResults, dict[str, Route]]:
    """The records of a draw as a run of their own: the k-th drawn route gets the id '<id>#<k>'."""
    route_map: dict[str, Route] = {}
    records: list[RouteRecord] = []
    for position, index in enumerate(draw):
        unit = table.units[int(index)]
        new_id = f"{unit}#{position}"
        route_map[new_id] = dataclasses.replace(table.route_map[unit], route_id=new_id)
        records += [dataclasses.replace(r, route_id=new_id, route_key=route_key(new_id, r.repetition))
                    for r in table.records.get(unit, ())]
    merged = MergedResults(records=tuple(records), sources=(), by_key={r.route_key: r for r in records})
    return merged, route_map


def run_table(label: str, merged: MergedResults, point: Metrics, universe: Mapping[str, Route], benchmark: str,
              junction_lookup: JunctionLookup | None = None) -> RunTable:
    """Split a run into per-route contributions by scoring each route alone with compute_metrics."""
    names = metric_names(point)
    units = tuple(universe)
    by_unit: dict[str, list[RouteRecord]] = {}
    for record in merged.records:
        if record.route_id in universe:
            by_unit.setdefault(record.route_id, []).append(record)
    route_cols = [n for n in names if n in ROUTE_METRICS]
    ability_cols = [n for n in names if n in ABILITY_NAMES]
    numerators = np.zeros((len(units), len(route_cols) + len(ability_cols)))
    denominators = np.zeros_like(numerators)
    for i, unit in enumerate(units):
        records = tuple(by_unit.get(unit, ()))
        alone = compute_metrics(MergedResults(records=records, sources=(), by_key={r.route_key: r for r in records}),
                                routes={unit: universe[unit]}, benchmark=benchmark,
                                junction_lookup=_quiet(junction_lookup))
        for j, name in enumerate(route_cols):
            value = getattr(alone, name)
            numerators[i, j], denominators[i, j] = (0.0, 0.0) if value is None else (value, 1.0)
        for j, name in enumerate(ability_cols, start=len(route_cols)):
            numerators[i, j], denominators[i, j] = alone.ability_counts[name]
    table = RunTable(label, point, units, dict(universe), {u: tuple(r) for u, r in by_unit.items()}, benchmark,
                     junction_lookup, names, numerators, denominators, additive=True)
    full = table.scores(np.ones((1, len(units))))[0]
    wrong = [f"{name} {full[j]:.6g} vs {point_value(point, name):.6g}" for j, name in enumerate(names)
             if not math.isclose(full[j], point_value(point, name), rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-9)]
    if wrong:
        table.additive = False
        table.mismatch = ("per-route contributions do not add up to the point estimate (" + ", ".join(wrong)
                          + "); resamples scored with compute_metrics itself (exact, slower)")
    return table


# ---- drawing and summarising ---------------------------------------------------------------------------------


def draws(n_units: int, settings: BootstrapSettings) -> Iterator[np.ndarray]:
    """The resampled route indices, CHUNK draws at a time; the same seed gives the same draws."""
    rng = np.random.default_rng(settings.seed)
    done = 0
    while done < settings.resamples:
        size = min(CHUNK, settings.resamples - done)
        yield rng.integers(0, n_units, size=(size, n_units))
        done += size


def counts_of(indices: np.ndarray, n_units: int) -> np.ndarray:
    """How often each route is drawn, per draw (draws x units)."""
    rows = indices.shape[0]
    flat = (indices + (np.arange(rows) * n_units)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_units).reshape(rows, n_units).astype(np.float64)


def ratio_samples(counts: np.ndarray, numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """sum(count x numerator) / sum(count x denominator) per draw and column; NaN where nothing was counted."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ numerators) / (counts @ denominators)


def resample_tables(tables: Sequence[RunTable], settings: BootstrapSettings) -> list[np.ndarray]:
    """Every run's metrics on the same draws: one (resamples x metrics) array per run."""
    n_units = len(tables[0].units)
    if any(t.units != tables[0].units for t in tables):
        raise BootstrapError("the runs were split over different route sets; give them the same --routes")
    parts: list[list[np.ndarray]] = [[] for _ in tables]
    for indices in draws(n_units, settings):
        counts = counts_of(indices, n_units)
        for part, table in zip(parts, tables):
            part.append(table.scores(counts) if table.additive else table.exact_scores(indices))
    return [np.concatenate(p) for p in parts]


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class MetricInterval:
    """One metric of one run (or a group's mean over its runs) with its interval."""

    metric: str
    value: float
    low: float | None
    high: float | None
    undefined_share: float  # resamples where the metric has no value (an ability with no drawn route)
    runs: tuple[float, ...] = ()  # each run's value, for a group

    @property
    def spread(self) -> float | None:
        """Seed-to-seed spread: largest minus smallest run value (None for a single run)."""
        return max(self.runs) - min(self.runs) if len(self.runs) > 1 else None


@dataclass(frozen=True)
class RunIntervals:
    label: str
    settings: BootstrapSettings
    routes: int
    metrics: tuple[MetricInterval, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, **self.settings.to_dict(), "routes": self.routes,
                "metrics": {m.metric: {"value": m.value, "low": m.low, "high": m.high,
                                       "undefined_share": m.undefined_share} for m in self.metrics},
                "notes": list(self.notes)}

    def format(self) -> str:
        lines = [f"Confidence intervals ({self.settings.describe()}, {self.routes} routes):"]
        for m in self.metrics:
            lines.append(f"  {METRIC_LABELS.get(m.metric, m.metric):<26} {m.value:7.2f}  [{_num(m.low)}, {_num(m.high)}]")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _group_samples(samples: Sequence[np.ndarray]) -> np.ndarray:
    """A group's value on each draw: the mean over its runs (undefined if any run's is)."""
    return np.mean(np.stack(samples), axis=0)


def _notes(tables: Sequence[RunTable]) -> list[str]:
    notes = [f"{t.label}: {t.mismatch}" for t in tables if t.mismatch]
    phantoms = sum(u.startswith(PHANTOM_PREFIX) for u in tables[0].units)
    if phantoms:
        notes.append(f"no route file: {phantoms} of the {len(tables[0].units)} route slots have no record in any run "
                     "and are resampled as empty routes (give --routes to resample the real route set)")
    return notes


def run_intervals(label: str, merged: MergedResults, point: Metrics, settings: BootstrapSettings,
                  routes: Mapping[str, Route] | None, benchmark: str,
                  junction_lookup: JunctionLookup | None = None) -> RunIntervals:
    """Intervals for one run's metrics."""
    universe = route_universe([merged], routes, point.total_routes)
    table = run_table(label, merged, point, universe, benchmark, junction_lookup)
    samples = resample_tables([table], settings)
    metrics = tuple(_summary(n, [table], samples[0][:, j], settings.confidence) for j, n in enumerate(table.names))
    return RunIntervals(label, settings, len(table.units), metrics, tuple(_notes([table])))


def group_mean_intervals(groups: Mapping[str, Sequence[float]], settings: BootstrapSettings
                         ) -> dict[str, tuple[float | None, float | None]]:
    """The interval of each group's mean (a town's or scenario type's mean driving score), resampling the
    group's own routes; (None, None) for a group of fewer than 2 routes (nothing to resample)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for name, values in groups.items():
        array = np.asarray(values, dtype=np.float64)
        if array.size < 2:
            out[name] = (None, None)
            continue
        means = np.concatenate([array[indices].mean(axis=1) for indices in draws(array.size, settings)])
        out[name] = percentile_interval(means, settings.confidence)
    return out


def per_km_intervals(values: np.ndarray, km: np.ndarray, per_km: Sequence[bool], settings: BootstrapSettings,
                     floor_km: float = 0.001) -> list[tuple[float | None, float | None]]:
    """Intervals of infraction rates over resampled routes: column j of `values` (routes x kinds) summed over
    the drawn routes, divided by their summed km (at least `floor_km`, as the point estimate) where per_km[j]."""
    values = np.asarray(values, dtype=np.float64)
    km = np.asarray(km, dtype=np.float64)
    if values.shape[0] < 2:
        return [(None, None)] * values.shape[1]
    parts = []
    for indices in draws(values.shape[0], settings):
        counts = counts_of(indices, values.shape[0])
        totals = counts @ values
        parts.append(np.where(np.asarray(per_km), totals / np.maximum(counts @ km, floor_km)[:, None], totals))
    samples = np.concatenate(parts)
    return [percentile_interval(samples[:, j], settings.confidence) for j in range(values.shape[1])]


# ---- two groups ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDifference:
    metric: str
    a: MetricInterval
    b: MetricInterval
    delta: float
    low: float | None
    high: float | None
    share_b_better: float  # of the resamples where both have a value
    share_tie: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"value": self.a.value, "low": self.a.low, "high": self.a.high, "runs": list(self.a.runs),
                  "spread": self.a.spread},
            "b": {"value": self.b.value, "low": self.b.low, "high": self.b.high, "runs": list(self.b.runs),
                  "spread": self.b.spread},
            "delta": self.delta, "delta_low": self.low, "delta_high": self.high,
            "share_b_better": self.share_b_better, "share_tie": self.share_tie, "verdict": self.verdict,
        }


@dataclass(frozen=True)
class GroupComparison:
    label_a: str
    label_b: str
    runs_a: tuple[str, ...]
    runs_b: tuple[str, ...]
    settings: BootstrapSettings
    routes: int
    metrics: dict[str, MetricDifference]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"label_a": self.label_a, "label_b": self.label_b, "runs_a": list(self.runs_a),
                "runs_b": list(self.runs_b), **self.settings.to_dict(), "routes": self.routes,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "notes": list(self.notes)}


def verdict(low: float | None, high: float | None, label_a: str, label_b: str, level: str,
            delta: float, spreads: Sequence[float | None]) -> str:
    """Plain words; every metric here is better when higher (the penalty is a factor, 1 = no infraction)."""
    if low is None or high is None:
        return "no interval (metric undefined on every resample)"
    if low > 0:
        text = f"{label_b} better"
    elif high < 0:
        text = f"{label_a} better"
    else:
        return f"no detectable difference at {level}"
    largest = max((s for s in spreads if s is not None), default=None)
    if largest is not None and abs(delta) <= largest:
        text += " (but the gap is within the seed-to-seed spread)"
    return text


def compare_groups(tables_a: Sequence[RunTable], tables_b: Sequence[RunTable], label_a: str, label_b: str,
                   settings: BootstrapSettings) -> GroupComparison:
    """Per metric: each group's mean over its runs with an interval, the difference B - A with its interval,
    the share of resamples where B beats A, a verdict, and each group's seed-to-seed spread."""
    names = [n for n in tables_a[0].names if all(n in t.names for t in (*tables_a, *tables_b))]
    tables = [*tables_a, *tables_b]
    samples = resample_tables(tables, settings)
    results: dict[str, MetricDifference] = {}
    for name in names:
        cols = [s[:, t.names.index(name)] for s, t in zip(samples, tables)]
        sa, sb = _group_samples(cols[:len(tables_a)]), _group_samples(cols[len(tables_a):])
        a = _summary(name, tables_a, sa, settings.confidence)
        b = _summary(name, tables_b, sb, settings.confidence)
        diff = sb - sa
        defined = np.isfinite(diff)
        low, high = percentile_interval(diff, settings.confidence)
        n_defined = max(int(defined.sum()), 1)
        results[name] = MetricDifference(
            name, a, b, b.value - a.value, low, high,
            share_b_better=float((diff[defined] > 1e-12).sum() / n_defined),
            share_tie=float((np.abs(diff[defined]) <= 1e-12).sum() / n_defined),
            verdict=verdict(low, high, label_a, label_b, settings.level, b.value - a.value, (a.spread, b.spread)),
        )
    notes = _notes(tables)
    dropped = [n for n in {*tables_a[0].names, *tables_b[0].names} if n not in names]
    if dropped:
        notes.append("no interval where a run has no value: " + ", ".join(sorted(dropped)))
    return GroupComparison(label_a, label_b, tuple(t.label for t in tables_a), tuple(t.label for t in tables_b),
                           settings, len(tables[0].units), results, tuple(notes))


def _summary(name: str, tables: Sequence[RunTable], column: np.ndarray, confidence: float) -> MetricInterval:
    runs = tuple(float(point_value(t.point, name)) for t in tables)
    low, high = percentile_interval(column, confidence)
    return MetricInterval(name, float(np.mean(runs)), low, high, float(np.mean(~np.isfinite(column))),
                          runs if len(runs) > 1 else ())


# ---- the `metrics` command's interval block ------------------------------------------------------------------

INTERVALS_FILE = "intervals.json"


def single_run_intervals(args: argparse.Namespace, merged: MergedResults, metrics: Metrics) -> RunIntervals | None:
    """The intervals `bench2drive-eval metrics` prints for its run, or None with --bootstrap 0."""
    settings = settings_from_args(args)
    if settings is None:
        return None
    from bench2drive_eval.routes import load_routes

    routes = load_routes(args.routes) if args.routes else None
    lookup = junction_lookup_for(args.carla_root)
    label = ", ".join(str(p) for p in args.paths)
    return run_intervals(label, merged, metrics, settings, routes, args.benchmark, lookup)


def json_part(intervals: RunIntervals | None) -> dict[str, Any]:
    return {} if intervals is None else {"intervals": intervals.to_dict()}


def text_part(intervals: RunIntervals | None) -> str:
    return "" if intervals is None else "\n\n" + intervals.format()
