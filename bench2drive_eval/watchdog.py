"""Watch one job: the checkpoint seen from the runner (resume point, failed records) and the restart loop.

Upstream's resume (RouteIndexer.validate_and_resume) restarts at the first record whose status is exactly
one of RETRIED_STATUSES, and one route earlier when entry_status is "Crashed". The runner decides the
route itself (the first one without a final record) and puts the file in the state that makes upstream
resume exactly there.
"""
from __future__ import annotations

import copy
import os
import signal as _signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench2drive_eval.jsonio import JSONFileError, read_json, write_json_atomic
from bench2drive_eval.ports import PortRangeError, pick_job_ports
from bench2drive_eval.processes import (
    Launch, cpu_seconds, end_processes, evaluator_command, evaluator_env, job_processes, job_tag, start_evaluator,
    start_time,
)
from bench2drive_eval.run_state import JobState, RunLayout, RunState, load_job_state, save_job_state

RETRIED_STATUSES = frozenset({"Failed", "Failed - Simulation crashed", "Failed - Agent crashed"})
# Records that are not a result of the route: the evaluator died or the simulator crashed under it.
UNFINISHED_STATUSES = frozenset({"Failed - Simulation crashed", "Started"})
KEPT_SUFFIX = " (kept: not re-run on resume)"
SKIPPED_MARK = "skipped after"
SENSORS_REJECTED = "Agent's sensors were invalid"
# CPU seconds the evaluator must have used since it last counted as alive to count again (idle threads use far less).
CPU_SIGN_OF_LIFE_S = 0.5
# How often a running job's processes are written to its state file (the environment tag finds them anyway).
PID_RECORD_INTERVAL_S = 10.0
INFRACTION_KEYS = (
    "collisions_layout", "collisions_pedestrian", "collisions_vehicle", "red_light", "stop_infraction",
    "outside_route_lanes", "min_speed_infractions", "yield_emergency_vehicle_infractions",
    "scenario_timeouts", "route_dev", "vehicle_blocked", "route_timeout",
)


def route_key(route_id: str) -> str:
    return f"RouteScenario_{route_id}_rep0"


def records_of(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not data:
        return []
    records = (data.get("_checkpoint") or {}).get("records") or []
    return [r for r in records if isinstance(r, dict)]


def is_skipped(record: dict[str, Any]) -> bool:
    return bool((record.get("runner") or {}).get("skipped"))


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint, None when it does not exist yet; JSONFileError when it is unreadable."""
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise JSONFileError(f"{path}: not a leaderboard checkpoint (top level is not an object)")
    return data


def check_alignment(path: Path, records: list[dict[str, Any]], route_ids: tuple[str, ...]) -> None:
    """Records are positional: record i must be route i of the job's route file."""
    if len(records) > len(route_ids):
        raise ValueError(f"{path}: {len(records)} records but the job has only {len(route_ids)} routes")
    for i, record in enumerate(records):
        if record.get("route_id") != route_key(route_ids[i]):
            raise ValueError(
                f"{path}: record {i} is {record.get('route_id')!r}, expected {route_key(route_ids[i])!r}: "
                "this checkpoint does not belong to this job's route file"
            )


def first_unfinished(records: list[dict[str, Any]], n_routes: int) -> int:
    """Index of the first route of the job without a final record (n_routes when the job is done)."""
    for i in range(n_routes):
        if i >= len(records) or records[i].get("status") in UNFINISHED_STATUSES:
            return i
    return n_routes


@dataclass(frozen=True)
class RouteInfo:
    route_id: str
    town: str
    scenario_name: str


def failed_record(index: int, route: RouteInfo, previous: dict[str, Any] | None, attempts: int, reason: str) -> dict[str, Any]:
    """An explicit failed record (score 0) in the statistics manager's format, for a route written off."""
    previous = previous or {}
    meta = previous.get("meta") or {}
    return {
        "index": index,
        "route_id": route_key(route.route_id),
        "scenario_name": previous.get("scenario_name") or route.scenario_name,
        "weather_id": previous.get("weather_id"),
        "save_name": previous.get("save_name") or "",
        "town_name": previous.get("town_name") or route.town,
        "status": f"Failed - Simulation crashed ({SKIPPED_MARK} {attempts} attempts)",
        "num_infractions": 0,
        "infractions": {key: [] for key in INFRACTION_KEYS},
        "scores": {"score_route": 0, "score_penalty": 0, "score_composed": 0},
        "meta": {"route_length": meta.get("route_length", 0), "duration_game": 0, "duration_system": 0},
        # Extra keys survive upstream's resume (records are rebuilt attribute by attribute).
        "runner": {"skipped": True, "attempts": attempts, "reason": reason},
    }


def empty_checkpoint(n_routes: int) -> dict[str, Any]:
    return {
        "_checkpoint": {"global_record": {}, "progress": [0, n_routes], "records": []},
        "entry_status": "Started",
        "eligible": False,
        "sensors": [],
        "values": [],
        "labels": [],
    }


def prepare_resume(data: dict[str, Any] | None, n_routes: int, resume_at: int) -> dict[str, Any]:
    """A copy of the checkpoint that upstream's resume restarts at route `resume_at`, with no record lost."""
    out = copy.deepcopy(data) if data else empty_checkpoint(n_routes)
    checkpoint = out.setdefault("_checkpoint", {})
    records = checkpoint.setdefault("records", [])
    for i, record in enumerate(records[:resume_at]):
        record["index"] = i
        if record.get("status") in RETRIED_STATUSES:
            # A final result (e.g. the agent raised, the evaluator moved on); upstream would go back and
            # re-run everything from here.
            record.setdefault("runner", {}).update({"original_status": record["status"], "kept": True})
            record["status"] = f"{record['status']}{KEPT_SUFFIX}"
    checkpoint["progress"] = [resume_at, n_routes]
    # "Crashed" makes upstream repeat the route before; "Invalid" makes it ignore the file and start over.
    out["entry_status"] = "Started"
    out["eligible"] = False
    return out


def write_checkpoint(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data, indent=4, allow_nan=True)  # the evaluator's data, kept as it wrote it


# ---- the job driver -------------------------------------------------------------------------------

def route_infos(routes_xml: Path) -> list[RouteInfo]:
    infos = []
    for element in ET.parse(routes_xml).getroot().iter("route"):
        scenario = element.find("scenarios/scenario")
        infos.append(RouteInfo(element.get("id", ""), element.get("town", ""), scenario.get("name", "") if scenario is not None else ""))
    return infos


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {_signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class JobDriver:
    """Runs one job to the end on one GPU: start, watch, end and restart the evaluator, write off routes."""

    def __init__(self, run: RunState, layout: RunLayout, job: int, gpu: int, base_env: dict[str, str] | None = None) -> None:
        self.run = run
        self.config = run.config
        self.layout = layout
        self.job = job
        self.gpu = gpu
        self.split = run.jobs[job]
        self.routes = route_infos(self.split.routes_xml)
        self.tag = job_tag(run.run_id, job)
        self.base_env = base_env
        self.state: JobState = load_job_state(layout, job)
        self.proc: subprocess.Popen | None = None
        self.launched_at = 0.0
        self.startup_failures = 0
        # The evaluator runs the agent in its own process: CPU time it keeps using is a sign of life
        # even when a slow route writes nothing for a long time.
        self._cpu_mark = 0.0
        self._cpu_alive_at = 0.0
        self._pids_recorded_at = 0.0
        self.records: list[dict[str, Any]] = []
        self._checkpoint_mtime = 0.0
        self.layout.job_dir(job).mkdir(parents=True, exist_ok=True)

    # -- files --

    @property
    def checkpoint_path(self) -> Path:
        return self.layout.checkpoint(self.job)

    @property
    def n_routes(self) -> int:
        return len(self.split.route_ids)

    def _save(self) -> None:
        save_job_state(self.layout, self.job, self.state)

    def _load_settled_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint once no evaluator writes it; a corrupt file is replaced by the last good copy."""
        try:
            data = read_checkpoint(self.checkpoint_path)
        except JSONFileError as error:
            backup = self.layout.checkpoint_backup(self.job)
            self.state.log(f"checkpoint unreadable ({error}); restoring the last good copy")
            data = read_checkpoint(backup) if backup.exists() else None
            if data is not None:
                write_checkpoint(self.checkpoint_path, data)
            else:
                self.checkpoint_path.replace(self.checkpoint_path.with_suffix(".corrupt.json.bad"))
        records = records_of(data)
        check_alignment(self.checkpoint_path, records, self.split.route_ids)
        return data

    def _refresh_records(self) -> None:
        """Re-read the checkpoint while the evaluator runs; a half-written file is simply read next time."""
        try:
            mtime = self.checkpoint_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._checkpoint_mtime:
            return
        try:
            data = read_checkpoint(self.checkpoint_path)
        except JSONFileError:
            return
        self._checkpoint_mtime = mtime
        self.records = records_of(data)
        if data and self.records:
            write_json_atomic(self.layout.checkpoint_backup(self.job), data, indent=None, allow_nan=True)

    # -- lifecycle --

    def adopt(self) -> None:
        """At (re)start of the orchestrator: end processes a previous driver of this job left, then settle."""
        # Recorded pids mean something only on the machine that recorded them (SLURM tasks move).
        recorded = self.state.pids if self.state.driver.get("host") == socket.gethostname() else []
        leftovers = job_processes(self.tag, recorded)
        if leftovers:
            end_processes(self.tag, recorded, None, self.config.timeouts.kill_grace_s)
            self.state.log(f"ended {len(leftovers)} process(es) left by a previous driver: {sorted(leftovers)}")
        self.state.pids = []
        self.state.driver = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        self._settle(count_attempt=False, reason="")

    @property
    def complete(self) -> bool:
        return self.state.status == "complete"

    @property
    def broken(self) -> bool:
        return self.state.status == "broken"

    @property
    def broken_reason(self) -> str:
        """Why the job stopped (its last 'job stopped' event), for the one-line report."""
        for event in reversed(self.state.events):
            if "job stopped: " in event:
                return event.split("job stopped: ", 1)[1]
        return "see its state file"

    @property
    def finished(self) -> bool:
        """Nothing more will happen to this job in this session."""
        return self.state.status in ("complete", "broken")

    def _started_routes(self) -> bool:
        """Whether the last launch got as far as the route loop (upstream writes the checkpoint there first)."""
        try:
            return self.checkpoint_path.stat().st_mtime >= self.launched_at - 1e-3
        except FileNotFoundError:
            return False

    def _settle(self, count_attempt: bool, reason: str) -> None:
        """After the evaluator is gone: count the crash, write off a route if needed, set up the resume point."""
        if count_attempt and not self._started_routes():
            # Died before any route began (CARLA did not come up, the agent module does not import, ...):
            # not the route's fault, so no route is charged; repeated, the job is broken.
            self.startup_failures += 1
            self.state.log(f"launch failed before the first route ({reason}); "
                           f"{self.startup_failures} such failure(s) in a row")
            count_attempt = False
        elif count_attempt:
            self.startup_failures = 0
        data = self._load_settled_checkpoint()
        settled = copy.deepcopy(data)
        records = records_of(data)
        position = first_unfinished(records, self.n_routes)
        if count_attempt and position < self.n_routes:
            route = self.routes[position]
            attempts = self.state.attempts.get(route.route_id, 0) + 1
            self.state.attempts[route.route_id] = attempts
            self.state.log(f"route {route.route_id}: attempt {attempts} of {self.config.retries} failed ({reason})")
            if attempts >= self.config.retries:
                previous = records[position] if position < len(records) else None
                record = failed_record(position, route, previous, attempts, reason)
                data = copy.deepcopy(data) if data else empty_checkpoint(self.n_routes)
                records = data["_checkpoint"]["records"]
                if position < len(records):
                    records[position] = record
                else:
                    records.append(record)
                self.state.log(f"route {route.route_id}: written off after {attempts} attempts ({reason})")
                position = first_unfinished(records, self.n_routes)
        if records and position >= self.n_routes and data != settled:
            # Done: keep the evaluator's own final state; only a route written off last needs saving.
            data["_checkpoint"]["progress"] = [self.n_routes, self.n_routes]
            write_checkpoint(self.checkpoint_path, data)
        elif records and position < self.n_routes:
            prepared = prepare_resume(data, self.n_routes, position)
            if prepared != data:
                write_checkpoint(self.checkpoint_path, prepared)
            write_json_atomic(self.layout.checkpoint_backup(self.job), prepared, indent=None, allow_nan=True)
            data = prepared
        self.records = records_of(data)
        rejected = [r for r in self.records if SENSORS_REJECTED in str(r.get("status", ""))]
        if position >= self.n_routes:
            self.state.status = "complete"
        elif rejected:
            # Upstream stops at an invalid sensor setup; every further route would be rejected the same way.
            self.state.status = "broken"
            self.state.log(f"job stopped: the evaluator rejected the agent's sensors on {rejected[-1].get('route_id')}; "
                           f"see {self.layout.job_log(self.job, self.state.launches)}")
        elif self.startup_failures >= self.config.retries:
            self.state.status = "broken"
            self.state.log(f"job stopped: its evaluator keeps failing before the first route "
                           f"({self.startup_failures} launches in a row); see {self.layout.job_log(self.job, self.state.launches)}")
        else:
            self.state.status = "pending"
        self.state.current_route = "" if position >= self.n_routes else self.routes[position].route_id
        self._save()

    def launch(self) -> None:
        ports = pick_job_ports(self.config.ports, self.job)
        self.state.launches += 1
        resume = bool(self.records)
        command = evaluator_command(self.config, self.layout, self.job, self.split.routes_xml, ports, self.gpu, resume)
        launch = Launch(self.job, self.gpu, ports, resume, self.layout.job_log(self.job, self.state.launches), command)
        env = evaluator_env(self.config, self.layout, self.tag, self.gpu, self.base_env)
        self.proc = start_evaluator(launch, env, self.config.bench2drive_root)
        self.launched_at = time.time()
        self._cpu_mark, self._cpu_alive_at = 0.0, self.launched_at
        self.state.status = "running"
        self.state.pids = [[self.proc.pid, start_time(self.proc.pid) or 0]]
        self.state.log(
            f"launch {self.state.launches}: pid {self.proc.pid}, GPU {self.gpu}, ports {ports.rpc}/{ports.traffic_manager}, "
            f"{'resuming at' if resume else 'starting at'} route {self.state.current_route}"
        )
        self._save()

    def _last_sign_of_life(self) -> tuple[float, float]:
        """(last change of anything the evaluator writes, last change of the checkpoint)."""
        def mtime(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except FileNotFoundError:
                return 0.0
        checkpoint = max(mtime(self.checkpoint_path), self.launched_at)
        log = mtime(self.layout.job_log(self.job, self.state.launches))
        cpu = cpu_seconds(self.proc.pid) if self.proc is not None else None
        if cpu is not None and cpu - self._cpu_mark >= CPU_SIGN_OF_LIFE_S:
            self._cpu_mark, self._cpu_alive_at = cpu, time.time()
        return max(checkpoint, log, mtime(self.layout.live_results(self.job)), self._cpu_alive_at), checkpoint

    def _record_pids(self) -> None:
        """Note the job's processes (CARLA, strays) in its state file; a /proc scan, so not at every look."""
        now = time.time()
        if now - self._pids_recorded_at < PID_RECORD_INTERVAL_S:
            return
        self._pids_recorded_at = now
        known = {p for p, _ in self.state.pids}
        current = job_processes(self.tag, self.state.pids, self.proc.pid if self.proc else None)
        if current - known:
            self.state.pids = [[p, start_time(p) or 0] for p in sorted(current | known) if start_time(p) is not None]
            self._save()

    def stop(self, reason: str, count_attempt: bool) -> None:
        """End the job's processes (group, descendants, tagged) and settle its checkpoint."""
        end_processes(self.tag, self.state.pids, self.proc, self.config.timeouts.kill_grace_s)
        code = self.proc.returncode if self.proc is not None else None
        self.proc = None
        self.state.pids = []
        self.state.log(f"evaluator ended: {reason}" + (f" (return code {code})" if code is not None else ""))
        self._settle(count_attempt=count_attempt, reason=reason)

    def step(self) -> None:
        """One look at the job; call repeatedly until `complete`."""
        if self.finished:
            return
        if self.proc is None:
            try:
                self.launch()
            except PortRangeError as error:
                self.state.log(f"cannot launch yet: {error}")
                self._save()
            return
        self._refresh_records()
        code = self.proc.poll()
        if code is not None:
            self.stop(describe_exit(code), count_attempt=True)
            return
        self._record_pids()
        now = time.time()
        alive_at, checkpoint_at = self._last_sign_of_life()
        if now - alive_at > self.config.timeouts.stall_s:
            self.stop(f"no progress for {self.config.timeouts.stall_s:g} s", count_attempt=True)
        elif now - checkpoint_at > self.config.timeouts.route_s:
            self.stop(f"route took longer than {self.config.timeouts.route_s:g} s", count_attempt=True)

    def shutdown(self) -> None:
        """End the job's processes without counting it against the route (orchestrator stopping)."""
        if self.proc is not None:
            self.stop("stopped by the orchestrator", count_attempt=False)
