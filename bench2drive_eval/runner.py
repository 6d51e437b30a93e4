"""The `run` sub-command: run Bench2Drive routes unattended over GPUs (or SLURM), resumable, then score them."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from bench2drive_eval.jsonio import JSONFileError
from bench2drive_eval.ports import PortRangeError, check_plan
from bench2drive_eval.processes import write_ps_guard
from bench2drive_eval.run_config import (
    BACKENDS, NAMED_ROUTE_FILES, PortPlan, RunConfig, SlurmOptions, Timeouts,
)
from bench2drive_eval.run_state import (
    FolderLock, RunBusyError, RunLayout, RunState, file_sha256, load_run_state, new_run_state, save_run_state,
)
from bench2drive_eval.local_driving import COMPLETE, STOPPED, drive_locally, log_line
from bench2drive_eval.slurm import SlurmError, check_slurm_tools, drive_slurm, run_array_task
from bench2drive_eval.splitting import RouteSelectionError, read_route_file, select_subset, write_splits
from bench2drive_eval.status import summarize
from bench2drive_eval.watchdog import JobDriver


class RunArgumentError(ValueError):
    """A bad `run` argument, reported as one line before anything starts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    paths = parser.add_argument_group("what to run")
    paths.add_argument("--out", type=Path, required=True, help="run folder; an existing one is resumed, never re-split")
    paths.add_argument("--bench2drive-root", type=Path, help="Bench2Drive checkout (has leaderboard/, scenario_runner/)")
    paths.add_argument("--carla-root", type=Path, default=None,
                       help="CARLA 0.9.15 folder with CarlaUE4.sh (default: $CARLA_ROOT)")
    paths.add_argument("--routes", help="route XML, or 'bench2drive220' for $B2D/leaderboard/data/bench2drive220.xml")
    paths.add_argument("--routes-subset", default=None,
                       help="route ids to run, upstream syntax: '1711,1773-1800' (ranges in file order)")
    paths.add_argument("--agent", type=Path, help="agent module, e.g. agent/drivemoe_agent.py")
    paths.add_argument("--agent-config", default=None, help="passed to the agent's setup() (path, optionally '+extra')")
    paths.add_argument("--python", default=None, help="interpreter for the upstream evaluator (default: this one)")
    paths.add_argument("--seeds", default=None,
                       help="agent seeds, e.g. 0,1,2: one resumable sub-run per seed in OUT/seed_<n>/, the agent "
                            "YAML's `seed` set for each (see docs/evaluation-runner.md)")
    slots = parser.add_argument_group("where")
    slots.add_argument("--gpus", default=None, help="comma-separated GPU indices, e.g. 0,1,2,3 (default 0)")
    slots.add_argument("--jobs-per-gpu", type=int, default=None, help="CARLA+agent jobs per GPU (default 1)")
    slots.add_argument("--backend", choices=BACKENDS, default=None, help="local processes or a SLURM job array (default local)")
    slots.add_argument("--port-base", type=int, default=None, help="first RPC port; job i uses base+i*stride.. (default 30000)")
    slots.add_argument("--tm-port-base", type=int, default=None, help="first traffic-manager port (default 50000)")
    slots.add_argument("--port-stride", type=int, default=None, help="ports per job range (default 150)")
    watch = parser.add_argument_group("watchdog")
    watch.add_argument("--retries", type=int, default=None,
                       help="attempts per route before it is written off with a failed record (default 3)")
    watch.add_argument("--route-timeout", type=float, default=None, help="seconds one route may take (default 3600)")
    watch.add_argument("--stall-timeout", type=float, default=None,
                       help="seconds without any log/checkpoint activity before a job is restarted (default 1200)")
    watch.add_argument("--poll-interval", type=float, default=None, help="seconds between looks at the jobs (default 5)")
    watch.add_argument("--kill-grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL (default 10)")
    slurm = parser.add_argument_group("SLURM (--backend slurm)")
    slurm.add_argument("--slurm-partition", default=None)
    slurm.add_argument("--slurm-time", default=None, help="sbatch --time for each array task")
    slurm.add_argument("--slurm-max-parallel", type=int, default=None, help="array throttle (%%N); 0 = none")
    slurm.add_argument("--slurm-arg", action="append", default=None, help="extra sbatch argument (repeatable)")
    parser.add_argument("--no-score", action="store_true", help="do not merge and score when the run completes")
    parser.add_argument("--benchmark", choices=("v0.0.3", "v0.0.4"), default=None,
                        help="scoring rules (default: v0.0.4 for bench2drive_0.0.4 route files, else v0.0.3)")
    # Internal: one SLURM array task drives one job of an existing run folder.
    parser.add_argument("--job-index", type=int, default=None, help=argparse.SUPPRESS)


# ---- building and checking the configuration --------------------------------------------------------


def _pick(new, old):
    return old if new is None else new


def parse_gpus(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise RunArgumentError("--gpus: the GPU list is empty")
    try:
        gpus = tuple(int(t) for t in items)
    except ValueError:
        raise RunArgumentError(f"--gpus: {text!r} is not a comma-separated list of GPU indices") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise RunArgumentError(f"--gpus: {text!r} has negative or repeated indices")
    return gpus


def resolve_routes(routes: str, bench2drive_root: Path) -> Path:
    if routes in NAMED_ROUTE_FILES:
        path = bench2drive_root / NAMED_ROUTE_FILES[routes]
    else:
        path = Path(routes)
    if not path.is_file():
        raise RunArgumentError(f"--routes: routes file not found: {path}")
    return path.resolve()


def check_carla_root(carla_root: Path | None) -> Path:
    if carla_root is None:
        raise RunArgumentError("CARLA_ROOT is not set: pass --carla-root or export CARLA_ROOT")
    if not carla_root.is_dir():
        raise RunArgumentError(f"--carla-root: folder not found: {carla_root}")
    server = carla_root / "CarlaUE4.sh"
    if not server.is_file():
        raise RunArgumentError(f"--carla-root: {server} not found (is this a CARLA 0.9.15 package?)")
    if not os.access(server, os.X_OK):
        raise RunArgumentError(f"--carla-root: {server} is not executable")
    return carla_root.resolve()


def check_ports(plan: PortPlan, n_jobs: int) -> None:
    try:
        check_plan(plan, n_jobs)
    except PortRangeError as error:
        raise RunArgumentError(str(error)) from None


def new_config(args: argparse.Namespace) -> RunConfig:
    """The configuration of a new run, every argument checked."""
    missing = [name for name, value in (("--bench2drive-root", args.bench2drive_root), ("--routes", args.routes), ("--agent", args.agent)) if value is None]
    if missing:
        raise RunArgumentError(f"a new run needs {', '.join(missing)}")
    b2d = args.bench2drive_root
    if not (b2d / "leaderboard/leaderboard/leaderboard_evaluator.py").is_file():
        raise RunArgumentError(f"--bench2drive-root: {b2d}/leaderboard/leaderboard/leaderboard_evaluator.py not found")
    carla_root = check_carla_root(args.carla_root or (Path(os.environ["CARLA_ROOT"]) if os.environ.get("CARLA_ROOT") else None))
    routes_file = resolve_routes(args.routes, b2d)
    if not args.agent.is_file():
        raise RunArgumentError(f"--agent: file not found: {args.agent}")
    agent_config = args.agent_config or ""
    config_path = agent_config.split("+", 1)[0]
    if config_path and not Path(config_path).exists():
        raise RunArgumentError(f"--agent-config: file not found: {config_path}")
    if config_path:
        agent_config = str(Path(config_path).resolve()) + agent_config[len(config_path):]
    config = RunConfig(
        bench2drive_root=b2d.resolve(),
        carla_root=carla_root,
        routes_file=routes_file,
        agent=args.agent.resolve(),
        agent_config=agent_config,
        out_dir=args.out.resolve(),
        gpus=parse_gpus(args.gpus or "0"),
        jobs_per_gpu=_pick(args.jobs_per_gpu, 1),
        routes_subset=args.routes_subset or "",
        retries=_pick(args.retries, 3),
        timeouts=_timeouts(args, Timeouts()),
        ports=_ports(args, PortPlan()),
        backend=_pick(args.backend, "local"),
        python=_pick(args.python, sys.executable),
        slurm=_slurm(args, SlurmOptions()),
        agent_seed=getattr(args, "agent_seed", None),
    )
    return check_numbers(config)


def _timeouts(args: argparse.Namespace, old: Timeouts) -> Timeouts:
    return Timeouts(
        route_s=_pick(args.route_timeout, old.route_s),
        stall_s=_pick(args.stall_timeout, old.stall_s),
        poll_s=_pick(args.poll_interval, old.poll_s),
        kill_grace_s=_pick(args.kill_grace, old.kill_grace_s),
    )


def _ports(args: argparse.Namespace, old: PortPlan) -> PortPlan:
    return PortPlan(_pick(args.port_base, old.rpc_base), _pick(args.tm_port_base, old.tm_base), _pick(args.port_stride, old.stride))


def _slurm(args: argparse.Namespace, old: SlurmOptions) -> SlurmOptions:
    return SlurmOptions(
        partition=_pick(args.slurm_partition, old.partition),
        time_limit=_pick(args.slurm_time, old.time_limit),
        max_parallel=_pick(args.slurm_max_parallel, old.max_parallel),
        extra_args=tuple(args.slurm_arg) if args.slurm_arg is not None else old.extra_args,
        gpus_per_task=old.gpus_per_task,
        cpus_per_task=old.cpus_per_task,
        mem=old.mem,
    )


def check_numbers(config: RunConfig) -> RunConfig:
    if config.jobs_per_gpu < 1:
        raise RunArgumentError(f"--jobs-per-gpu must be at least 1, got {config.jobs_per_gpu}")
    if config.retries < 1:
        raise RunArgumentError(f"--retries must be at least 1, got {config.retries}")
    t = config.timeouts
    for name, value in (("--route-timeout", t.route_s), ("--stall-timeout", t.stall_s), ("--poll-interval", t.poll_s)):
        if value <= 0:
            raise RunArgumentError(f"{name} must be positive, got {value:g}")
    if t.kill_grace_s < 0:
        raise RunArgumentError(f"--kill-grace must not be negative, got {t.kill_grace_s:g}")
    if config.slurm.max_parallel < 0:
        raise RunArgumentError("--slurm-max-parallel must not be negative")
    if shutil.which(config.python) is None and not Path(config.python).is_file():
        raise RunArgumentError(f"--python: interpreter not found: {config.python}")
    return config


def resumed_config(args: argparse.Namespace, run: RunState) -> RunConfig:
    """The stored configuration; what does not change the split may be given anew, the rest must match."""
    old = run.config
    if args.routes is not None:
        routes = resolve_routes(args.routes, args.bench2drive_root or old.bench2drive_root)
        if routes != old.routes_file:
            raise RunArgumentError(f"{old.out_dir} was started with --routes {old.routes_file}, not {routes}; use another --out")
    if args.routes_subset is not None and args.routes_subset != old.routes_subset:
        raise RunArgumentError(f"{old.out_dir} was started with --routes-subset {old.routes_subset!r}; use another --out")
    if old.routes_file.is_file() and file_sha256(old.routes_file) != run.routes_sha256:
        raise RunArgumentError(f"{old.routes_file} changed since this run was split; use another --out")
    b2d = (args.bench2drive_root or old.bench2drive_root).resolve()
    if not (b2d / "leaderboard/leaderboard/leaderboard_evaluator.py").is_file():
        raise RunArgumentError(f"--bench2drive-root: {b2d}/leaderboard/leaderboard/leaderboard_evaluator.py not found")
    carla = check_carla_root(args.carla_root or old.carla_root)
    config = RunConfig(
        bench2drive_root=b2d,
        carla_root=carla,
        routes_file=old.routes_file,
        agent=(args.agent.resolve() if args.agent else old.agent),
        agent_config=_pick(args.agent_config, old.agent_config),
        out_dir=old.out_dir,
        gpus=parse_gpus(args.gpus) if args.gpus is not None else old.gpus,
        jobs_per_gpu=_pick(args.jobs_per_gpu, old.jobs_per_gpu),
        routes_subset=old.routes_subset,
        retries=_pick(args.retries, old.retries),
        timeouts=_timeouts(args, old.timeouts),
        ports=_ports(args, old.ports),
        backend=_pick(args.backend, old.backend),
        python=_pick(args.python, old.python),
        slurm=_slurm(args, old.slurm),
        agent_seed=old.agent_seed,
    )
    if not config.agent.is_file():
        raise RunArgumentError(f"--agent: file not found: {config.agent}")
    return check_numbers(config)


def prepare_run(args: argparse.Namespace) -> tuple[RunLayout, RunState]:
    """Create the run folder and its split, or reopen an existing one; all checks happen before any job starts."""
    layout = RunLayout(args.out.resolve())
    if layout.state_file.exists():
        old = load_run_state(layout)
        config = resumed_config(args, old)
        run = RunState(old.run_id, old.created, config, old.routes_sha256, old.jobs)
        if args.job_index is None:
            if config.backend == "local":
                check_ports(config.ports, len(run.jobs))
            save_run_state(layout, run)
        return layout, run
    if args.job_index is not None:
        raise RunArgumentError(f"{args.out}: no run_state.json (a SLURM task needs an existing run folder)")
    if layout.root.exists() and any(layout.root.iterdir()):
        raise RunArgumentError(f"--out: {layout.root} exists, is not empty and is not a run folder")
    config = new_config(args)
    try:
        entries = select_subset(read_route_file(config.routes_file), config.routes_subset)
    except RouteSelectionError as error:
        raise RunArgumentError(str(error)) from None
    if not entries:
        raise RunArgumentError("--routes-subset selects no route")
    n_jobs = min(config.n_slots, len(entries))
    if config.backend == "local":
        check_ports(config.ports, n_jobs)
    else:
        check_slurm_tools()
    for folder in (layout.root, layout.results, layout.logs, layout.save_path):
        folder.mkdir(parents=True, exist_ok=True)
    splits = write_splits(entries, n_jobs, layout.splits)
    run = new_run_state(config, splits)
    save_run_state(layout, run)
    return layout, run


# ---- driving the jobs ---------------------------------------------------------------------------------


def score_run(layout: RunLayout, run: RunState, benchmark: str | None) -> None:
    """Merge and score with the scoring module; the run itself is complete whatever happens here."""
    try:
        from bench2drive_eval import bootstrap
        from bench2drive_eval.metrics import compute_metrics, format_metrics
        from bench2drive_eval.metrics_cli import write_outputs
        from bench2drive_eval.results import load_run
        from bench2drive_eval.routes import load_routes
    except ImportError as error:
        print(f"bench2drive-eval run: scoring skipped (scoring module not available: {error})", file=sys.stderr)
        return
    selected = {rid for job in run.jobs for rid in job.route_ids}
    routes = {rid: r for rid, r in load_routes(run.config.routes_file).items() if rid in selected}
    if benchmark is None:
        benchmark = "v0.0.4" if "0.0.4" in run.config.routes_file.name else "v0.0.3"
    try:
        merged = load_run([layout.results])
        # One cached junction check for the score and its intervals (each route traced once).
        lookup = bootstrap.junction_lookup_for(str(run.config.carla_root))
        metrics = compute_metrics(merged, routes=routes, benchmark=benchmark, junction_lookup=lookup,
                                  save_path=layout.save_path if layout.save_path.is_dir() else None)
        intervals = bootstrap.run_intervals(str(layout.root), merged, metrics, bootstrap.BootstrapSettings(), routes,
                                            benchmark, lookup)
        written = write_outputs(layout.root / "score", merged, metrics, intervals)
    except (ValueError, OSError) as error:
        print(f"bench2drive-eval run: scoring failed ({error}); score later with: "
              f"bench2drive-eval metrics {layout.results} --routes {run.config.routes_file}", file=sys.stderr)
        return
    print(format_metrics(metrics) + bootstrap.text_part(intervals))
    print(f"wrote {', '.join(str(p) for p in written)}")


def main(args: argparse.Namespace) -> int:
    from bench2drive_eval import seeds

    if args.job_index is None and (args.seeds is not None or (args.out / seeds.SEEDS_FILE).is_file()):
        try:
            return seeds.run_seeds(args, run_one)
        except (seeds.SeedsError, JSONFileError) as error:
            print(f"bench2drive-eval run: error: {error}", file=sys.stderr)
            return 2
    return run_one(args)


def run_one(args: argparse.Namespace) -> int:
    """One run folder: prepare (or resume) it, drive its jobs, score it."""
    with contextlib.ExitStack() as stack:
        try:
            existing = RunLayout(args.out.resolve())
            lock_early = args.job_index is None and existing.state_file.exists()
            if lock_early:
                # Taken before anything in an existing run folder is touched.
                stack.enter_context(FolderLock(existing.lock, str(existing.root)))
            layout, run = prepare_run(args)
            if args.job_index is None and not lock_early:
                stack.enter_context(FolderLock(layout.lock, str(layout.root)))
            write_ps_guard(layout.bin)
        except (RunArgumentError, RunBusyError, RouteSelectionError, JSONFileError, SlurmError) as error:
            print(f"bench2drive-eval run: error: {error}", file=sys.stderr)
            return 2
        if args.job_index is not None:
            return run_array_task(layout, run, args.job_index)
        return drive(layout, run, args)


def drive(layout: RunLayout, run: RunState, args: argparse.Namespace) -> int:
    """Run the whole run folder to the end with the configured backend, then score it."""
    config = run.config
    log_line(layout, f"run {run.run_id}: {run.total_routes} routes in {len(run.jobs)} jobs, backend {config.backend}")
    try:
        if config.backend == "slurm":
            outcome = drive_slurm(layout, run)
        else:
            drivers = [JobDriver(run, layout, job.index, config.gpu_of_job(job.index)) for job in run.jobs]
            outcome = drive_locally(layout, run, drivers)
    except (ValueError, JSONFileError) as error:
        # e.g. a checkpoint that does not belong to its job's route file, or a scheduler error
        print(f"bench2drive-eval run: error: {error}", file=sys.stderr)
        return 1
    summary = summarize(layout, run)
    print(summary.line())
    if outcome == STOPPED:
        print(f"bench2drive-eval run: stopped; resume with: bench2drive-eval run --out {layout.root}", file=sys.stderr)
        return 130
    if outcome != COMPLETE:
        return 1
    log_line(layout, "all routes accounted for")
    if not args.no_score:
        score_run(layout, run, args.benchmark)
    return 0
