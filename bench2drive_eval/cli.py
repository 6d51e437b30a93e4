"""The `bench2drive-eval` command: run, watch, score and compare Bench2Drive evaluations.

A sub-command module provides `add_arguments(parser)` and `main(args) -> int`; it is imported
only when its sub-command runs. Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bench2drive_eval.jsonio import JSONFileError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "metrics": ("bench2drive_eval.metrics_cli", "score result JSONs exactly like Bench2Drive's tools, with "
                                                "confidence intervals"),
    "compare": ("bench2drive_eval.compare", "two runs or groups of runs (seeds): intervals, verdicts, per-route "
                                            "flips"),
    "report": ("bench2drive_eval.report", "a Markdown report with plots for one run"),
    "run": ("bench2drive_eval.runner", "run routes unattended across GPUs (or SLURM), with resume"),
    "status": ("bench2drive_eval.status", "progress of a run folder, from its files"),
}


class EvalError(ValueError):
    """Bad input for an evaluation command; printed as one line, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = argparse.ArgumentParser(prog="bench2drive-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.main(args) or 0)
    except (EvalError, JSONFileError, FileNotFoundError) as error:
        print(f"bench2drive-eval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
