"""`bench2drive-eval run` / `status` against fake evaluator, CARLA and routes: crashes, hangs, resume, isolation."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench2drive_eval.cli import main as cli_main
from bench2drive_eval.processes import TAG_VARIABLE, alive, tagged_pids, write_ps_guard
from bench2drive_eval.run_state import RunLayout, load_run_state
from bench2drive_eval.splitting import balance, read_route_file, select_subset, write_splits
from bench2drive_eval.watchdog import KEPT_SUFFIX, prepare_resume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_b2d.setup_fake import FakeBench, make_fake_bench, route_xml  # noqa: E402

FAKE_EVALUATOR = Path(__file__).resolve().parent / "fake_b2d" / "leaderboard_evaluator.py"
_spec = importlib.util.spec_from_file_location("fake_leaderboard_evaluator", FAKE_EVALUATOR)
fake_evaluator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_evaluator)

pytestmark = pytest.mark.timeout(120)


def free_port_base() -> int:
    """A base whose 150-port ranges for a few jobs are unlikely to collide with other tests running now."""
    return random.Random(os.getpid() * 7919 + time.time_ns()).randrange(20000, 29000, 500)


@pytest.fixture
def bench(tmp_path: Path):
    fake = make_fake_bench(tmp_path)
    yield fake
    fake.kill_everything()


def write_routes(tmp_path: Path, ids: list[str], seed: int = 0) -> Path:
    path = tmp_path / "routes.xml"
    path.write_text(route_xml(ids, seed))
    return path


def run_args(bench: FakeBench, out: Path, routes: Path, *extra: str, gpus: str = "0,1", jobs_per_gpu: int = 1) -> list[str]:
    base = free_port_base()
    return [
        sys.executable, "-m", "bench2drive_eval", "run",
        "--out", str(out), "--bench2drive-root", str(bench.b2d), "--carla-root", str(bench.carla),
        "--routes", str(routes), "--agent", str(bench.agent), "--gpus", gpus, "--jobs-per-gpu", str(jobs_per_gpu),
        "--port-base", str(base), "--tm-port-base", str(base + 20000),
        "--stall-timeout", "3", "--poll-interval", "0.1", "--kill-grace", "0.3", "--no-score", *extra,
    ]


def run_env(bench: FakeBench, route_seconds: float = 0.1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(bench.env(route_seconds))
    env.pop("CARLA_ROOT", None)
    return env


def all_records(out: Path) -> list[dict]:
    records = []
    for path in sorted((out / "results").glob("job_*.json")):
        records.extend(json.loads(path.read_text())["_checkpoint"]["records"])
    return records


def assert_no_leftovers(out: Path) -> None:
    run = load_run_state(RunLayout(out))
    for job in run.jobs:
        assert tagged_pids(f"{run.run_id}:{job.index:03d}") == set(), f"job {job.index} left processes behind"


def carla_pids(bench: FakeBench) -> list[int]:
    return [e["pid"] for e in bench.events() if e["event"] == "carla_start"]


# ---- splitting ----------------------------------------------------------------------------------------


def test_split_balances_route_length_and_keeps_every_route_once(bench2drive_shared: Path, tmp_path: Path) -> None:
    entries = read_route_file(bench2drive_shared / "routes" / "bench2drive220.xml")
    lengths = [e.length_m for e in entries]
    splits = write_splits(entries, 16, tmp_path / "splits")
    assert sorted(rid for s in splits for rid in s.route_ids) == sorted(e.route_id for e in entries)
    loads = [s.length_m for s in splits]
    # Longest-first greedy: no job exceeds the mean by more than the longest single route.
    assert max(loads) <= sum(lengths) / 16 + max(lengths) + 1e-6
    # Upstream's contiguous split (tools/split_xml.py) is far less even on the same routes.
    k, m = divmod(len(entries), 16)
    contiguous = [sum(lengths[i * k + min(i, m):(i + 1) * k + min(i + 1, m)]) for i in range(16)]
    assert max(loads) < max(contiguous)
    # The job files are leaderboard route files with the original <route> elements, in file order.
    first = ET.parse(splits[0].routes_xml).getroot()
    ids = [r.get("id") for r in first.iter("route")]
    order = [e.route_id for e in entries]
    assert ids == sorted(ids, key=order.index) and ids == list(splits[0].route_ids)
    assert first.find("route/waypoints/position") is not None


def test_routes_subset_uses_upstream_syntax(tmp_path: Path) -> None:
    entries = read_route_file(write_routes(tmp_path, ["5", "3", "9", "1", "7"]))
    assert [e.route_id for e in select_subset(entries, "3-1,7")] == ["3", "9", "1", "7"]
    with pytest.raises(ValueError, match="'4'"):
        select_subset(entries, "4")
    assert balance([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2) == [[0], [1, 2, 3, 4, 5]]


# ---- resume point ---------------------------------------------------------------------------------------


def _record(rid: str, index: int, status: str) -> dict:
    return fake_evaluator.record({"id": rid, "town": "Town12", "scenario": "X_1", "length": 10.0}, index, status, 50.0)


def test_prepared_checkpoint_makes_upstream_resume_at_the_first_unfinished_route(tmp_path: Path) -> None:
    routes = [{"id": str(i)} for i in range(6)]
    records = [_record("0", 0, "Completed"), _record("1", 1, "Failed - Agent crashed"), _record("2", 2, "Perfect"),
               _record("3", 3, "Failed - Simulation crashed")]
    data = {"_checkpoint": {"global_record": {}, "progress": [4, 6], "records": records},
            "entry_status": "Crashed", "eligible": False, "sensors": [], "values": [], "labels": []}
    path = tmp_path / "ckpt.json"
    path.write_text(json.dumps(data))
    # Upstream, left alone, goes back to the agent crash on route 1 and one more because of "Crashed".
    assert fake_evaluator.resume_index(str(path), routes)[0] == 0
    prepared = prepare_resume(data, 6, 3)
    path.write_text(json.dumps(prepared))
    assert fake_evaluator.resume_index(str(path), routes)[0] == 3
    kept = prepared["_checkpoint"]["records"]
    assert [r["route_id"] for r in kept] == [r["route_id"] for r in records]  # nothing lost or added
    assert kept[1]["status"] == "Failed - Agent crashed" + KEPT_SUFFIX
    assert kept[1]["runner"] == {"original_status": "Failed - Agent crashed", "kept": True}
    assert kept[1]["scores"] == records[1]["scores"]
    assert data["_checkpoint"]["records"][1]["status"] == "Failed - Agent crashed"  # input untouched


# ---- whole runs with the fakes ----------------------------------------------------------------------------


def test_crashes_and_hangs_on_a_quarter_of_the_routes_every_route_accounted_once(bench: FakeBench, tmp_path: Path) -> None:
    ids = [str(2000 + i) for i in range(12)]
    routes = write_routes(tmp_path, ids)
    bench.set_plan({
        "2001": ["sim_crash", "ok"],
        "2004": ["orphan", "ok"],
        "2007": ["hang_ignore_term", "ok"],
    })
    out = tmp_path / "run"
    env = run_env(bench)
    env["FAKE_CARLA_IGNORE_TERM"] = "1"  # the leftover simulators need SIGKILL
    result = subprocess.run(run_args(bench, out, routes, jobs_per_gpu=2), env=env, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12/12" in result.stderr  # the progress bar over all routes
    records = all_records(out)
    assert sorted(r["route_id"] for r in records) == sorted(f"RouteScenario_{i}_rep0" for i in ids)
    assert all(r["status"] in ("Completed", "Perfect") for r in records)
    # The three troubled routes ran exactly twice, every other route once: nothing finished was re-run.
    attempts = {e["route"]: e["attempt"] for e in bench.events() if e["event"] == "route_start"}
    assert {rid for rid, n in attempts.items() if n == 2} == {"2001", "2004", "2007"}
    assert max(attempts.values()) == 2
    finished = [e["route"] for e in bench.events() if e["event"] == "route_end"]
    assert sorted(set(finished)) == sorted(ids) and finished.count("2001") == 2 and len(finished) == 13
    # Launch environment and arguments as upstream's run_evaluation.sh sets them; --resume only on restarts.
    starts = [e for e in bench.events() if e["event"] == "evaluator_start"]
    for e in starts:
        paths = e["pythonpath"].split(os.pathsep)
        for needed in (bench.carla / "PythonAPI", bench.carla / "PythonAPI" / "carla", bench.b2d / "leaderboard",
                       bench.b2d / "leaderboard" / "team_code", bench.b2d / "scenario_runner"):
            assert str(needed) in paths
        assert (e["carla_root"], e["save_path"], e["cwd"]) == (str(bench.carla), str(out / "save"), str(bench.b2d))
        assert e["cuda"] == str(e["gpu"])
    for checkpoint in {e["checkpoint"] for e in starts}:
        launches = [e for e in starts if e["checkpoint"] == checkpoint]
        ends = [e["time"] for e in bench.events() if e["event"] == "route_end" and e["checkpoint"] == checkpoint]
        for launch in launches:
            # Resume exactly when the checkpoint already held a record.
            assert launch["resume"] is any(t < launch["time"] for t in ends)
            assert any(a.startswith("--resume") for a in launch["argv"]) is launch["resume"]
    assert {e["gpu"] for e in starts} == {0, 1}
    assert any(e["resume"] for e in starts) and not all(e["resume"] for e in starts)
    assert_no_leftovers(out)
    assert not any(alive(pid) for pid in carla_pids(bench))
    assert not any(alive(e["child"]) for e in bench.events() if e["event"] == "orphan")
    # Every launch has its own log with the evaluator's stdout and stderr.
    logs = sorted((out / "logs").glob("job_*.launch_*.log"))
    assert len(logs) == len(load_run_state(RunLayout(out)).jobs) + 3
    assert any("Preparing RouteScenario_2001" in p.read_text() for p in logs)
    status = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--json"],
                            capture_output=True, text=True, timeout=60)
    summary = json.loads(status.stdout)
    assert (summary["done"], summary["total"], summary["running_jobs"], summary["complete"]) == (12, 12, 0, True)
    assert sum(j["crashes"] for j in summary["jobs"]) == 3


def test_route_that_always_crashes_is_written_off_after_n_attempts(bench: FakeBench, tmp_path: Path) -> None:
    ids = ["3001", "3002", "3003", "3004"]
    routes = write_routes(tmp_path, ids)
    bench.set_plan({"3002": ["sim_crash"], "3003": ["die"]})
    out = tmp_path / "run"
    result = subprocess.run(run_args(bench, out, routes, "--retries", "2", gpus="0"), env=run_env(bench),
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results" / "job_000.json").read_text())
    records = data["_checkpoint"]["records"]
    assert [r["route_id"] for r in records] == [f"RouteScenario_{i}_rep0" for i in ids]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    for crashed in (records[1], records[2]):
        assert crashed["status"].startswith("Failed") and "skipped after 2 attempts" in crashed["status"]
        assert crashed["scores"]["score_composed"] == 0 and crashed["runner"]["attempts"] == 2
        assert set(crashed["infractions"]) == set(records[0]["infractions"])
    assert "exited with code 255" in records[1]["runner"]["reason"]
    assert "SIGKILL" in records[2]["runner"]["reason"]
    assert records[3]["status"] in ("Completed", "Perfect")
    starts = [e["route"] for e in bench.events() if e["event"] == "route_start"]
    assert starts.count("3001") == 1 and starts.count("3002") == 2 and starts.count("3003") == 2 and starts.count("3004") == 1
    assert data["_checkpoint"]["progress"] == [4, 4]
    summary = json.loads(subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--json"],
                                        capture_output=True, text=True, timeout=60).stdout)
    assert (summary["done"], summary["failed"], summary["written_off"]) == (4, 2, 2)
    text = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--jobs"],
                          capture_output=True, text=True, timeout=60).stdout
    assert text.startswith("routes: 4/4 done (2 failed, 2 written off after repeated crashes), 0 job(s) running")
    assert "complete" in text.splitlines()[2]
    assert_no_leftovers(out)


def test_slow_route_that_keeps_computing_is_not_taken_for_a_hang(bench: FakeBench, tmp_path: Path) -> None:
    routes = write_routes(tmp_path, ["3501", "3502"])
    bench.set_plan({"3501": ["busy"]})
    out = tmp_path / "run"
    # 5 s of computation without writing anything, against a 3 s stall timeout (the evaluator needs
    # 0.5 s of CPU per 3 s to count as alive, so this holds on a loaded machine too).
    result = subprocess.run(run_args(bench, out, routes, "--stall-timeout", "3", gpus="0"), env=run_env(bench),
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [e["route"] for e in bench.events() if e["event"] == "route_start"] == ["3501", "3502"]
    state = json.loads((out / "jobs" / "job_000" / "state.json").read_text())
    assert state["launches"] == 1 and state["attempts"] == {}


def test_evaluator_failing_before_any_route_stops_the_job_without_writing_routes_off(bench: FakeBench, tmp_path: Path) -> None:
    routes = write_routes(tmp_path, ["3601", "3602"])
    out = tmp_path / "run"
    env = run_env(bench)
    env["FAKE_B2D_FAIL_STARTUP"] = "1"
    result = subprocess.run(run_args(bench, out, routes, "--retries", "2", gpus="0"), env=env,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 1
    log = out / "logs" / "job_000.launch_002.log"
    assert f"job 0 stopped: its evaluator keeps failing before the first route (2 launches in a row); see {log}" in result.stderr
    assert "No module named 'team_code'" in log.read_text()  # the evaluator's stderr is in its log
    state = json.loads((out / "jobs" / "job_000" / "state.json").read_text())
    assert state["status"] == "broken" and state["attempts"] == {} and state["launches"] == 2
    assert all_records(out) == []


def test_rejected_sensor_setup_stops_the_job_instead_of_rejecting_every_route(bench: FakeBench, tmp_path: Path) -> None:
    routes = write_routes(tmp_path, ["3701", "3702", "3703"])
    bench.set_plan({"3701": ["reject"]})
    out = tmp_path / "run"
    result = subprocess.run(run_args(bench, out, routes, gpus="0"), env=run_env(bench), capture_output=True, text=True, timeout=100)
    assert result.returncode == 1
    assert "job 0 stopped: the evaluator rejected the agent's sensors on RouteScenario_3701_rep0" in result.stderr
    assert [e["route"] for e in bench.events() if e["event"] == "route_start"] == ["3701"]
    assert_no_leftovers(out)


def test_killed_orchestrator_resumes_where_it_was(bench: FakeBench, tmp_path: Path) -> None:
    ids = [str(4000 + i) for i in range(8)]
    routes = write_routes(tmp_path, ids)
    out = tmp_path / "run"
    env = run_env(bench, route_seconds=1.5)
    args = run_args(bench, out, routes, "--stall-timeout", "5")
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len([e for e in bench.events() if e["event"] == "route_end"]) < 2:
        time.sleep(0.05)
    mid = subprocess.run([sys.executable, "-m", "bench2drive_eval", "status", str(out), "--json"],
                         capture_output=True, text=True, timeout=60)
    # A second orchestrator on the same folder is refused while the first one lives.
    rival = subprocess.run([sys.executable, "-m", "bench2drive_eval", "run", "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert rival.returncode == 2 and f"is already being driven by pid {first.pid}" in rival.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    summary = json.loads(mid.stdout)
    assert 0 < summary["done"] < 8 and summary["running_jobs"] >= 1
    layout = RunLayout(out)
    run_id = load_run_state(layout).run_id
    split_bytes = {p.name: p.read_bytes() for p in layout.splits.iterdir()}
    split_mtimes = {p.name: p.stat().st_mtime_ns for p in layout.splits.iterdir()}
    orphans = [e["pid"] for e in bench.events() if e["event"] == "evaluator_start"]
    assert any(alive(pid) for pid in orphans), "the evaluators should outlive the killed orchestrator"
    # Resume with nothing but the run folder: the stored configuration and split are used.
    second = subprocess.run([sys.executable, "-m", "bench2drive_eval", "run", "--out", str(out), "--no-score",
                             "--poll-interval", "0.1"], env=env, capture_output=True, text=True, timeout=100)
    assert second.returncode == 0, second.stderr[-3000:]
    assert load_run_state(layout).run_id == run_id
    assert {p.name: p.read_bytes() for p in layout.splits.iterdir()} == split_bytes
    assert {p.name: p.stat().st_mtime_ns for p in layout.splits.iterdir()} == split_mtimes
    records = all_records(out)
    assert sorted(r["route_id"] for r in records) == sorted(f"RouteScenario_{i}_rep0" for i in ids)
    finished = [e["route"] for e in bench.events() if e["event"] == "route_end"]
    assert sorted(finished) == sorted(ids), "a finished route ran again or a route never finished"
    assert not any(alive(pid) for pid in orphans)  # the evaluators the killed orchestrator left were ended
    assert_no_leftovers(out)


def test_two_jobs_on_one_gpu_do_not_kill_each_others_simulator(bench: FakeBench, tmp_path: Path) -> None:
    ids = ["5001", "5002", "5003", "5004"]
    routes = write_routes(tmp_path, ids, seed=3)
    out = tmp_path / "run"
    bench.set_plan({"5001": ["sim_crash", "ok"]})
    # Both jobs use GPU 0; upstream's crash handling kills every process matching -graphicsadapter=0.
    args = [a for a in run_args(bench, out, routes, gpus="0", jobs_per_gpu=2) if a != "--no-score"]
    result = subprocess.run(args, env=run_env(bench, route_seconds=1.0), capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    # On completion the run is merged and scored (the scoring module's own numbers are tested elsewhere).
    scored = json.loads((out / "score" / "metrics.json").read_text())
    expected = sum(float(int(i) % 90 + 10) for i in ids) / len(ids)
    assert scored["driving_score"] == pytest.approx(expected, abs=0.01)
    run = load_run_state(RunLayout(out))
    crashed_job = next(j.index for j in run.jobs if "5001" in j.route_ids)
    other = 1 - crashed_job
    other_checkpoint = str(RunLayout(out).checkpoint(other))
    starts = [e for e in bench.events() if e["event"] == "evaluator_start"]
    assert len([e for e in starts if e["checkpoint"] == other_checkpoint]) == 1
    assert {e["gpu"] for e in starts} == {0} and {e["cuda"] for e in starts} == {"0"}
    assert not any(e.get("carla_dead") for e in bench.events() if e["event"] == "route_end")
    assert all(r["status"] in ("Completed", "Perfect") for r in all_records(out))
    assert_no_leftovers(out)


def test_ps_guard_limits_upstreams_kill_to_its_own_job(tmp_path: Path) -> None:
    guard_dir = tmp_path / "bin"
    write_ps_guard(guard_dir)
    servers = {}
    for tag in ("runA:000", "runA:001"):
        env = dict(os.environ, **{TAG_VARIABLE: tag})
        servers[tag] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-graphicsadapter=7"],
                                        env=env, start_new_session=True)
    try:
        time.sleep(0.3)
        kill = "ps -ef | grep -- '-graphicsadapter=7' | grep -v grep | awk '{print $2}' | xargs -r kill -9"
        env = dict(os.environ, **{TAG_VARIABLE: "runA:000", "PATH": f"{guard_dir}:{os.environ['PATH']}"})
        subprocess.run(kill, shell=True, env=env, timeout=30)
        servers["runA:000"].wait(timeout=10)
        time.sleep(0.2)
        assert servers["runA:001"].poll() is None, "the other job's simulator was killed"
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()


def test_corrupt_checkpoint_is_restored_from_the_last_good_copy(bench: FakeBench, tmp_path: Path) -> None:
    ids = ["6001", "6002", "6003"]
    routes = write_routes(tmp_path, ids)
    out = tmp_path / "run"
    env = run_env(bench)
    bench.set_plan({"6002": ["hang", "ok"]})
    args = run_args(bench, out, routes, gpus="0")
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(e["event"] == "route_start" and e["route"] == "6002" for e in bench.events()):
        time.sleep(0.05)
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    layout = RunLayout(out)
    assert json.loads(layout.checkpoint_backup(0).read_text())["_checkpoint"]["records"][0]["route_id"] == "RouteScenario_6001_rep0"
    text = layout.checkpoint(0).read_text()
    layout.checkpoint(0).write_text(text[: len(text) // 2])  # what a kill during upstream's non-atomic write leaves
    second = subprocess.run([sys.executable, "-m", "bench2drive_eval", "run", "--out", str(out), "--no-score"],
                            env=env, capture_output=True, text=True, timeout=100)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [r["route_id"] for r in all_records(out)] == [f"RouteScenario_{i}_rep0" for i in ids]
    assert [e["route"] for e in bench.events() if e["event"] == "route_end"].count("6001") == 1
    assert_no_leftovers(out)


# ---- bad arguments ----------------------------------------------------------------------------------------


def _cli(bench: FakeBench, out: Path, routes: str, capsys, monkeypatch, *extra: str, carla: str | None = "default") -> tuple[int, str]:
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    argv = ["run", "--out", str(out), "--bench2drive-root", str(bench.b2d), "--routes", routes, "--agent", str(bench.agent)]
    if carla is not None:
        argv += ["--carla-root", str(bench.carla) if carla == "default" else carla]
    code = cli_main(argv + list(extra))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_carla_root", "CARLA_ROOT is not set"),
        ("no_carla_server", "CarlaUE4.sh not found"),
        ("routes_missing", "routes file not found"),
        ("bench2drive220_missing", "leaderboard/data/bench2drive220.xml"),
        ("empty_gpus", "GPU list is empty"),
        ("port_range_outside", "outside 1024-65535"),
        ("subset_unknown", "'999' is not in the routes file"),
        ("port_overlap", "port ranges overlap"),
        ("bad_retries", "--retries must be at least 1"),
    ],
)
def test_bad_arguments_fail_with_one_line_before_anything_starts(case, expected, bench: FakeBench, tmp_path: Path, capsys, monkeypatch) -> None:
    routes = str(write_routes(tmp_path, ["1", "2"]))
    out = tmp_path / "run"
    extra: list[str] = []
    carla: str | None = "default"
    if case == "no_carla_root":
        carla = None
    elif case == "no_carla_server":
        carla = str(tmp_path)
    elif case == "routes_missing":
        routes = str(tmp_path / "nope.xml")
    elif case == "bench2drive220_missing":
        routes = "bench2drive220"
    elif case == "empty_gpus":
        extra = ["--gpus", ","]
    elif case == "port_range_outside":
        extra = ["--port-base", "65500"]
    elif case == "port_overlap":
        extra = ["--port-base", "30000", "--tm-port-base", "30100"]
    elif case == "subset_unknown":
        extra = ["--routes-subset", "999"]
    elif case == "bad_retries":
        extra = ["--retries", "0"]
    code, err = _cli(bench, out, routes, capsys, monkeypatch, *extra, carla=carla)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert not out.exists()
    assert bench.events() == []


def test_exhausted_port_range_is_reported_before_anything_starts(bench: FakeBench, tmp_path: Path, capsys, monkeypatch) -> None:
    routes = str(write_routes(tmp_path, ["1", "2"]))
    holders = []
    base = free_port_base() + 300
    try:
        for port in range(base, base + 4):  # a stride of 4 leaves no 3 consecutive free ports
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
            holders.append(sock)
        code, err = _cli(bench, tmp_path / "run", routes, capsys, monkeypatch,
                         "--port-base", str(base), "--port-stride", "4", "--tm-port-base", str(base + 20000))
    finally:
        for sock in holders:
            sock.close()
    assert code == 2 and "exhausted" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_resume_refuses_different_routes(bench: FakeBench, tmp_path: Path, capsys, monkeypatch) -> None:
    routes = write_routes(tmp_path, ["1", "2"])
    out = tmp_path / "run"
    result = subprocess.run(run_args(bench, out, routes, gpus="0"), env=run_env(bench), capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    other = tmp_path / "other.xml"
    other.write_text(route_xml(["1", "2", "3"]))
    code, err = _cli(bench, out, str(other), capsys, monkeypatch)
    assert code == 2 and "was started with --routes" in err


def test_runner_modules_do_not_import_torch_or_the_model() -> None:
    code = (
        "import sys, bench2drive_eval.runner, bench2drive_eval.status, bench2drive_eval.slurm; "
        "print(sorted(m for m in ('torch', 'model', 'agent') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]"
