"""The paired route bootstrap: known effects, calibration under the null, determinism, exactness, published files."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from bench2drive_eval import bootstrap
from bench2drive_eval.bootstrap import BootstrapError, BootstrapSettings
from bench2drive_eval.metrics import compute_metrics
from bench2drive_eval.results import MergedResults, RouteRecord, load_run, route_key
from bench2drive_eval.routes import Route, load_routes

# One scenario type per ability (Traffic_Signs needs the maps, so it stays n/a here).
SCENARIOS = ("ParkingCutIn", "Accident", "HighwayExit", "InvadingTurn", "DynamicObjectCrossing")


def make_record(rid: str, score: float, success: bool, penalty: float = 1.0) -> RouteRecord:
    return RouteRecord(
        route_key=route_key(rid), route_id=rid, repetition=0, scenario_name=f"{SCENARIOS[int(rid) % 5]}_1",
        town="Town01", status="Completed", infractions={} if success else {"collisions_vehicle": ("hit",)},
        score_route=min(100.0, score / penalty), score_penalty=penalty, score_composed=score, route_length=500.0,
        duration_game=1.0, duration_system=1.0, save_name=f"route_{rid}", source="synthetic", position=int(rid))


def make_run(scores: np.ndarray, successes: np.ndarray) -> MergedResults:
    records = tuple(make_record(str(i), float(s), bool(ok), penalty=0.6 if not ok else 1.0)
                    for i, (s, ok) in enumerate(zip(scores, successes)))
    return MergedResults(records=records, sources=("synthetic",), by_key={r.route_key: r for r in records})


def make_routes(n: int) -> dict[str, Route]:
    return {str(i): Route(str(i), "Town01", (SCENARIOS[i % 5],), ()) for i in range(n)}


def tables(runs: list[MergedResults], routes: dict[str, Route]) -> list[bootstrap.RunTable]:
    return [bootstrap.run_table(f"run{i}", run, compute_metrics(run, routes=routes), routes, "v0.0.3")
            for i, run in enumerate(runs)]


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(7)
    n = 220
    successes = rng.random(n) < 0.5
    scores = np.where(successes, 90.0, rng.uniform(0, 80, n))
    return scores, successes, make_routes(n)


def test_constant_improvement_on_every_route_excludes_zero(synthetic):
    scores, successes, routes = synthetic
    a, b = tables([make_run(scores, successes), make_run(scores + 5.0, successes)], routes)
    assert a.additive and b.additive
    result = bootstrap.compare_groups([a], [b], "A", "B", BootstrapSettings(resamples=2000, seed=1))
    ds = result.metrics["driving_score"]
    # Every resample sees the same +5 on every drawn route.
    assert ds.delta == pytest.approx(5.0) and ds.low == pytest.approx(5.0) and ds.high == pytest.approx(5.0)
    assert ds.share_b_better == 1.0 and ds.verdict == "B better"
    assert ds.a.low < ds.a.value < ds.a.high
    # Same successes: no change in SR or any ability, and the verdict says so.
    for name in ("success_rate", "Overtaking", "Merging", "Emergency_Brake", "Give_Way"):
        assert result.metrics[name].low == result.metrics[name].high == 0.0
        assert result.metrics[name].verdict == "no detectable difference at 95%"
        assert result.metrics[name].share_tie == 1.0
    assert "Traffic_Signs" not in result.metrics and "ability_mean_of_computable" in result.metrics


def test_identical_models_cover_zero_at_the_nominal_rate():
    """Two runs of one model with outcomes exchanged at random per route: the true difference is 0, so the
    95 % interval of the difference must cover 0 in about 95 % of the trials (1000 trials at once, one per column)."""
    rng = np.random.default_rng(2024)
    n_routes, trials = 220, 1000
    difficulty = rng.beta(0.7, 0.7, size=(n_routes, trials))

    def one_model_run() -> np.ndarray:
        success = rng.random((n_routes, trials)) < difficulty
        return np.where(success, 100.0, rng.uniform(0, 85, (n_routes, trials)) * difficulty)

    first, second = one_model_run(), one_model_run()
    swap = rng.random((n_routes, trials)) < 0.5
    a, b = np.where(swap, second, first), np.where(swap, first, second)
    settings = BootstrapSettings(resamples=2000, seed=3)
    ones = np.ones((n_routes, trials))
    samples = np.concatenate([
        bootstrap.ratio_samples(counts, b, ones) - bootstrap.ratio_samples(counts, a, ones)
        for counts in (bootstrap.counts_of(i, n_routes) for i in bootstrap.draws(n_routes, settings))
    ])
    assert samples.shape == (2000, trials)
    covered = []
    for column in samples.T:
        low, high = bootstrap.percentile_interval(column, 0.95)
        covered.append(low <= 0.0 <= high)
    rate = float(np.mean(covered))
    # Binomial sd at 95 % over 1000 trials is 0.7 %; the percentile bootstrap runs a little narrow at n = 220.
    assert 0.925 <= rate <= 0.97, rate


def test_same_seed_same_intervals_other_seed_other_draws(synthetic):
    scores, successes, routes = synthetic
    rng = np.random.default_rng(0)
    runs = tables([make_run(scores, successes), make_run(np.clip(scores + rng.normal(0, 10, 220), 0, 100), successes)],
                  routes)
    first = bootstrap.compare_groups(runs[:1], runs[1:], "A", "B", BootstrapSettings(resamples=500, seed=11)).to_dict()
    again = bootstrap.compare_groups(runs[:1], runs[1:], "A", "B", BootstrapSettings(resamples=500, seed=11)).to_dict()
    other = bootstrap.compare_groups(runs[:1], runs[1:], "A", "B", BootstrapSettings(resamples=500, seed=12)).to_dict()
    assert first == again
    assert first["seed"] == 11 and first["resamples"] == 500 and first["method"] == bootstrap.METHOD
    assert first["metrics"]["driving_score"]["delta_low"] != other["metrics"]["driving_score"]["delta_low"]


def test_vectorised_scores_equal_compute_metrics_on_the_resampled_records(drivemoe_reference, bench2drive_shared):
    """The fast path must score a draw exactly as compute_metrics scores the physically resampled run."""
    all_routes = load_routes(bench2drive_shared / "routes" / "bench2drive220.xml")
    routes = dict(list(all_routes.items())[:40])
    merged = load_run(drivemoe_reference / "official_results" / "drivemoe_base_bf16_seed1.json")
    table = bootstrap.run_table("moe", merged, compute_metrics(merged, routes=routes), routes, "v0.0.3")
    assert table.additive, table.mismatch
    indices = next(bootstrap.draws(40, BootstrapSettings(resamples=100, seed=5)))[:6]
    fast = table.scores(bootstrap.counts_of(indices, 40))
    exact = table.exact_scores(indices)
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=1e-9)
    # A run whose contributions would not add up goes through the exact path and gives the same numbers.
    table.additive = False
    slow = bootstrap.resample_tables([table], BootstrapSettings(resamples=100, seed=5))[0]
    table.additive = True
    quick = bootstrap.resample_tables([table], BootstrapSettings(resamples=100, seed=5))[0]
    np.testing.assert_allclose(slow, quick, rtol=1e-12, atol=1e-9)


def test_missing_routes_and_no_route_file(synthetic):
    scores, successes, routes = synthetic
    run = make_run(scores[:150], successes[:150])
    without_file = compute_metrics(run)  # divides by 220: 70 empty slots
    result = bootstrap.run_intervals("x", run, without_file, BootstrapSettings(resamples=100), None, "v0.0.3")
    assert result.routes == 220
    ds = next(m for m in result.metrics if m.metric == "driving_score")
    assert ds.value == pytest.approx(without_file.driving_score) and ds.low < ds.value < ds.high
    assert any("70 of the 220 route slots" in note for note in result.notes)


def test_bad_settings_are_one_line_errors():
    for kwargs, text in (({"resamples": 10}, "--bootstrap"), ({"confidence": 1.5}, "--confidence"),
                         ({"confidence": float("nan")}, "--confidence"), ({"seed": -1}, "--bootstrap-seed")):
        with pytest.raises(BootstrapError, match=text):
            BootstrapSettings(**kwargs)


@pytest.fixture(scope="module")
def published(drivemoe_reference, bench2drive_shared):
    routes = load_routes(bench2drive_shared / "routes" / "bench2drive220.xml")
    folder = drivemoe_reference / "official_results"
    runs = {}
    for name in ("drivemoe_base_bf16_seed1", "drivepi_base_bf16", "drivepi_base_fp32"):
        merged = load_run(folder / f"{name}.json")
        runs[name] = bootstrap.run_table(name, merged, compute_metrics(merged, routes=routes), routes, "v0.0.3")
    return runs


def test_published_files(published):
    moe, bf16, fp32 = (published[k] for k in ("drivemoe_base_bf16_seed1", "drivepi_base_bf16", "drivepi_base_fp32"))
    assert all(t.additive for t in published.values())
    settings = BootstrapSettings()
    start = time.perf_counter()
    result = bootstrap.compare_groups([bf16], [moe], "Drive-pi0 bf16", "DriveMoE", settings)
    elapsed = time.perf_counter() - start
    ds = result.metrics["driving_score"]
    assert ds.a.value == pytest.approx(55.85, abs=0.005) and ds.b.value == pytest.approx(74.22, abs=0.005)
    assert ds.delta == pytest.approx(18.36, abs=0.01) and ds.low > 10 and ds.verdict == "DriveMoE better"
    assert ds.a.low < ds.a.value < ds.a.high and ds.low < ds.delta < ds.high
    assert result.routes == 220 and result.settings.resamples == 10_000
    # 10k resamples of 2 x 220 routes, every metric: well under the couple of seconds asked for (2 shared cores).
    assert elapsed < 3.0, elapsed
    precision = bootstrap.compare_groups([bf16], [fp32], "bf16", "fp32", settings).metrics
    assert precision["driving_score"].verdict == "fp32 better"
    assert precision["Give_Way"].verdict == "no detectable difference at 95%"


def test_metrics_command_prints_and_writes_intervals(tmp_path, drivemoe_reference, bench2drive_shared, capsys):
    from bench2drive_eval.cli import main as cli_main

    run = drivemoe_reference / "official_results" / "drivemoe_base_bf16_seed1.json"
    routes = bench2drive_shared / "routes" / "bench2drive220.xml"
    assert cli_main(["metrics", str(run), "--routes", str(routes), "--bootstrap", "1000", "--bootstrap-seed", "4",
                     "--out", str(tmp_path / "m")]) == 0
    text = capsys.readouterr().out
    assert "Confidence intervals (95% intervals: paired percentile bootstrap over route ids, 1000 resamples, seed 4" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("Driving Score") and "[" in x)
    low, high = (float(v) for v in line.split("[")[1].rstrip("]").split(", "))
    assert low < 74.22 < high
    saved = json.loads((tmp_path / "m" / "intervals.json").read_text())
    assert saved["seed"] == 4 and saved["resamples"] == 1000
    assert saved["metrics"]["driving_score"]["low"] == pytest.approx(low, abs=0.005)
    assert cli_main(["metrics", str(run), "--routes", str(routes), "--bootstrap", "0", "--json"]) == 0
    assert "intervals" not in json.loads(capsys.readouterr().out)


def test_traffic_signs_with_a_junction_lookup_traced_once_per_route():
    """With maps, Traffic_Signs (junction partial credit, v0.0.3 double denominator) gets an interval computed by
    compute_abilities itself, and each route is traced once although it is scored many times."""
    calls: list[str] = []

    def lookup(route: Route):
        calls.append(route.route_id)
        return (10, 100)  # junction passed beyond 18 % completion

    types = ("T_Junction", "SignalizedJunctionLeftTurn", "ParkingCutIn", "Accident", "InvadingTurn")
    routes = {str(i): Route(str(i), "Town01", (types[i % 5],), ((0.0, 0.0, 0.0), (float(i), 1.0, 0.0)))
              for i in range(60)}
    rng = np.random.default_rng(1)
    records = tuple(
        dataclasses.replace(make_record(rid, 50.0, bool(rng.random() < 0.4)), scenario_name=f"{types[int(rid) % 5]}_1",
                            score_route=float(rng.uniform(0, 100)))
        for rid in routes)
    run = MergedResults(records=records, sources=("s",), by_key={r.route_key: r for r in records})
    cached = bootstrap.CachedLookup(lookup)
    point = compute_metrics(run, routes=routes, junction_lookup=cached)
    assert point.abilities["Traffic_Signs"] is not None and point.ability_mean is not None
    table = bootstrap.run_table("ts", run, point, routes, "v0.0.3", cached)
    assert table.additive and "Traffic_Signs" in table.names and "ability_mean" in table.names
    indices = next(bootstrap.draws(60, BootstrapSettings(resamples=100, seed=2)))[:4]
    np.testing.assert_allclose(table.scores(bootstrap.counts_of(indices, 60)), table.exact_scores(indices),
                               rtol=1e-12, atol=1e-9)
    assert sorted(calls) == sorted(r for r in routes if int(r) % 5 in (0, 1))  # the Traffic_Signs routes, once each


def test_group_mean_intervals_cover_the_mean_are_seeded_and_need_two_routes():
    rng = np.random.default_rng(3)
    groups = {"Town01": rng.uniform(0, 100, 40).tolist(), "Town02": [55.0] * 6, "Town03": [80.0]}
    settings = BootstrapSettings(resamples=2000, seed=1)
    bounds = bootstrap.group_mean_intervals(groups, settings)
    low, high = bounds["Town01"]
    mean = float(np.mean(groups["Town01"]))
    assert low < mean < high
    # the percentile interval of a mean of 40 draws: about +-1.96 standard errors
    half = 1.96 * np.std(groups["Town01"]) / np.sqrt(40)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert bounds["Town02"] == (55.0, 55.0)  # no spread among the routes: nothing to be unsure about
    assert bounds["Town03"] == (None, None)  # one route: nothing to resample
    assert bootstrap.group_mean_intervals(groups, settings) == bounds
    assert bootstrap.group_mean_intervals(groups, BootstrapSettings(resamples=2000, seed=2))["Town01"] != bounds["Town01"]


def test_per_km_intervals_are_ratios_of_sums_over_the_drawn_routes():
    rng = np.random.default_rng(5)
    km = rng.uniform(0.1, 2.0, 30)
    values = np.stack([rng.poisson(2.0 * km), 0.3 * km, np.zeros(30)], axis=1)  # events, off-road km, none
    settings = BootstrapSettings(resamples=500, seed=7)
    bounds = bootstrap.per_km_intervals(values, km, [True, True, False], settings)
    # the same draws, one by one
    indices = np.concatenate(list(bootstrap.draws(30, settings)))
    rates = np.array([values[i, 0].sum() / km[i].sum() for i in indices])
    assert bounds[0] == pytest.approx(tuple(np.percentile(rates, [2.5, 97.5])))
    assert bounds[1] == pytest.approx((0.3, 0.3))  # a constant rate has a zero-width interval
    assert bounds[2] == (0.0, 0.0)  # a sum (not per km) of zeros
    assert bootstrap.per_km_intervals(values[:1], km[:1], [True, True, False], settings) == [(None, None)] * 3
