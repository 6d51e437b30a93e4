"""Start the upstream evaluator for one job (own process group, logs, environment) and end only that job's processes.

Every process a job starts carries BENCH2DRIVE_EVAL_JOB=<run id>:<job> in its environment, inherited by
the CARLA server the evaluator launches in a session of its own. Ending a job signals the evaluator's
process group, its descendants and the processes carrying its tag, never anything found by name.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench2drive_eval.ports import JobPorts
from bench2drive_eval.run_config import RunConfig
from bench2drive_eval.run_state import RunLayout

TAG_VARIABLE = "BENCH2DRIVE_EVAL_JOB"


def job_tag(run_id: str, job: int) -> str:
    return f"{run_id}:{job:03d}"


@dataclass(frozen=True)
class Launch:
    """One start of the evaluator for one job."""

    job: int
    gpu: int
    ports: JobPorts
    resume: bool
    log_path: Path
    command: tuple[str, ...]


def carla_pythonpath(carla_root: Path) -> list[str]:
    api = carla_root / "PythonAPI"
    paths = [str(api), str(api / "carla")]
    paths += sorted(str(p) for p in (api / "carla" / "dist").glob("carla-0.9.15-py3*.egg"))
    return paths


def evaluator_env(config: RunConfig, layout: RunLayout, tag: str, gpu: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment upstream's run_evaluation.sh sets up, plus this job's tag and the `ps` guard on PATH."""
    env = dict(os.environ if base is None else base)
    b2d = config.bench2drive_root
    extra = carla_pythonpath(config.carla_root) + [
        str(b2d / "leaderboard"),
        str(b2d / "leaderboard" / "team_code"),
        str(b2d / "scenario_runner"),
    ]
    agent_dir = config.agent.parent
    if (agent_dir / "__init__.py").exists():
        # The agent lives in a package (like this project's agent/): its imports need the folder above.
        extra.append(str(agent_dir.parent))
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(extra),
            "CARLA_ROOT": str(config.carla_root),
            "CARLA_SERVER": str(config.carla_root / "CarlaUE4.sh"),
            "SCENARIO_RUNNER_ROOT": str(b2d / "scenario_runner"),
            "LEADERBOARD_ROOT": str(b2d / "leaderboard"),
            "SAVE_PATH": str(layout.save_path),
            "CUDA_VISIBLE_DEVICES": str(gpu),
            "IS_BENCH2DRIVE": "True",
            # Live logs: the watchdog reads log growth as a sign of life.
            "PYTHONUNBUFFERED": "1",
            "CHALLENGE_TRACK_CODENAME": config.track,
            "PATH": os.pathsep.join([str(layout.bin), env.get("PATH", "/usr/bin:/bin")]),
            TAG_VARIABLE: tag,
        }
    )
    return env


def evaluator_command(config: RunConfig, layout: RunLayout, job: int, routes_xml: Path, ports: JobPorts, gpu: int, resume: bool) -> tuple[str, ...]:
    command = [
        config.python,
        str(config.evaluator),
        f"--routes={routes_xml}",
        "--repetitions=1",
        f"--track={config.track}",
        f"--checkpoint={layout.checkpoint(job)}",
        f"--debug-checkpoint={layout.live_results(job)}",
        f"--agent={config.agent}",
        f"--agent-config={config.agent_config}",
        "--debug=0",
        f"--port={ports.rpc}",
        f"--traffic-manager-port={ports.traffic_manager}",
        f"--gpu-rank={gpu}",
    ]
    if resume:
        # Upstream declares --resume with type=bool: any non-empty value (even "False") turns it on,
        # so it is passed only when resuming.
        command.append("--resume=1")
    return tuple(command)


def start_evaluator(launch: Launch, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start the evaluator in a new session (own process group), stdout and stderr both into the launch's log."""
    launch.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(launch.log_path, "ab") as log:
        log.write(f"# bench2drive-eval: {' '.join(launch.command)}\n".encode())
        log.flush()
        return subprocess.Popen(
            launch.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# ---- finding and ending a job's processes -------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        parent = _parent(other)
        if parent is not None:
            children.setdefault(parent, []).append(other)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def tagged_pids(tag: str) -> set[int]:
    """Processes whose environment carries this job's tag (readable for the user's own processes only)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found: set[int] = set()
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(pid)
    return found


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def alive(pid: int, started: int | None = None) -> bool:
    """True when `pid` runs and, if `started` is given, is still the same process (not a reused pid)."""
    now = start_time(pid)
    if now is None or is_zombie(pid):
        return False
    return started is None or now == started


def job_processes(tag: str, recorded: list[list[int]], root_pid: int | None = None) -> set[int]:
    """Everything belonging to one job: tagged processes, recorded live pids and descendants of the evaluator."""
    pids = tagged_pids(tag)
    pids.update(pid for pid, started in recorded if alive(pid, started))
    if root_pid is not None and alive(root_pid):
        pids.add(root_pid)
        pids.update(descendants(root_pid))
    return {pid for pid in pids if pid != os.getpid()}


def _signal_all(pids: set[int], sig: int) -> None:
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except OSError:
            pass
    own_group = os.getpgrp()
    for group in groups:
        # A process group that also holds the orchestrator itself is never signalled as a whole.
        if group != own_group:
            try:
                os.killpg(group, sig)
            except OSError:
                pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def end_processes(tag: str, recorded: list[list[int]], root: subprocess.Popen | None, grace_s: float) -> list[int]:
    """SIGTERM the job's processes, SIGKILL what is left after `grace_s`; returns the pids that were signalled."""
    root_pid = root.pid if root is not None else None
    pids = job_processes(tag, recorded, root_pid)
    if root_pid is not None and root.poll() is None:
        pids.add(root_pid)
    if not pids:
        return []
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if root is not None:
            root.poll()
        if not any(alive(p) for p in pids | job_processes(tag, [], None)):
            break
        time.sleep(0.1)
    left = {p for p in pids | job_processes(tag, [], None) if alive(p)}
    if left:
        _signal_all(left, signal.SIGKILL)
    if root is not None:
        try:
            root.wait(timeout=max(grace_s, 1.0))
        except subprocess.TimeoutExpired:
            pass
    return sorted(pids)


# ---- the `ps` guard -------------------------------------------------------------------------------

PS_GUARD = '''#!{python}
"""`ps` as seen by one bench2drive-eval job: only that job's own processes are listed.

Generated by bench2drive-eval run. Upstream's evaluator ends a crashed run with
`ps -ef | grep -graphicsadapter=N | ... | xargs kill -9`, which would kill every CARLA on the GPU,
including other jobs' servers; with this first on PATH it can only reach its own job.
"""
import os
import subprocess
import sys

VARIABLE = "{variable}"
REAL_PS = "{real_ps}"

result = subprocess.run([REAL_PS] + sys.argv[1:], stdout=subprocess.PIPE, text=True)
tag = os.environ.get(VARIABLE)
lines = result.stdout.splitlines()
if not tag or not lines or "PID" not in lines[0].split():
    sys.stdout.write(result.stdout)
    sys.exit(result.returncode)
column = lines[0].split().index("PID")
needle = (VARIABLE + "=" + tag).encode()


def ours(pid):
    try:
        with open("/proc/%s/environ" % pid, "rb") as handle:
            return needle in handle.read().split(b"\\0")
    except OSError:
        return False


print(lines[0])
for line in lines[1:]:
    fields = line.split()
    if len(fields) > column and ours(fields[column]):
        print(line)
sys.exit(result.returncode)
'''


def write_ps_guard(bin_dir: Path, python: str = sys.executable) -> Path:
    """Write RUN_DIR/bin/ps (see PS_GUARD); raises FileNotFoundError when the system has no ps."""
    real_ps = shutil.which("ps", path=os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != bin_dir))
    if real_ps is None:
        raise FileNotFoundError("the 'ps' program was not found on PATH (procps is needed)")
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "ps"
    tmp = bin_dir / ".ps.tmp"
    tmp.write_text(PS_GUARD.format(python=python, variable=TAG_VARIABLE, real_ps=real_ps))
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path
