"""Per-job RPC and traffic-manager port ranges, and picking ports in them that are free right now."""
from __future__ import annotations

import socket
from dataclasses import dataclass

from bench2drive_eval.run_config import PortPlan

MAX_PORT = 65535
# CARLA listens on the RPC port and the two above it (streaming and secondary servers).
CARLA_PORTS_PER_SERVER = 3


class PortRangeError(ValueError):
    """A job's port range does not exist or has no free port left."""


@dataclass(frozen=True)
class JobPorts:
    rpc: int
    traffic_manager: int


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def job_range(base: int, stride: int, job_index: int) -> range:
    start = base + stride * job_index
    return range(start, start + stride)


def _first_free(candidates: range, width: int) -> int | None:
    for port in candidates:
        if port + width - 1 > MAX_PORT:
            return None
        if all(port_is_free(p) for p in range(port, port + width)):
            return port
    return None


def pick_job_ports(plan: PortPlan, job_index: int) -> JobPorts:
    """Free RPC (3 consecutive ports) and traffic-manager ports inside job `job_index`'s ranges."""
    if plan.stride < CARLA_PORTS_PER_SERVER:
        raise PortRangeError(f"port stride {plan.stride} is too small: CARLA needs {CARLA_PORTS_PER_SERVER} ports")
    rpc_range = job_range(plan.rpc_base, plan.stride, job_index)
    tm_range = job_range(plan.tm_base, plan.stride, job_index)
    for name, rng in (("RPC", rpc_range), ("traffic-manager", tm_range)):
        if rng.start < 1024 or rng.stop - 1 > MAX_PORT:
            raise PortRangeError(
                f"job {job_index}: {name} port range {rng.start}-{rng.stop - 1} is outside 1024-{MAX_PORT}"
            )
    rpc = _first_free(rpc_range, CARLA_PORTS_PER_SERVER)
    if rpc is None:
        raise PortRangeError(
            f"job {job_index}: RPC port range {rpc_range.start}-{rpc_range.stop - 1} exhausted (no 3 free ports in a row)"
        )
    tm = _first_free(tm_range, 1)
    if tm is None:
        raise PortRangeError(
            f"job {job_index}: traffic-manager port range {tm_range.start}-{tm_range.stop - 1} exhausted"
        )
    return JobPorts(rpc=rpc, traffic_manager=tm)


def check_plan(plan: PortPlan, n_jobs: int) -> list[JobPorts]:
    """Check every job's ranges before anything starts: inside the valid ports, RPC and traffic-manager
    blocks apart, and a free port in each (jobs' ranges never overlap each other by construction)."""
    rpc_end = job_range(plan.rpc_base, plan.stride, n_jobs - 1).stop
    tm_end = job_range(plan.tm_base, plan.stride, n_jobs - 1).stop
    if plan.rpc_base < tm_end and plan.tm_base < rpc_end:
        raise PortRangeError(
            f"port ranges overlap: RPC {plan.rpc_base}-{rpc_end - 1} and traffic manager {plan.tm_base}-{tm_end - 1}"
        )
    return [pick_job_ports(plan, i) for i in range(n_jobs)]
