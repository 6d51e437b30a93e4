"""Typed, frozen configuration of one `bench2drive-eval run`: paths, GPUs, jobs, ports, retries, timeouts, backend."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Backend = Literal["local", "slurm"]
BACKENDS: tuple[str, ...] = ("local", "slurm")
EVALUATOR_RELPATH = Path("leaderboard/leaderboard/leaderboard_evaluator.py")
NAMED_ROUTE_FILES: dict[str, Path] = {
    "bench2drive220": Path("leaderboard/data/bench2drive220.xml"),
}


@dataclass(frozen=True)
class PortPlan:
    """Job i gets RPC ports [rpc_base + i*stride, rpc_base + (i+1)*stride) and the same for the traffic manager."""

    rpc_base: int = 30000
    tm_base: int = 50000
    stride: int = 150


@dataclass(frozen=True)
class Timeouts:
    """Watchdog limits, in seconds."""

    # Longest a single route may run (time since the job's checkpoint last changed).
    route_s: float = 3600.0
    # Longest a job may go without any sign of life (checkpoint, live-results or log file growing).
    stall_s: float = 1200.0
    # How often the orchestrator looks at its jobs.
    poll_s: float = 5.0
    # Time between SIGTERM and SIGKILL when ending a job's processes.
    kill_grace_s: float = 10.0


@dataclass(frozen=True)
class SlurmOptions:
    """What goes on the sbatch command line for `--backend slurm`."""

    partition: str = ""
    time_limit: str = ""  # sbatch --time, e.g. "2-00:00:00"
    max_parallel: int = 0  # the %N throttle of the job array; 0 = no throttle
    extra_args: tuple[str, ...] = ()  # passed to sbatch verbatim, e.g. ("--account=abc", "--qos=high")
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem: str = "64G"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; stored in RUN_DIR/run_state.json so a resumed run uses the same split."""

    bench2drive_root: Path
    carla_root: Path
    routes_file: Path
    agent: Path
    agent_config: str
    out_dir: Path
    gpus: tuple[int, ...] = (0,)
    jobs_per_gpu: int = 1
    routes_subset: str = ""
    # Attempts per route before a route that keeps crashing is written off with a failed record.
    retries: int = 3
    timeouts: Timeouts = field(default_factory=Timeouts)
    ports: PortPlan = field(default_factory=PortPlan)
    backend: Backend = "local"
    # Interpreter for the upstream evaluator (often a separate Python 3.7/3.8 environment).
    python: str = "python"
    track: str = "SENSORS"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    # The `seed` written into this sub-run's agent YAML by `run --seeds` (None: a single run, the YAML as given).
    agent_seed: int | None = None

    @property
    def evaluator(self) -> Path:
        return self.bench2drive_root / EVALUATOR_RELPATH

    @property
    def n_slots(self) -> int:
        return len(self.gpus) * self.jobs_per_gpu

    def gpu_of_job(self, job_index: int) -> int:
        """Jobs are spread over GPUs round-robin, so neighbouring (similar-length) jobs use different GPUs."""
        return self.gpus[job_index % len(self.gpus)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("bench2drive_root", "carla_root", "routes_file", "agent", "out_dir"):
            data[key] = str(data[key])
        data["gpus"] = list(self.gpus)
        data["slurm"]["extra_args"] = list(self.slurm.extra_args)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunConfig":
        try:
            return cls(
                bench2drive_root=Path(data["bench2drive_root"]),
                carla_root=Path(data["carla_root"]),
                routes_file=Path(data["routes_file"]),
                agent=Path(data["agent"]),
                agent_config=str(data["agent_config"]),
                out_dir=Path(data["out_dir"]),
                gpus=tuple(int(g) for g in data["gpus"]),
                jobs_per_gpu=int(data["jobs_per_gpu"]),
                routes_subset=str(data.get("routes_subset", "")),
                retries=int(data["retries"]),
                timeouts=Timeouts(**data["timeouts"]),
                ports=PortPlan(**data["ports"]),
                backend=data["backend"],
                python=str(data["python"]),
                track=str(data.get("track", "SENSORS")),
                slurm=SlurmOptions(**{**data.get("slurm", {}), "extra_args": tuple(data.get("slurm", {}).get("extra_args", ()))}),
                agent_seed=None if data.get("agent_seed") is None else int(data["agent_seed"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"run configuration is malformed ({type(error).__name__}: {error})") from None
