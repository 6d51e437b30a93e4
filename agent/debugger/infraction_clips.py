"""`drivemoe infraction-clips`: one short debug clip per infraction, with the routing of the seconds before it.

Input: run or trace folders (searched like the routing report) and the run's Bench2Drive results JSON
(`--results`, or any results JSON directly inside a given run folder). Each infraction whose message
carries an `(x=..., y=...)` position is located at the nearest trace line (agent/debugger/routing_report.py,
`locate_infractions`); the clip holds the trace lines from `--before` seconds before that line to
`--after` seconds after it, rendered as the debug video, plus a PNG of the routing timeline of those
seconds. Per route an `index.html` lists its clips; `OUT/index.html` links the routes.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

from agent.debugger.debug_video import ImageSource, TraceError, load_trace, render_frame, write_frames
from agent.debugger.routing_report import (
    RouteRouting,
    _discover_results,
    _plot_route,
    find_trace_folders,
    load_results,
    locate_infractions,
)
from agent.debugger.outputs import output_error
from bench2drive_eval import html_page as h


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def route_folder_name(save_name: str) -> str:
    """The folder of a route's clips under the output folder."""
    return _slug(save_name)


def write_infraction_clips(inputs: list[str | Path], out_dir: str | Path, results: list[str | Path] = (),
                           before_s: float = 3.0, after_s: float = 0.5, fps: float = 10.0,
                           progress: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write to {out}: {error.strerror or error}") from None
    records = load_results(list(results) + _discover_results(inputs))
    summary: dict[str, Any] = {"routes": {}, "not_located": [], "bad_traces": []}
    route_links = []
    for folder in find_trace_folders(inputs):
        try:
            trace = load_trace(folder)
        except TraceError as error:
            summary["bad_traces"].append(str(error))
            continue
        route = RouteRouting.from_trace(trace)
        if route.name not in records:
            continue
        located = locate_infractions(route, records[route.name], before_s)
        route_dir = out / route_folder_name(route.name)
        route_dir.mkdir(parents=True, exist_ok=True)
        clips, rows = [], []
        source = ImageSource(trace)
        for k, item in enumerate(located):
            if item["frame"] is None:
                summary["not_located"].append({"route": route.name, **item})
                continue
            index = route.frames.index(item["frame"])
            time = route.times[index]
            lines = [r for r, t in zip(trace.records, route.times) if time - before_s <= t <= time + after_s]
            name = f"{k:02d}_{_slug(item['type'])}_frame{item['frame']}"
            video = write_frames((render_frame(r, source.images(r), trace.save_name, header=trace.header) for r in lines),
                                 route_dir / f"{name}.mp4", fps, total=len(lines), progress=progress)
            frames = {int(r["frame"]) for r in lines}
            window = RouteRouting(**{**route.__dict__, **_subset(route, frames)})
            _plot_route(window, route_dir / f"{name}_routing.png", marks=[(item["frame"], item["type"])])
            clip = {**item, "video": str(video.path.relative_to(route_dir)), "routing_png": f"{name}_routing.png",
                    "frames": [min(frames), max(frames)], "time_s": time}
            clips.append(clip)
            rows.append((item["type"], item["frame"], f"{time:.1f}", item["message"],
                         h.link(clip["video"], "clip") + " " + h.link(clip["routing_png"], "routing")))
        if clips:
            h.write_html_page(route_dir / "index.html", f"Infractions of {route.name}", [
                h.table(["infraction", "frame", "time (s)", "message", "files"], rows, raw_columns=(4,)),
                *[h.section(f"{c['type']} at frame {c['frame']}", h.image(route_dir / c["routing_png"], c["type"]))
                  for c in clips]])
            route_links.append((route.name, len(clips), h.link(f"{route_dir.name}/index.html", "clips")))
        summary["routes"][route.name] = clips
    h.write_html_page(out / "index.html", "Infraction clips", [
        h.table(["route", "clips", "page"], route_links, raw_columns=(2,)) if route_links
        else h.paragraph("No located infraction in these results and traces."),
        *[h.paragraph(f"not located (no position in the message): {i['route']}: {i['message']}") for i in summary["not_located"]],
        *[h.paragraph(f"trace not read: {b}", "bad") for b in summary["bad_traces"]]])
    return summary


def _subset(route: RouteRouting, frames: set[int]) -> dict[str, Any]:
    keep = [i for i, f in enumerate(route.frames) if f in frames]
    fields = ("frames", "times", "positions", "cameras", "experts", "sensitivity", "most_different", "mean_logit_skills")
    out: dict[str, Any] = {name: [getattr(route, name)[i] for i in keep] for name in fields if len(getattr(route, name)) == len(route.frames)}
    if route.expert_weights is not None:
        out["expert_weights"] = route.expert_weights[keep]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_OR_TRACE_DIR", help="trace folders or run folders holding them")
    parser.add_argument("--out", required=True, help="output folder (index.html, one folder per route)")
    parser.add_argument("--results", action="append", default=[], help="Bench2Drive results JSON (repeatable)")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of trace before the infraction (default 3)")
    parser.add_argument("--after", type=float, default=0.5, help="seconds after it (default 0.5)")


def main(args: argparse.Namespace) -> int:
    for name in ("before", "after"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name} must be >= 0 seconds, got {value}")
    try:
        summary = write_infraction_clips(args.inputs, args.out, args.results, args.before, args.after)
    except OSError as error:
        raise output_error(error) from None
    clips = sum(len(c) for c in summary["routes"].values())
    for bad in summary["bad_traces"]:
        print(f"warning: trace not read: {bad}", file=sys.stderr)
    print(f"infraction clips: {clips} clip(s) over {len(summary['routes'])} route(s), "
          f"{len(summary['not_located'])} not located -> {Path(args.out) / 'index.html'}")
    return 0
