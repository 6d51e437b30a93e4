"""`bench2drive-eval run --backend slurm` against fake sbatch/squeue/sacct/scancel and the fake evaluator."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench2drive_eval.processes import alive
from bench2drive_eval.slurm import array_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_b2d.setup_fake import FakeBench, make_fake_bench  # noqa: E402
from test_eval_runner import all_records, assert_no_leftovers, run_args, run_env, write_routes  # noqa: E402

FAKE_SLURM = Path(__file__).resolve().parent / "fake_b2d" / "slurm"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def bench(tmp_path: Path):
    fake = make_fake_bench(tmp_path)
    yield fake
    fake.kill_everything()


def slurm_env(bench: FakeBench, tmp_path: Path, route_seconds: float = 0.1, **extra: str) -> dict[str, str]:
    env = run_env(bench, route_seconds)
    bin_dir = tmp_path / "slurm_bin"
    if not bin_dir.exists():
        shutil.copytree(FAKE_SLURM, bin_dir, ignore=shutil.ignore_patterns("__pycache__"))
        for tool in ("sbatch", "squeue", "sacct", "scancel"):
            (bin_dir / tool).chmod(0o755)  # a checkout may not keep the executable bit
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["FAKE_SLURM_DIR"] = str(tmp_path / "slurm_state")
    env.update(extra)
    return env


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "slurm_state" / "calls.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_array_spec() -> None:
    assert array_spec([0, 1, 2, 3], 0) == "0-3"
    assert array_spec([1, 4, 6], 2) == "1,4,6%2"
    assert array_spec([5], 0) == "5"


def test_slurm_backend_runs_the_array_with_the_same_skip_semantics(bench: FakeBench, tmp_path: Path) -> None:
    ids = [str(7000 + i) for i in range(6)]
    routes = write_routes(tmp_path, ids)
    bench.set_plan({"7001": ["sim_crash"], "7004": ["die", "ok"]})
    out = tmp_path / "run"
    args = run_args(bench, out, routes, "--backend", "slurm", "--retries", "2", "--slurm-max-parallel", "2",
                    "--slurm-partition", "gpu", "--slurm-arg=--account=abc")
    result = subprocess.run(args, env=slurm_env(bench, tmp_path), capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    submitted = [c for c in calls(tmp_path) if c["tool"] == "sbatch"]
    assert len(submitted) == 1
    argv = submitted[0]["argv"]
    assert "--array=0-1%2" in argv and "--partition=gpu" in argv and "--account=abc" in argv
    records = all_records(out)
    assert sorted(r["route_id"] for r in records) == sorted(f"RouteScenario_{i}_rep0" for i in ids)
    written_off = [r for r in records if (r.get("runner") or {}).get("skipped")]
    assert [r["route_id"] for r in written_off] == ["RouteScenario_7001_rep0"]
    assert written_off[0]["scores"]["score_composed"] == 0
    starts = [e["route"] for e in bench.events() if e["event"] == "route_start"]
    assert starts.count("7001") == 2 and starts.count("7004") == 2 and len(starts) == 8
    # Each task's own stdout/stderr, and the evaluator logs, are in the run folder.
    job_id = submitted[0]["job_id"]
    assert (out / "logs" / f"slurm_{job_id}_0.log").exists() and (out / "logs" / f"slurm_{job_id}_1.log").exists()
    # GPU of each task: the first index SLURM made visible to it.
    assert {e["cuda"] for e in bench.events() if e["event"] == "evaluator_start"} == {"0", "1"}
    status = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--json"],
                            capture_output=True, text=True, timeout=60)
    summary = json.loads(status.stdout)
    assert (summary["done"], summary["written_off"], summary["complete"]) == (6, 1, True)
    assert_no_leftovers(out)


def test_slurm_task_lost_to_a_node_failure_is_resubmitted_and_resumes(bench: FakeBench, tmp_path: Path) -> None:
    ids = [str(8000 + i) for i in range(6)]
    routes = write_routes(tmp_path, ids)
    out = tmp_path / "run"
    env = slurm_env(bench, tmp_path, route_seconds=0.4, FAKE_SLURM_NODE_FAIL="0")
    result = subprocess.run(run_args(bench, out, routes, "--backend", "slurm"), env=env,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    submitted = [c for c in calls(tmp_path) if c["tool"] == "sbatch"]
    assert len(submitted) == 2
    assert "--array=0-1" in submitted[0]["argv"] and "--array=0" in submitted[1]["argv"]
    records = all_records(out)
    assert sorted(r["route_id"] for r in records) == sorted(f"RouteScenario_{i}_rep0" for i in ids)
    finished = [e["route"] for e in bench.events() if e["event"] == "route_end"]
    assert sorted(finished) == sorted(ids), "a route finished before the node failure ran again"
    state = json.loads((out / "slurm_state.json").read_text())
    assert state["unfinished_ends"] == {"0": 1}
    assert_no_leftovers(out)


def test_stopping_the_orchestrator_cancels_the_array_and_resume_finishes(bench: FakeBench, tmp_path: Path) -> None:
    ids = [str(9000 + i) for i in range(4)]
    routes = write_routes(tmp_path, ids)
    out = tmp_path / "run"
    env = slurm_env(bench, tmp_path, route_seconds=1.0)
    first = subprocess.Popen(run_args(bench, out, routes, "--backend", "slurm"), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(e["event"] == "route_start" for e in bench.events()):
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    assert any(c["tool"] == "scancel" for c in calls(tmp_path))
    deadline = time.time() + 30
    evaluators = [e["pid"] for e in bench.events() if e["event"] == "evaluator_start"]
    while time.time() < deadline and any(alive(p) for p in evaluators):
        time.sleep(0.1)
    assert not any(alive(p) for p in evaluators), "cancelled tasks left their evaluators running"
    status = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["running_jobs"] == 0
    second = subprocess.run([sys.executable, "-m", "bench2drive_eval", "run", "--out", str(out), "--no-score",
                             "--poll-interval", "0.1"], env=env, capture_output=True, text=True, timeout=100)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(r["route_id"] for r in all_records(out)) == sorted(f"RouteScenario_{i}_rep0" for i in ids)
    assert_no_leftovers(out)


def test_missing_slurm_tools_fail_before_anything_starts(bench: FakeBench, tmp_path: Path) -> None:
    routes = write_routes(tmp_path, ["1", "2"])
    env = run_env(bench)
    env["PATH"] = str(Path(sys.executable).parent) + ":/usr/bin:/bin"
    result = subprocess.run(run_args(bench, tmp_path / "run", routes, "--backend", "slurm"), env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bench2drive-eval run: error: --backend slurm: sbatch, squeue, sacct, scancel not found on PATH (is this a SLURM login node?)"
    ]
    assert not (tmp_path / "run").exists()
