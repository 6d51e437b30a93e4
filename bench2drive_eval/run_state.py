"""The run folder's persistent state: layout, the run description (written once) and per-job state (atomic writes)."""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench2drive_eval.jsonio import JSONFileError, read_json, write_json_atomic
from bench2drive_eval.run_config import RunConfig
from bench2drive_eval.splitting import JobSplit

FORMAT = "bench2drive-eval-run/1"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class RunLayout:
    """Where everything of a run lives inside RUN_DIR."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "run_state.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def results(self) -> Path:
        """Only the evaluator's result JSONs (one per job): what the scorer reads."""
        return self.root / "results"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def save_path(self) -> Path:
        return self.root / "save"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def slurm_state(self) -> Path:
        return self.root / "slurm_state.json"

    @property
    def lock(self) -> Path:
        return self.root / ".orchestrator.lock"

    @property
    def runner_log(self) -> Path:
        return self.logs / "runner.log"

    def job_dir(self, job: int) -> Path:
        return self.root / "jobs" / f"job_{job:03d}"

    def job_lock(self, job: int) -> Path:
        return self.job_dir(job) / ".driver.lock"

    def checkpoint(self, job: int) -> Path:
        return self.results / f"job_{job:03d}.json"

    def checkpoint_backup(self, job: int) -> Path:
        return self.job_dir(job) / "checkpoint.last_good.json"

    def live_results(self, job: int) -> Path:
        return self.job_dir(job) / "live_results.txt"

    def job_state(self, job: int) -> Path:
        return self.job_dir(job) / "state.json"

    def job_log(self, job: int, launch: int) -> Path:
        return self.logs / f"job_{job:03d}.launch_{launch:03d}.log"


@dataclass(frozen=True)
class RunState:
    """What never changes once a run exists: its configuration and its split."""

    run_id: str
    created: str
    config: RunConfig
    routes_sha256: str
    jobs: tuple[JobSplit, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "created": self.created,
            "routes_sha256": self.routes_sha256,
            "config": self.config.to_json(),
            "jobs": [
                {
                    "index": j.index,
                    "routes_xml": str(j.routes_xml),
                    "route_ids": list(j.route_ids),
                    "route_lengths": [round(x, 3) for x in j.route_lengths],
                }
                for j in self.jobs
            ],
        }

    @property
    def total_routes(self) -> int:
        return sum(len(j.route_ids) for j in self.jobs)


def new_run_state(config: RunConfig, jobs: list[JobSplit]) -> RunState:
    return RunState(uuid.uuid4().hex[:12], utc_now(), config, file_sha256(config.routes_file), tuple(jobs))


def save_run_state(layout: RunLayout, state: RunState) -> None:
    write_json_atomic(layout.state_file, state.to_json())


def load_run_state(layout: RunLayout) -> RunState:
    data = read_json(layout.state_file)
    where = str(layout.state_file)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise JSONFileError(f"{where}: not a bench2drive-eval run state (format {FORMAT!r} expected)")
    try:
        jobs = tuple(
            JobSplit(int(j["index"]), Path(j["routes_xml"]), tuple(j["route_ids"]), tuple(float(x) for x in j["route_lengths"]))
            for j in data["jobs"]
        )
        return RunState(str(data["run_id"]), str(data["created"]), RunConfig.from_json(data["config"]), str(data["routes_sha256"]), jobs)
    except (KeyError, TypeError, ValueError) as error:
        raise JSONFileError(f"{where}: malformed run state ({error})") from None


@dataclass
class JobState:
    """Mutable per-job bookkeeping; each job's file is written only by whoever drives that job."""

    attempts: dict[str, int] = field(default_factory=dict)  # crashes/hangs counted per route id
    launches: int = 0
    status: str = "pending"  # pending | running | complete
    current_route: str = ""
    # Processes this job started, as [pid, start time in clock ticks] so a reused pid is never mistaken for ours.
    pids: list[list[int]] = field(default_factory=list)
    driver: dict[str, Any] = field(default_factory=dict)  # host, pid and start of the process driving the job
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "launches": self.launches,
            "status": self.status,
            "current_route": self.current_route,
            "pids": self.pids,
            "driver": self.driver,
            "events": self.events[-200:],
        }

    def log(self, message: str) -> None:
        self.events.append(f"{utc_now()} {message}")


def load_job_state(layout: RunLayout, job: int) -> JobState:
    path = layout.job_state(job)
    if not path.exists():
        return JobState()
    try:
        data = read_json(path)
        return JobState(
            attempts={str(k): int(v) for k, v in data.get("attempts", {}).items()},
            launches=int(data.get("launches", 0)),
            status=str(data.get("status", "pending")),
            current_route=str(data.get("current_route", "")),
            pids=[[int(p), int(t)] for p, t in data.get("pids", [])],
            driver=dict(data.get("driver", {})),
            events=list(data.get("events", [])),
        )
    except (JSONFileError, AttributeError, TypeError, ValueError) as error:
        raise JSONFileError(f"{path}: malformed job state ({error})") from None


def save_job_state(layout: RunLayout, job: int, state: JobState) -> None:
    write_json_atomic(layout.job_state(job), state.to_json())


class RunBusyError(ValueError):
    """Another process already drives this run folder (or this job)."""


class FolderLock:
    """An exclusive flock on a file, held while one process drives a run or a job; the kernel drops it
    when that process dies, even by SIGKILL."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunBusyError(f"{self.what} is already being driven by {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
