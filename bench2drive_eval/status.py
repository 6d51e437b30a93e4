"""The `status` sub-command: done / running / failed / ETA of a run folder, read from its files only.

A multi-seed folder (`run --seeds`, bench2drive_eval/seeds.py) is summarised per seed's sub-run, then in total."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from bench2drive_eval.jsonio import JSONFileError
from bench2drive_eval.processes import alive
from bench2drive_eval.run_state import RunLayout, RunState, load_job_state, load_run_state
from bench2drive_eval.watchdog import UNFINISHED_STATUSES, is_skipped, read_checkpoint, records_of


@dataclass(frozen=True)
class JobSummary:
    index: int
    routes: int
    done: int
    failed: int
    written_off: int
    state: str  # pending | running | complete
    current_route: str
    launches: int
    crashes: int


@dataclass(frozen=True)
class RunSummary:
    total: int
    done: int
    failed: int
    written_off: int
    running_jobs: int
    eta_s: float | None
    jobs: tuple[JobSummary, ...]
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    def line(self) -> str:
        eta = "unknown" if self.eta_s is None else format_duration(self.eta_s)
        return (
            f"routes: {self.done}/{self.total} done ({self.failed} failed, {self.written_off} written off after "
            f"repeated crashes), {self.running_jobs} job(s) running, ETA {'-' if self.complete else eta}"
        )


def format_duration(seconds: float) -> str:
    return str(_dt.timedelta(seconds=int(round(seconds))))


def _job_running(layout: RunLayout, job: int) -> tuple[str, bool, int, int, str]:
    state = load_job_state(layout, job)
    running = state.status == "running"
    if running and state.driver.get("host") == socket.gethostname():
        # On this machine the claim is checked: the recorded processes must still exist.
        running = any(alive(pid, started) for pid, started in state.pids)
    status = "running" if running else (state.status if state.status in ("complete", "broken") else "pending")
    return status, running, state.launches, sum(state.attempts.values()), state.current_route


def summarize(layout: RunLayout, run: RunState) -> RunSummary:
    jobs: list[JobSummary] = []
    problems: list[str] = []
    durations: list[float] = []
    for split in run.jobs:
        try:
            data = read_checkpoint(layout.checkpoint(split.index))
        except JSONFileError as error:
            # The evaluator may be half-way through writing it; the last good copy is as recent as it gets.
            try:
                data = read_checkpoint(layout.checkpoint_backup(split.index))
            except JSONFileError:
                data = None
            problems.append(str(error))
        records = records_of(data)[: len(split.route_ids)]
        final = [r for r in records if r.get("status") not in UNFINISHED_STATUSES]
        for r in final:
            if not is_skipped(r):
                duration = (r.get("meta") or {}).get("duration_system") or 0
                if duration > 0:
                    durations.append(float(duration))
        status, running, launches, crashes, current = _job_running(layout, split.index)
        jobs.append(
            JobSummary(
                index=split.index,
                routes=len(split.route_ids),
                done=len(final),
                failed=sum(1 for r in final if str(r.get("status", "")).startswith("Failed")),
                written_off=sum(1 for r in final if is_skipped(r)),
                state=status,
                current_route=current if status != "complete" else "",
                launches=launches,
                crashes=crashes,
            )
        )
    total = run.total_routes
    done = sum(j.done for j in jobs)
    busy = [j for j in jobs if j.done < j.routes]
    eta = None
    if durations and busy:
        mean = sum(durations) / len(durations)
        # Jobs run in parallel: the run ends when the job with the most work left ends.
        eta = max(mean * (j.routes - j.done) for j in busy)
    return RunSummary(
        total=total,
        done=done,
        failed=sum(j.failed for j in jobs),
        written_off=sum(j.written_off for j in jobs),
        running_jobs=sum(1 for j in jobs if j.state == "running"),
        eta_s=eta,
        jobs=tuple(jobs),
        problems=tuple(problems),
    )


def render(summary: RunSummary, per_job: bool) -> str:
    lines = [summary.line()]
    if per_job:
        lines.append(f"{'job':>4} {'done':>9} {'failed':>6} {'off':>4} {'crashes':>7} {'launches':>8}  state     route")
        for j in summary.jobs:
            lines.append(
                f"{j.index:>4} {j.done:>4}/{j.routes:<4} {j.failed:>6} {j.written_off:>4} {j.crashes:>7} {j.launches:>8}  "
                f"{j.state:<9} {j.current_route}"
            )
    lines.extend(f"note: {p}" for p in summary.problems)
    return "\n".join(lines)


def summarize_seeds(root: Path, seeds: tuple[int, ...]) -> dict[int, RunSummary | None]:
    """Each seed's sub-run summary of a multi-seed run folder (None: that sub-run has not started)."""
    from bench2drive_eval.seeds import sub_run_dir

    out: dict[int, RunSummary | None] = {}
    for seed in seeds:
        layout = RunLayout(sub_run_dir(root, seed))
        out[seed] = summarize(layout, load_run_state(layout)) if layout.state_file.exists() else None
    return out


def seeds_total(summaries: dict[int, RunSummary | None]) -> RunSummary:
    """The sum over the started sub-runs. Sub-runs run one after another, so the ETA is the sum of
    theirs, and unknown while a sub-run has not started (its routes are not known yet)."""
    started = [s for s in summaries.values() if s is not None]
    etas = [s.eta_s if not s.complete else 0.0 for s in started]
    known = len(started) == len(summaries) and all(e is not None for e in etas)
    return RunSummary(
        total=sum(s.total for s in started), done=sum(s.done for s in started), failed=sum(s.failed for s in started),
        written_off=sum(s.written_off for s in started), running_jobs=sum(s.running_jobs for s in started),
        eta_s=sum(etas) if known else None, jobs=(), problems=tuple(p for s in started for p in s.problems))


def render_seeds(summaries: dict[int, RunSummary | None], per_job: bool) -> str:
    lines = []
    for seed, summary in summaries.items():
        if summary is None:
            lines.append(f"seed {seed}: not started")
            continue
        sub = render(summary, per_job).splitlines()
        lines.append(f"seed {seed}: {sub[0]}")
        lines.extend(f"  {line}" for line in sub[1:])
    waiting = sum(1 for s in summaries.values() if s is None)
    total = seeds_total(summaries).line()
    lines.append(f"total ({len(summaries)} seeds{f', {waiting} not started' if waiting else ''}): {total}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the --out folder of `bench2drive-eval run` (a multi-seed one: per seed, then the total)")
    parser.add_argument("--jobs", action="store_true", help="also print one line per job")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    from bench2drive_eval.seeds import read_manifest

    manifest = read_manifest(args.run_dir) if Path(args.run_dir).is_dir() else None
    if manifest is not None:  # `run --seeds`: one ordinary run folder per seed
        summaries = summarize_seeds(Path(args.run_dir), manifest.seeds)
        if args.json:
            total = seeds_total(summaries)
            print(json.dumps({"seeds": {str(seed): None if s is None else asdict(s) | {"complete": s.complete}
                                        for seed, s in summaries.items()},
                              "total": asdict(total) | {"complete": all(s is not None and s.complete
                                                                        for s in summaries.values())}}, indent=2))
        else:
            print(render_seeds(summaries, args.jobs))
        return 0
    layout = RunLayout(args.run_dir)
    if not layout.state_file.exists():
        raise FileNotFoundError(f"{args.run_dir}: not a run folder (no run_state.json)")
    summary = summarize(layout, load_run_state(layout))
    if args.json:
        print(json.dumps(asdict(summary) | {"complete": summary.complete}, indent=2))
    else:
        print(render(summary, args.jobs))
    return 0
