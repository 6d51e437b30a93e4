"""`compare` with groups of runs (seeds), multi-seed run folders, --bootstrap 0, and output errors."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench2drive_eval.cli import main as cli_main
from bench2drive_eval.jsonio import write_json_atomic
from bench2drive_eval.seeds import FORMAT, SEEDS_FILE


@pytest.fixture(scope="module")
def files(drivemoe_reference: Path, bench2drive_shared: Path) -> dict[str, Path]:
    results = drivemoe_reference / "official_results"
    return {
        "moe": results / "drivemoe_base_bf16_seed1.json",
        "bf16": results / "drivepi_base_bf16.json",
        "fp32": results / "drivepi_base_fp32.json",
        "routes": bench2drive_shared / "routes" / "bench2drive220.xml",
    }


def multi_seed_folder(root: Path, sources: dict[int, Path]) -> Path:
    """A multi-seed run folder as `run --seeds` leaves it: seeds.json, seed_<n>/results/*.json."""
    for seed, source in sources.items():
        results = root / f"seed_{seed}" / "results"
        results.mkdir(parents=True)
        shutil.copy(source, results / "job_000.json")
    write_json_atomic(root / SEEDS_FILE, {"format": FORMAT, "seeds": list(sources), "agent_config": "x.yaml"})
    return root


def test_groups_report_both_spreads_and_the_difference(tmp_path, files, capsys):
    # Two "seeds" of Drive-pi0 (its bf16 and fp32 files) against DriveMoE seed 1.
    group = multi_seed_folder(tmp_path / "pi0", {1: files["bf16"], 2: files["fp32"]})
    rc = cli_main(["compare", "--a", str(group), "--b", str(files["moe"]), "--routes", str(files["routes"]),
                   "--label-a", "Drive-pi0", "--label-b", "DriveMoE", "--bootstrap", "2000", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs_a"] == ["pi0/seed_1", "pi0/seed_2"] and data["runs_b"] == ["drivemoe_base_bf16_seed1"]
    ds = data["headline"]["driving_score"]
    assert ds["runs_a"] == pytest.approx([55.85, 65.85], abs=0.005)
    assert ds["a"] == pytest.approx((55.85 + 65.85) / 2, abs=0.01) and ds["spread_a"] == pytest.approx(10.0, abs=0.01)
    assert ds["spread_b"] is None and ds["b"] == pytest.approx(74.22, abs=0.005)
    assert ds["delta_low"] < ds["delta"] < ds["delta_high"] and ds["verdict"] == "DriveMoE better"
    assert data["bootstrap"]["resamples"] == 2000
    # Traffic_Signs needs the maps: the mean shown is the mean of the computable abilities, with an interval.
    assert "ability_mean" not in data["headline"]
    assert data["headline"]["ability_mean_of_computable"]["delta_low"] is not None


def test_seed_spread_larger_than_the_gap_is_said(tmp_path, files, capsys):
    # A = {bf16, fp32} spans 10 DS; B = fp32 alone is 5 DS above the group's mean: within the spread.
    rc = cli_main(["compare", "--a", str(files["bf16"]), str(files["fp32"]), "--b", str(files["fp32"]),
                   "--routes", str(files["routes"]), "--bootstrap", "1000"])
    assert rc == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| driving_score |"))
    assert "within the seed-to-seed spread" in row or "no detectable difference" in row
    assert "## Every run" in text and "seed spread" in text


def test_bootstrap_zero_prints_plain_deltas(files, capsys):
    rc = cli_main(["compare", str(files["bf16"]), str(files["moe"]), "--routes", str(files["routes"]),
                   "--bootstrap", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| metric | drivepi_base_bf16 | drivemoe_base_bf16_seed1 | delta |" in text and "CI" not in text


def test_bad_group_arguments_are_one_line(files, capsys):
    assert cli_main(["compare", str(files["moe"])]) == 2
    assert "expected RUN_A RUN_B" in capsys.readouterr().err
    assert cli_main(["compare", "--a", str(files["moe"])]) == 2
    assert "both --a" in capsys.readouterr().err
    assert cli_main(["compare", str(files["moe"]), str(files["bf16"]), "--bootstrap", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bootstrap must be an integer >= 100" in err[0]


def test_out_under_a_file_is_one_line(tmp_path, files, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc = cli_main(["compare", str(files["bf16"]), str(files["moe"]), "--bootstrap", "0", "--out", str(blocker / "cmp")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker / "cmp") in err[0] and "Not a directory" in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line_and_leaves_nothing(tmp_path, files, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        rc = cli_main(["compare", str(files["bf16"]), str(files["moe"]), "--bootstrap", "0", "--out", str(out)])
    finally:
        out.chmod(0o700)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "Permission denied" in err[0]
    assert list(out.iterdir()) == []


def test_failure_while_writing_leaves_the_old_output(tmp_path, files, capsys, monkeypatch):
    """A full disk mid-way (simulated on the third file): the old compare.md stays, no partial new files."""
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.md").write_text("old")
    from bench2drive_eval import plots

    real = plots.route_scatter

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "route_scatter", full_disk)
    rc = cli_main(["compare", str(files["bf16"]), str(files["moe"]), "--bootstrap", "0", "--out", str(out)])
    monkeypatch.setattr(plots, "route_scatter", real)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(out) in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["compare.md"] and (out / "compare.md").read_text() == "old"


def test_single_run_ability_plot_takes_error_bars(tmp_path, files):
    import matplotlib.image

    from bench2drive_eval import plots
    from bench2drive_eval.bootstrap import BootstrapSettings, run_intervals
    from bench2drive_eval.metrics import compute_metrics
    from bench2drive_eval.results import load_run
    from bench2drive_eval.routes import load_routes

    routes = load_routes(files["routes"])
    merged = load_run(files["moe"])
    metrics = compute_metrics(merged, routes=routes)
    intervals = run_intervals("moe", merged, metrics, BootstrapSettings(resamples=500), routes, "v0.0.3")
    plain = plots.abilities([metrics], ["moe"], tmp_path / "plain.png")
    with_bars = plots.abilities([metrics], ["moe"], tmp_path / "bars.png", intervals=[intervals])
    a, b = matplotlib.image.imread(plain), matplotlib.image.imread(with_bars)
    assert a.shape == b.shape and (a != b).any()  # the error bars are drawn


def test_metrics_refuses_a_multi_seed_folder_instead_of_mixing_seeds(tmp_path, files, capsys):
    group = multi_seed_folder(tmp_path / "seeds", {0: files["bf16"], 1: files["fp32"]})
    assert cli_main(["metrics", str(group), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multi-seed run folder" in err[0] and str(group) in err[0]
    assert cli_main(["metrics", str(group / "seed_1"), "--bootstrap", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["driving_score"] == pytest.approx(65.85, abs=0.005)


def test_docs_table_is_what_the_code_computes(files):
    """docs/evaluation-metrics.md's intervals for the files in ../shared (10k resamples, seed 0): a run's own
    interval depends only on the draws, so it is the same in every comparison over the 220 routes."""
    from bench2drive_eval.bootstrap import BootstrapSettings, run_intervals
    from bench2drive_eval.metrics import compute_metrics
    from bench2drive_eval.results import load_run
    from bench2drive_eval.routes import load_routes

    docs = (Path(__file__).resolve().parents[1] / "docs" / "evaluation-metrics.md").read_text()
    routes = load_routes(files["routes"])
    for key in ("moe", "bf16", "fp32"):
        merged = load_run(files[key])
        intervals = run_intervals(key, merged, compute_metrics(merged, routes=routes), BootstrapSettings(), routes,
                                  "v0.0.3")
        for m in intervals.metrics:
            if m.metric in ("driving_score", "success_rate"):
                assert f"{m.value:.2f} [{m.low:.2f}, {m.high:.2f}]" in docs, (key, m)
