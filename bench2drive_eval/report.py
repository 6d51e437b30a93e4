"""The `bench2drive-eval report` sub-command: a Markdown + HTML report with PNG plots for one run.

Every figure a reader compares carries its bootstrap interval (bench2drive_eval/report_intervals.py; off
with --bootstrap 0): headline metrics, abilities, infraction rates, per-town and per-scenario mean DS."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from bench2drive_eval import bootstrap, plots
from bench2drive_eval.metrics import INFRACTION_LABELS, GroupRow, Metrics, compute_metrics
from bench2drive_eval.metrics_cli import write_outputs
from bench2drive_eval.report_intervals import Bounds, ReportIntervals, report_intervals
from bench2drive_eval.results import load_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="+", metavar="RUN", help="run folder and/or result JSON file(s) of one run")
    parser.add_argument("--out", required=True, help="folder for report.md, the PNG plots and the metrics files")
    parser.add_argument("--routes", help="route XML (lists missing routes, gives route counts per town/scenario)")
    parser.add_argument("--benchmark", choices=("v0.0.3", "v0.0.4"), default="v0.0.3")
    parser.add_argument("--carla-root", help="CARLA folder with OpenDRIVE maps (Traffic_Signs junction check)")
    parser.add_argument("--save-path", help="per-route outputs with metric_info.json (Comfort/Smoothness)")
    parser.add_argument("--title", default="", help="report title and plot legend (default: the run folder or results file name)")
    bootstrap.add_arguments(parser)


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def interval_text(bounds: Bounds | None) -> str:
    if bounds is None or bounds[0] is None or bounds[1] is None:
        return "n/a"
    return f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


def group_headers(intervals: ReportIntervals | None) -> list[str]:
    headers = ["", "routes", "evaluated", "successes", "mean DS", "SR % (of evaluated)"]
    if intervals is not None:
        headers.insert(5, f"mean DS {intervals.level} interval")
    return headers


def group_rows(rows: Sequence[GroupRow], bounds: dict[str, Bounds] | None) -> list[list[object]]:
    out = []
    for r in rows:
        row: list[object] = [r.name, r.routes, r.evaluated, r.successes, f"{r.driving_score:.2f}", f"{r.success_rate:.2f}"]
        if bounds is not None:
            row.insert(5, interval_text(bounds.get(r.name)) if r.evaluated >= 2 else "n/a (under 2 routes)")
        out.append(row)
    return out


def group_table(rows: Sequence[GroupRow], intervals: ReportIntervals | None = None,
                bounds: dict[str, Bounds] | None = None) -> str:
    return markdown_table(group_headers(intervals), group_rows(rows, bounds if intervals is not None else None))


def headline_headers(intervals: ReportIntervals | None) -> list[str]:
    return ["metric", "value"] + ([f"{intervals.level} interval"] if intervals is not None else [])


def headline_rows(metrics: Metrics, intervals: ReportIntervals | None = None) -> list[list[str]]:
    m = metrics
    mean_key = "ability_mean" if m.ability_mean is not None else "ability_mean_of_computable"
    rows = [
        ["Driving Score", f"{m.driving_score:.2f}", "driving_score"],
        ["Success Rate (%)", f"{m.success_rate:.2f}", "success_rate"],
        ["Route completion (%)", f"{m.route_completion:.2f}", "route_completion"],
        ["Infraction penalty", f"{m.infraction_penalty:.4f}", "infraction_penalty"],
        ["Efficiency", fmt(m.efficiency), "efficiency"],
        ["Comfort/Smoothness", fmt(m.smoothness) if m.smoothness is not None else "n/a (needs --save-path)", None],
        ["Ability mean", fmt(m.ability_mean) if m.ability_mean is not None
         else f"n/a (mean of computable: {fmt(m.ability_mean_of_computable)})", mean_key],
        ["Routes evaluated", f"{m.evaluated_routes} of {m.total_routes}", None],
    ]
    if intervals is None:
        return [row[:2] for row in rows]
    out = []
    for name, value, key in rows:
        bounds = intervals.of(key) if key else None
        digits = 4 if key == "infraction_penalty" else 2
        text = "-" if key is None else ("n/a" if bounds is None or bounds[0] is None
                                        else f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]")
        if key == "ability_mean_of_computable" and bounds is not None and bounds[0] is not None:
            text += " (of the mean of computable)"
        out.append([name, value, text])
    return out


def ability_headers(intervals: ReportIntervals | None) -> list[str]:
    return (["ability", "success rate %"] + ([f"{intervals.level} interval"] if intervals is not None else [])
            + ["successes / denominator"])


def ability_rows(metrics: Metrics, intervals: ReportIntervals | None = None) -> list[list[str]]:
    rows = []
    for name, rate in metrics.abilities.items():
        row = [name, fmt(rate), "{}/{}".format(*metrics.ability_counts[name]) if rate is not None else "not computable"]
        if intervals is not None:
            row.insert(2, interval_text(intervals.of(name)) if rate is not None else "n/a")
        rows.append(row)
    return rows


def infraction_headers(intervals: ReportIntervals | None) -> list[str]:
    return ["infraction", "per km"] + ([f"{intervals.level} interval"] if intervals is not None and intervals.infractions else [])


def infraction_rows(metrics: Metrics, intervals: ReportIntervals | None = None) -> list[list[str]]:
    rows = []
    for k, v in metrics.infractions_per_km.items():
        row = [INFRACTION_LABELS[k] + (" (km, not per km)" if k == "outside_route_lanes" else ""), f"{v:.3f}"]
        if intervals is not None and intervals.infractions:
            bounds = intervals.infractions.get(k)
            row.append("n/a" if bounds is None or bounds[0] is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]")
        rows.append(row)
    return rows


def interval_note(intervals: ReportIntervals | None) -> str:
    if intervals is None:
        return "No intervals (--bootstrap 0)."
    notes = "".join(f" Note: {n}." for n in intervals.run.notes)
    return (f"{intervals.run.settings.describe()}, {intervals.run.routes} routes; a town's or scenario type's interval "
            f"resamples that group's evaluated routes, an infraction rate's the evaluated routes.{notes}")


def render_report(metrics: Metrics, title: str, images: dict[str, str], intervals: ReportIntervals | None = None) -> str:
    m = metrics
    worst = sorted(m.per_route, key=lambda r: r.driving_score)[:15]
    parts = [
        f"# {title}",
        "",
        f"Bench2Drive {m.benchmark}, scored like Bench2Drive's tools (see docs/evaluation-metrics.md).",
        "",
        markdown_table(headline_headers(intervals), headline_rows(m, intervals)),
        "",
        interval_note(intervals),
        "",
        "## Driving score per route",
        f"![score distribution]({images['scores']})",
        "",
        "## Abilities",
        f"![abilities]({images['abilities']})",
        "",
        markdown_table(ability_headers(intervals), ability_rows(m, intervals)),
        "",
        "## Infractions",
        f"![infractions]({images['infractions']})",
        "",
        markdown_table(infraction_headers(intervals), infraction_rows(m, intervals)),
        f"\n{m.km_driven:.2f} km driven (route length x completion).",
        "",
        "## Per town",
        f"![per town]({images['towns']})",
        "",
        group_table(m.per_town, intervals, intervals.towns if intervals else None),
        "",
        "## Per scenario type",
        group_table(m.per_scenario, intervals, intervals.scenarios if intervals else None),
        "",
        "## Lowest-scoring routes",
        markdown_table(["route", "scenario", "town", "status", "DS", "infractions"],
                       [[r.route_id, r.scenario_type, r.town, r.status, f"{r.driving_score:.2f}",
                         ", ".join(f"{k} x{v}" for k, v in sorted(r.infractions.items())
                                   if k != "min_speed_infractions") or "-"] for r in worst]),
        "",
        "## Missing and crashed routes",
        f"Missing ({len(m.missing_routes)}): {', '.join(m.missing_routes) or 'none'}",
        "",
        f"Crashed ({len(m.crashed_routes)}): {', '.join(m.crashed_routes) or 'none'}",
    ]
    if m.errors:
        parts += ["", "## Input problems", *[f"- {e}" for e in m.errors]]
    if m.notes:
        parts += ["", "## What was done", *[f"- {n}" for n in m.notes]]
    parts += ["", "Sources: " + ", ".join(f"`{s}`" for s in m.sources), ""]
    return "\n".join(parts)


def render_html_sections(metrics: Metrics, out: Path, images: dict[str, str],
                         intervals: ReportIntervals | None = None) -> list[str]:
    """The report's content as sections of a self-contained HTML page (PNGs embedded)."""
    from bench2drive_eval import html_page as h

    m = metrics
    worst = sorted(m.per_route, key=lambda r: r.driving_score)[:15]
    sections = [
        h.paragraph(f"Bench2Drive {m.benchmark}, scored like Bench2Drive's tools (see docs/evaluation-metrics.md)."),
        h.table(headline_headers(intervals), headline_rows(m, intervals)),
        h.paragraph(interval_note(intervals), "note"),
        h.section("Driving score per route", h.image(out / images["scores"], "score distribution")),
        h.section("Abilities", h.image(out / images["abilities"], "abilities"),
                  h.table(ability_headers(intervals), ability_rows(m, intervals))),
        h.section("Infractions", h.image(out / images["infractions"], "infractions"),
                  h.table(infraction_headers(intervals), infraction_rows(m, intervals)),
                  h.paragraph(f"{m.km_driven:.2f} km driven (route length x completion).")),
        h.section("Per town", h.image(out / images["towns"], "per town"),
                  h.table(group_headers(intervals), group_rows(m.per_town, intervals.towns if intervals else None))),
        h.section("Per scenario type", h.table(group_headers(intervals),
                                               group_rows(m.per_scenario, intervals.scenarios if intervals else None))),
        h.section("Lowest-scoring routes", h.table(["route", "scenario", "town", "status", "DS", "infractions"],
                  [[r.route_id, r.scenario_type, r.town, r.status, f"{r.driving_score:.2f}",
                    ", ".join(f"{k} x{v}" for k, v in sorted(r.infractions.items()) if k != "min_speed_infractions") or "-"]
                   for r in worst])),
        h.section("Missing and crashed routes",
                  h.paragraph(f"Missing ({len(m.missing_routes)}): {', '.join(m.missing_routes) or 'none'}"),
                  h.paragraph(f"Crashed ({len(m.crashed_routes)}): {', '.join(m.crashed_routes) or 'none'}")),
    ]
    if m.errors:
        sections.append(h.section("Input problems", *[h.paragraph(e, "bad") for e in m.errors]))
    if m.notes:
        sections.append(h.section("What was done", *[h.paragraph(n) for n in m.notes]))
    sections.append(h.paragraph("Sources: " + ", ".join(m.sources), "note"))
    return sections


def write_report(metrics: Metrics, out: str | Path, title: str, intervals: ReportIntervals | None = None) -> Path:
    """Write report.md, report.html (self-contained) and the PNGs into `out`; returns the report.md path."""
    out = Path(out)
    label = [title]
    ds = None if intervals is None else (*(intervals.of("driving_score") or (None, None)), intervals.level)
    images = {
        "scores": plots.score_distribution(metrics, out / "scores.png", title=f"{title}: driving score per route",
                                           interval=ds).name,
        "abilities": plots.abilities([metrics], label, out / "abilities.png",
                                     intervals=None if intervals is None else [intervals.run]).name,
        "infractions": plots.infractions([metrics], label, out / "infractions.png",
                                         intervals=None if intervals is None else [intervals.infractions]).name,
        "towns": plots.per_town([metrics], label, out / "towns.png",
                                intervals=None if intervals is None else [intervals.towns]).name,
    }
    path = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(render_report(metrics, title, images, intervals), encoding="utf-8")
    tmp.replace(path)
    from bench2drive_eval.html_page import write_html_page

    write_html_page(out / "report.html", title, render_html_sections(metrics, out, images, intervals))
    return path


def main(args: argparse.Namespace) -> int:
    merged = load_run(args.run)
    metrics = compute_metrics(merged, routes=args.routes, benchmark=args.benchmark,
                              carla_root=args.carla_root, save_path=args.save_path)
    title = args.title or ", ".join(Path(run).stem if Path(run).is_file() else Path(run).resolve().name for run in args.run)
    intervals = report_intervals(title, merged, metrics, bootstrap.settings_from_args(args), args.routes,
                                 args.carla_root)
    write_outputs(args.out, merged, metrics, intervals.run if intervals is not None else None)
    path = write_report(metrics, args.out, title, intervals)
    ds = "" if intervals is None else f" {interval_text(intervals.of('driving_score'))}"
    print(f"wrote {path} and {path.with_name('report.html')} (DS {metrics.driving_score:.2f}{ds}, SR {metrics.success_rate:.2f})")
    return 1 if metrics.errors else 0
