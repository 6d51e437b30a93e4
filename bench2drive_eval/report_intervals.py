"""The bootstrap intervals `bench2drive-eval report` shows next to each of its numbers.

The run's headline metrics and abilities come from bootstrap.run_intervals (routes resampled, as
`metrics` prints them); a town's or scenario type's mean driving score resamples that group's evaluated
routes (bootstrap.group_mean_intervals); an infraction rate resamples the evaluated routes
(bootstrap.per_km_intervals)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bench2drive_eval import bootstrap
from bench2drive_eval.metrics import Metrics, infraction_value, infractions_per_km
from bench2drive_eval.results import MergedResults

Bounds = tuple[float | None, float | None]  # (low, high); None where not computable


@dataclass(frozen=True)
class ReportIntervals:
    """What the report shows next to its numbers: the run's intervals and each town's / scenario type's."""

    run: bootstrap.RunIntervals
    towns: dict[str, Bounds] = field(default_factory=dict)
    scenarios: dict[str, Bounds] = field(default_factory=dict)
    infractions: dict[str, Bounds] = field(default_factory=dict)  # per km (off-road: km); empty if not matched

    @property
    def level(self) -> str:
        return self.run.settings.level

    def of(self, metric: str) -> Bounds | None:
        return next(((m.low, m.high) for m in self.run.metrics if m.metric == metric), None)


def report_intervals(label: str, merged: MergedResults, metrics: Metrics, settings: bootstrap.BootstrapSettings | None,
                     routes_file: str | None, carla_root: str | None) -> ReportIntervals | None:
    if settings is None:
        return None
    from bench2drive_eval.routes import load_routes

    routes = load_routes(routes_file) if routes_file else None
    run = bootstrap.run_intervals(label, merged, metrics, settings, routes, metrics.benchmark,
                                  bootstrap.junction_lookup_for(carla_root))

    def by(key: str) -> dict[str, list[float]]:
        groups: dict[str, list[float]] = {}
        for route in metrics.per_route:
            groups.setdefault(getattr(route, key), []).append(route.driving_score)
        return groups

    return ReportIntervals(run, bootstrap.group_mean_intervals(by("town"), settings),
                           bootstrap.group_mean_intervals(by("scenario_type"), settings),
                           infraction_intervals(merged, metrics, settings))


def infraction_intervals(merged: MergedResults, metrics: Metrics, settings: bootstrap.BootstrapSettings) -> dict[str, Bounds]:
    """Per-km infraction rates over resampled evaluated routes; {} when the records do not reproduce the
    point estimate (then no interval is shown rather than one of other numbers)."""
    scored = {r.route_id for r in metrics.per_route}
    records = [r for r in merged.records if (r.route_id if r.repetition == 0 else r.route_key) in scored]
    point, _ = infractions_per_km(records)
    if len(records) != len(metrics.per_route) or any(
            not math.isclose(point[k], v, rel_tol=1e-9, abs_tol=1e-12) for k, v in metrics.infractions_per_km.items()):
        return {}
    kinds = list(metrics.infractions_per_km)
    values = np.array([[infraction_value(r, k) for k in kinds] for r in records], dtype=np.float64).reshape(len(records), len(kinds))
    km = np.array([r.route_length / 1000.0 * r.score_route / 100.0 for r in records])
    bounds = bootstrap.per_km_intervals(values, km, [k != "outside_route_lanes" for k in kinds], settings)
    return dict(zip(kinds, bounds))
