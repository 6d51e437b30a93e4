"""`bench2drive-eval run --seeds`: one resumable sub-run per agent seed, derived agent YAMLs, read by `compare`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench2drive_eval.cli import main as cli_main
from bench2drive_eval.run_state import RunLayout, load_run_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_b2d.setup_fake import make_fake_bench  # noqa: E402
from test_eval_runner import all_records, run_args, run_env, write_routes  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def bench(tmp_path: Path):
    fake = make_fake_bench(tmp_path)
    yield fake
    fake.kill_everything()


def agent_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "configs" / "agent.yaml"
    path.parent.mkdir()
    path.write_text("checkpoint: ../weights/model\npreset: default\nseed: 5\nsave:\n  trace: false\n")
    return path


def test_one_sub_run_per_seed_resumable_and_compared(bench, tmp_path: Path, capsys) -> None:
    routes = write_routes(tmp_path, ["1", "2", "3"])
    config = agent_yaml(tmp_path)
    out = tmp_path / "run"
    argv = [a for a in run_args(bench, out, routes, "--seeds", "0,1", "--agent-config", f"{config}+extra", gpus="0")
            if a != "--no-score"]
    result = subprocess.run(argv, env=run_env(bench), capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "seeds.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["agent_config"] == f"{config.resolve()}+extra"
    starts = [e for e in bench.events() if e["event"] == "evaluator_start"]
    for seed in (0, 1):
        derived = out / "agent_configs" / f"seed_{seed}.yaml"
        values = yaml.safe_load(derived.read_text())
        # Only the seed differs; the relative checkpoint now points where the original one did.
        assert values == {"checkpoint": str((config.parent / "../weights/model").resolve()), "preset": "default",
                          "seed": seed, "save": {"trace": False}}
        run = load_run_state(RunLayout(out / f"seed_{seed}"))
        assert run.config.agent_seed == seed and run.config.agent_config == f"{derived}+extra"
        assert sorted(r["route_id"] for r in all_records(out / f"seed_{seed}")) == [
            f"RouteScenario_{i}_rep0" for i in (1, 2, 3)]
        assert any(f"--agent-config={derived}+extra" in s["argv"] for s in starts)
        # Each completed sub-run is scored, with its intervals.
        intervals = json.loads((out / f"seed_{seed}" / "score" / "intervals.json").read_text())
        assert intervals["resamples"] == 10_000 and intervals["routes"] == 3
        assert intervals["metrics"]["driving_score"]["value"] == pytest.approx((11 + 12 + 13) / 3)
    routes_run = len([e for e in bench.events() if e["event"] == "route_start"])
    assert routes_run == 6

    # The same command again: both sub-runs are complete, nothing is run twice.
    again = subprocess.run(argv, env=run_env(bench), capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len([e for e in bench.events() if e["event"] == "route_start"]) == routes_run
    # `--out` alone resumes too; other seeds are refused.
    refused = subprocess.run(run_args(bench, out, routes, "--seeds", "0,2", gpus="0"), env=run_env(bench),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "was started with --seeds 0,1" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    # status summarises each seed's sub-run and the total; a seed not started yet is named as such.
    status = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out)], env=run_env(bench),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.strip().splitlines()
    assert lines[0].startswith("seed 0: routes: 3/3 done (0 failed") and lines[1].startswith("seed 1: routes: 3/3 done")
    assert lines[-1].startswith("total (2 seeds): routes: 6/6 done (0 failed") and lines[-1].endswith("ETA -")
    manifest["seeds"] = [0, 1, 7]
    (out / "seeds.json").write_text(json.dumps(manifest))
    status = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--json"],
                            env=run_env(bench), capture_output=True, text=True, timeout=60)
    summary = json.loads(status.stdout)
    assert summary["seeds"]["7"] is None and summary["seeds"]["0"]["done"] == 3 and summary["seeds"]["1"]["complete"]
    assert summary["total"]["done"] == 6 and summary["total"]["total"] == 6 and summary["total"]["complete"] is False
    assert summary["total"]["eta_s"] is None  # seed 7's routes are not known yet
    text = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--jobs"],
                          env=run_env(bench), capture_output=True, text=True, timeout=60).stdout
    assert "seed 7: not started" in text and "total (3 seeds, 1 not started)" in text and "  job" in text
    manifest["seeds"] = [0, 1]
    (out / "seeds.json").write_text(json.dumps(manifest))

    # compare reads the multi-seed folder as a group.
    assert cli_main(["compare", "--a", str(out), "--b", str(out / "seed_0"), "--routes", str(routes),
                     "--bootstrap", "200", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs_a"] == ["run/seed_0", "run/seed_1"] and data["runs_b"] == ["seed_0"]
    assert data["headline"]["driving_score"]["spread_a"] == 0.0  # the fake evaluator ignores the seed


@pytest.mark.parametrize("extra, expected", [
    (["--seeds", "0,1"], "--seeds needs --agent-config"),
    (["--seeds", "1,1", "--agent-config", "AGENT"], "negative or repeated seeds"),
    (["--seeds", "a", "--agent-config", "AGENT"], "not a comma-separated list"),
    (["--seeds", "0", "--agent-config", "LIST"], "needs a YAML mapping"),
])
def test_bad_seed_arguments_leave_nothing(extra, expected, bench, tmp_path: Path, capsys, monkeypatch) -> None:
    routes = write_routes(tmp_path, ["1"])
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    placeholders = {"AGENT": str(agent_yaml(tmp_path)), "LIST": str(listing)}
    extra = [placeholders.get(x, x) for x in extra]
    out = tmp_path / "run"
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    code = cli_main(["run", "--out", str(out), "--bench2drive-root", str(bench.b2d), "--carla-root", str(bench.carla),
                     "--routes", str(routes), "--agent", str(bench.agent), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_refused_first_sub_run_removes_the_new_folder(bench, tmp_path: Path, capsys, monkeypatch) -> None:
    routes = write_routes(tmp_path, ["1"])
    out = tmp_path / "run"
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    code = cli_main(["run", "--out", str(out), "--bench2drive-root", str(bench.b2d), "--routes", str(routes),
                     "--agent", str(bench.agent), "--seeds", "0,1", "--agent-config", str(agent_yaml(tmp_path))])
    assert code == 2 and "CARLA_ROOT is not set" in capsys.readouterr().err
    assert not out.exists()
