"""Driving a run's jobs on this machine, and the run log: shared by the runner and the SLURM backend.

Outcomes are COMPLETE, STOPPED (a signal; the run can be resumed) or FAILED (a job is broken).
Kept apart from runner.py so that slurm.py can use it without importing the runner (no import circle).
"""
from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from tqdm import tqdm

from bench2drive_eval.run_state import RunLayout, RunState, utc_now
from bench2drive_eval.status import RunSummary, format_duration, summarize
from bench2drive_eval.watchdog import JobDriver


COMPLETE, STOPPED, FAILED = "complete", "stopped", "failed"


class Stop(Exception):
    """SIGTERM/SIGHUP to the orchestrator: end the jobs cleanly, keep everything for a resume."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def log_line(layout: RunLayout, message: str) -> None:
    layout.logs.mkdir(parents=True, exist_ok=True)
    with open(layout.runner_log, "a", encoding="utf-8") as handle:
        handle.write(f"{utc_now()} {message}\n")


def update_bar(bar: tqdm, summary: RunSummary) -> None:
    bar.n = summary.done
    eta = "-" if summary.eta_s is None else format_duration(summary.eta_s)
    bar.set_postfix_str(f"running={summary.running_jobs} failed={summary.failed} written_off={summary.written_off} eta={eta}", refresh=False)
    bar.refresh()


def drive_locally(layout: RunLayout, run: RunState, drivers: list[JobDriver], show_bar: bool = True) -> str:
    """Run the given jobs to the end: COMPLETE, STOPPED (signal; resumable) or FAILED (a job is broken)."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    bar = tqdm(total=run.total_routes, unit="route", desc="bench2drive", dynamic_ncols=True, disable=not show_bar)
    try:
        for driver in drivers:
            driver.adopt()
        while True:
            for driver in drivers:
                driver.step()
            update_bar(bar, summarize(layout, run))
            if all(d.finished for d in drivers):
                broken = [d for d in drivers if d.broken]
                for d in broken:
                    print(f"bench2drive-eval run: job {d.job} stopped: {d.broken_reason}", file=sys.stderr)
                return FAILED if broken else COMPLETE
            time.sleep(run.config.timeouts.poll_s)
    except (KeyboardInterrupt, Stop) as reason:
        log_line(layout, f"stopping on {type(reason).__name__} {reason}; the run can be resumed with the same --out")
        return STOPPED
    finally:
        for driver in drivers:
            driver.shutdown()
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
