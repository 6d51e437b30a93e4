"""The `drivemoe` command: one sub-command per job, each implemented in its own module.

A sub-command module provides `add_arguments(parser)` and `main(args) -> int`. Modules are
imported only when their sub-command runs, so `drivemoe --help` is fast and a missing optional
dependency of one command does not break the others.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from model.errors import DriveMoEError as UserError  # noqa: F401  (re-exported for sub-commands)

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("agent.demo.command", "run the built-in demo: no CARLA, no GPU, no downloaded weights"),
    "download": ("model.download", "download a released checkpoint (+ the PaliGemma tokenizer), convert it, write agent configs"),
    "convert": ("model.convert", "convert an authors' checkpoint into model.safetensors + config.json"),
    "predict": ("model.predict", "run the network on a fixture-format inputs.safetensors"),
    "bench": ("model.bench", "benchmark inference latency and memory per stage"),
    "replay": ("agent.debugger.replay", "replay a recorded Bench2Drive clip through the agent stack"),
    "debug-video": ("agent.debugger.debug_video", "render a routing trace as a debug video"),
    "routing-report": ("agent.debugger.routing_report", "plots of camera and expert choices over routes"),
    "infraction-clips": ("agent.debugger.infraction_clips", "one debug clip per infraction with the routing before it"),
    "prepare-data": ("model.training.prepare_data", "index Bench2Drive clips for training"),
    "train": ("model.training.train", "train DriveMoE / Drive-pi0"),
}


THREADS_VARIABLE = "DRIVEMOE_THREADS"


def default_threads(environ: dict[str, str] | None = None, cpu_count: int | None = None) -> int:
    """torch CPU threads for every sub-command: DRIVEMOE_THREADS, else half the cores, at most 4.

    torch's own default (all cores) is slow when the cores are shared: on two busy cores the tiny
    DriveMoE took 3628 ms (p90 6659) per inference with 2 threads and 77 ms (p90 101) with 1
    (`drivemoe bench --device cpu --preset tiny-drivemoe --threads N`). A sub-command's own
    `--threads` (bench, replay) still wins."""
    environ = os.environ if environ is None else environ
    text = environ.get(THREADS_VARIABLE, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"{THREADS_VARIABLE}={text!r}: expected a whole number >= 1")
        return int(text)
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drivemoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        threads = default_threads()
        import torch

        torch.set_num_threads(threads)
        module = importlib.import_module(SUBCOMMANDS[args.command][0])
        return int(module.main(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as error:
        print(f"drivemoe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
