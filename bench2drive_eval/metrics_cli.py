"""The `bench2drive-eval metrics` sub-command: score a run folder or result JSONs like Bench2Drive's tools."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from bench2drive_eval import bootstrap
from bench2drive_eval.jsonio import dumps_strict, write_texts_atomic
from bench2drive_eval.metrics import Metrics, compute_metrics, format_metrics
from bench2drive_eval.results import MergedResults, load_run, record_to_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder(s) and/or result JSON file(s)")
    parser.add_argument("--routes", help="route XML (e.g. leaderboard/data/bench2drive220.xml): fixes the route "
                                         "set, lists missing routes, gives scenario types and towns (default: "
                                         "a run folder's own routes; else 220 as upstream)")
    parser.add_argument("--save-path", help="folder of per-route outputs with <save_name>/metric_info.json "
                                            "(enables Comfort/Smoothness)")
    parser.add_argument("--benchmark", choices=("v0.0.3", "v0.0.4"), default="v0.0.3",
                        help="ability rules (default v0.0.3)")
    parser.add_argument("--carla-root", help="CARLA 0.9.15 folder; its OpenDRIVE maps enable the Traffic_Signs "
                                             "junction check")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    parser.add_argument("--out", help="folder to write metrics.json, metrics.txt, per_route.csv and merged.json")
    bootstrap.add_arguments(parser)  # confidence intervals (i15)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.routes and not Path(args.routes).is_file():
        raise FileNotFoundError(f"--routes {args.routes}: route file not found")
    if args.save_path and not Path(args.save_path).is_dir():
        raise FileNotFoundError(f"--save-path {args.save_path}: folder not found")
    if args.carla_root:
        maps = Path(args.carla_root) / "CarlaUE4" / "Content" / "Carla" / "Maps"
        if not maps.is_dir():
            raise FileNotFoundError(f"--carla-root {args.carla_root}: no CarlaUE4/Content/Carla/Maps folder there")


def per_route_csv(metrics: Metrics) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["route_id", "scenario_type", "town", "status", "success", "driving_score",
                     "route_completion", "penalty", "efficiency", "smoothness", "infractions"])
    for r in metrics.per_route:
        writer.writerow([r.route_id, r.scenario_type, r.town, r.status, int(r.success), f"{r.driving_score:.4f}",
                         f"{r.route_completion:.4f}", f"{r.penalty:.4f}",
                         "" if r.efficiency is None else f"{r.efficiency:.4f}",
                         "" if r.smoothness is None else f"{r.smoothness:.4f}",
                         ";".join(f"{k}={v}" for k, v in sorted(r.infractions.items()))])
    return buffer.getvalue()


def merged_json(merged: MergedResults, metrics: Metrics) -> dict:
    """The merged results in the format of upstream's merge tool (records sorted by route_id, descending)."""
    records = sorted((record_to_json(r) for r in merged.records), key=lambda d: d["route_id"], reverse=True)
    return {
        "_checkpoint": {"records": records},
        "driving score": metrics.driving_score,
        "success rate": metrics.success_rate / 100.0,
        "eval num": metrics.evaluated_routes,
    }


def write_outputs(out: str | Path, merged: MergedResults, metrics: Metrics,
                  intervals: bootstrap.RunIntervals | None = None) -> list[Path]:
    """Write metrics.json, metrics.txt, per_route.csv, merged.json (+ intervals.json) into `out`, all or nothing.

    A read-only or full location (or a number that is not finite) raises FileWriteError naming the file
    and the reason; no file in `out` is then changed.
    """
    out = Path(out)
    files = {
        out / "metrics.json": dumps_strict(metrics.to_dict(), out / "metrics.json"),
        out / "metrics.txt": format_metrics(metrics) + "\n",
        out / "per_route.csv": per_route_csv(metrics),
        out / "merged.json": dumps_strict(merged_json(merged, metrics), out / "merged.json", indent=4),
    }
    if intervals is not None:
        path = out / bootstrap.INTERVALS_FILE
        files[path] = dumps_strict(intervals.to_dict(), path, indent=2)
    write_texts_atomic(files)
    return list(files)


def main(args: argparse.Namespace) -> int:
    _check_arguments(args)
    merged = load_run(args.paths)
    metrics = compute_metrics(merged, routes=args.routes, benchmark=args.benchmark,
                              carla_root=args.carla_root, save_path=args.save_path)
    intervals = bootstrap.single_run_intervals(args, merged, metrics)  # None with --bootstrap 0
    if args.json:
        print(dumps_strict(metrics.to_dict() | bootstrap.json_part(intervals), "stdout"))
    else:
        print(format_metrics(metrics) + bootstrap.text_part(intervals))
    if args.out:
        written = write_outputs(args.out, merged, metrics, intervals)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr if args.json else sys.stdout)
    for error in metrics.errors:
        print(f"bench2drive-eval metrics: input problem: {error}", file=sys.stderr)
    if args.carla_root:
        # Asked for, but not computed: say why where it is seen, not only among the notes.
        for note in metrics.notes:
            if note.startswith("ability Traffic_Signs: not computable"):
                print(f"bench2drive-eval metrics: {note}", file=sys.stderr)
    # Non-zero when some input could not be read, although the rest was scored.
    return 1 if metrics.errors else 0
