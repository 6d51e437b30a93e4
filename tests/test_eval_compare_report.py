"""`compare` and `report` on the shared DriveMoE / Drive-pi0 result files: numbers match `metrics`, plots are real."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench2drive_eval.cli import main as cli_main
from bench2drive_eval.compare import compare_metrics
from bench2drive_eval.metrics import compute_metrics
from bench2drive_eval.results import load_run


@pytest.fixture(scope="module")
def files(drivemoe_reference: Path, bench2drive_shared: Path) -> dict[str, Path]:
    results = drivemoe_reference / "official_results"
    return {
        "drivemoe": results / "drivemoe_base_bf16_seed1.json",
        "drivepi": results / "drivepi_base_bf16.json",
        "routes": bench2drive_shared / "routes" / "bench2drive220.xml",
    }


@pytest.fixture(scope="module")
def runs(files):
    return (compute_metrics(load_run(files["drivepi"]), routes=files["routes"]),
            compute_metrics(load_run(files["drivemoe"]), routes=files["routes"]))


def assert_real_png(path: Path) -> None:
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 10_000, path
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300
    # More than a blank canvas: many distinct colours.
    assert len({tuple(px) for px in image[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}) > 5


def raw_records(path: Path) -> dict[str, dict]:
    return {r["route_id"].split("_")[1]: r for r in json.loads(path.read_text())["_checkpoint"]["records"]}


def test_flips_are_consistent_and_explained(files, runs):
    pi0, moe = runs
    comparison = compare_metrics(pi0, moe, "Drive-pi0", "DriveMoE")
    up, down = comparison.flips("fail->success"), comparison.flips("success->fail")
    # Net flips equal the change in successful routes.
    successes = lambda m: round(m.success_rate * m.total_routes / 100)  # noqa: E731
    assert len(up) - len(down) == successes(moe) - successes(pi0) == 41
    assert comparison.headline["driving_score"] == (pi0.driving_score, moe.driving_score)
    assert comparison.abilities["Emergency_Brake"] == (pi0.abilities["Emergency_Brake"], moe.abilities["Emergency_Brake"])
    raw_pi0, raw_moe = raw_records(files["drivepi"]), raw_records(files["drivemoe"])
    for delta, failing in [(d, raw_pi0) for d in up] + [(d, raw_moe) for d in down]:
        record = failing[delta.route_id]
        assert delta.why
        # Every infraction named in the explanation is really in the failing attempt's record.
        for part in delta.why.split("; "):
            if part.startswith("status"):
                assert record["status"] in part
            else:
                name = part.split(" x")[0]
                assert record["infractions"][name], (delta.route_id, name)
    assert len(comparison.routes) == 220
    # The per-infraction summary counts the same thing, recomputed here from the raw records.
    for name in ("collisions_vehicle", "outside_route_lanes", "collisions_layout"):
        expected = sum(len(raw_pi0[d.route_id]["infractions"][name]) > len(raw_moe[d.route_id]["infractions"][name])
                       for d in up)
        assert comparison.flip_reasons("fail->success").get(name, 0) == expected > 0


def test_compare_cli_writes_table_and_plots(tmp_path, files, runs, capsys):
    out = tmp_path / "cmp"
    rc = cli_main(["compare", str(files["drivepi"]), str(files["drivemoe"]), "--routes", str(files["routes"]),
                   "--label-a", "Drive-pi0", "--label-b", "DriveMoE", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    pi0, moe = runs
    row = next(line for line in text.splitlines() if line.startswith("| driving_score |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{pi0.driving_score:.2f}" and cells[3] == f"{moe.driving_score:.2f}"
    assert cells[5] == f"+{moe.driving_score - pi0.driving_score:.2f}" and cells[8] == "DriveMoE better"
    low, high = (float(x) for x in cells[6].strip("[]").split(", "))
    assert 0 < low < moe.driving_score - pi0.driving_score < high
    assert "10000 resamples, seed 0; 220 routes" in text
    assert "Routes that became successes with DriveMoE (50)" in text
    data = json.loads((out / "compare.json").read_text())
    assert data["headline"]["success_rate"]["delta"] == pytest.approx(moe.success_rate - pi0.success_rate)
    assert (out / "compare.md").read_text().startswith("# DriveMoE vs Drive-pi0")
    assert data["headline"]["driving_score"]["delta_low"] == pytest.approx(low, abs=0.005)
    assert data["bootstrap"] == {"method": "paired percentile bootstrap over route ids", "resamples": 10000,
                                 "seed": 0, "confidence": 0.95, "routes": 220}
    for name in ("compare_abilities.png", "compare_routes.png", "compare_infractions.png", "compare_towns.png",
                 "compare_intervals.png"):
        assert_real_png(out / name)
    rows = (out / "compare_routes.csv").read_text().splitlines()
    assert len(rows) == 221 and sum(",fail->success," in r for r in rows) == 50


def test_report_cli_matches_metrics(tmp_path, files, runs, capsys):
    out = tmp_path / "report"
    rc = cli_main(["report", str(files["drivemoe"]), "--routes", str(files["routes"]), "--out", str(out),
                   "--title", "DriveMoE seed 1"])
    assert rc == 0
    moe = runs[1]
    report = (out / "report.md").read_text()
    assert report.startswith("# DriveMoE seed 1")
    assert f"| Driving Score | {moe.driving_score:.2f} |" in report and "| Driving Score | 74.22 |" in report
    assert f"| Success Rate (%) | {moe.success_rate:.2f} |" in report
    assert f"| Emergency_Brake | {moe.abilities['Emergency_Brake']:.2f} |" in report
    for name in ("scores.png", "abilities.png", "infractions.png", "towns.png"):
        assert f"]({name})" in report
        assert_real_png(out / name)
    assert json.loads((out / "metrics.json").read_text())["driving_score"] == pytest.approx(moe.driving_score)
    assert "report.md" in capsys.readouterr().out


def test_report_shows_the_bootstrap_intervals_in_tables_plots_and_page(tmp_path, files, runs, capsys):
    import matplotlib.image

    from bench2drive_eval.bootstrap import BootstrapSettings, group_mean_intervals, run_intervals
    from bench2drive_eval.routes import load_routes

    out, plain = tmp_path / "report", tmp_path / "plain"
    common = [str(files["drivemoe"]), "--routes", str(files["routes"]), "--title", "DriveMoE seed 1"]
    assert cli_main(["report", *common, "--out", str(out), "--bootstrap", "2000", "--bootstrap-seed", "4"]) == 0
    assert "DS 74.22 [" in capsys.readouterr().out
    moe = runs[1]
    settings = BootstrapSettings(resamples=2000, seed=4)
    expected = {m.metric: (m.low, m.high) for m in run_intervals(
        "x", load_run(files["drivemoe"]), moe, settings, load_routes(files["routes"]), "v0.0.3").metrics}
    report = (out / "report.md").read_text()
    ds_low, ds_high = expected["driving_score"]
    assert "| metric | value | 95% interval |" in report
    assert f"| Driving Score | 74.22 | [{ds_low:.2f}, {ds_high:.2f}] |" in report
    low, high = expected["infraction_penalty"]
    assert f"| Infraction penalty | {moe.infraction_penalty:.4f} | [{low:.4f}, {high:.4f}] |" in report
    low, high = expected["Merging"]
    assert f"| Merging | {moe.abilities['Merging']:.2f} | [{low:.2f}, {high:.2f}] | 31/80 |" in report
    assert "| Traffic_Signs | n/a | n/a | not computable |" in report
    assert "2000 resamples, seed 4, 220 routes" in report
    towns = group_mean_intervals({"Town12": [r.driving_score for r in moe.per_route if r.town == "Town12"]}, settings)
    row = next(r for r in moe.per_town if r.name == "Town12")
    assert (f"| Town12 | 104 | 104 | {row.successes} | {row.driving_score:.2f} | "
            f"[{towns['Town12'][0]:.2f}, {towns['Town12'][1]:.2f}] |") in report
    assert "mean DS 95% interval" in report.split("## Per scenario type")[1]
    vehicles = next(l for l in report.splitlines() if l.startswith("| Collisions with vehicles |"))
    rate, bounds = vehicles.split(" | ")[1], vehicles.split(" | ")[2].strip("[] |").split(", ")
    assert float(rate) == pytest.approx(moe.infractions_per_km["collisions_vehicle"], abs=5e-4)
    assert float(bounds[0]) < float(rate) < float(bounds[1])
    saved = json.loads((out / "intervals.json").read_text())
    assert saved["resamples"] == 2000 and saved["metrics"]["driving_score"]["low"] == pytest.approx(ds_low)
    page = (out / "report.html").read_text()
    assert f"[{ds_low:.2f}, {ds_high:.2f}]" in page and "mean DS 95% interval" in page

    assert cli_main(["report", *common, "--out", str(plain), "--bootstrap", "0"]) == 0
    capsys.readouterr()
    without = (plain / "report.md").read_text()
    assert "| metric | value |\n" in without and "interval" not in without.split("## Abilities")[1]
    assert "No intervals (--bootstrap 0)." in without and not (plain / "intervals.json").exists()
    for name in ("scores.png", "abilities.png", "towns.png", "infractions.png"):  # the band / error bars are drawn
        a, b = matplotlib.image.imread(out / name), matplotlib.image.imread(plain / name)
        assert a.shape != b.shape or (a != b).any(), name


@pytest.mark.parametrize("count", [1, 3, 5])
def test_per_town_legend_never_covers_a_bar(runs, count):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from bench2drive_eval import plots

    metrics = [runs[i % 2] for i in range(count)]
    fig = plots.per_town_figure(metrics, [f"a long run label number {i}" for i in range(count)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(bars) == count * 12  # 12 towns per run
    assert not any(legend.overlaps(bar) for bar in bars)
    figure_box = fig.bbox
    assert figure_box.x0 <= legend.x0 and legend.x1 <= figure_box.x1 and figure_box.y0 <= legend.y0  # not cut off
    assert len({p.get_facecolor() for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0}) == count
    plt.close(fig)
