"""The `bench2drive-eval report` sub-command: a Markdown report with PNG plots for one run."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from bench2drive_eval import plots
from bench2drive_eval.metrics import INFRACTION_LABELS, GroupRow, Metrics, compute_metrics
from bench2drive_eval.metrics_cli import write_outputs
from bench2drive_eval.results import load_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="+", metavar="RUN", help="run folder and/or result JSON file(s) of one run")
    parser.add_argument("--out", required=True, help="folder for report.md, the PNG plots and the metrics files")
    parser.add_argument("--routes", help="route XML (lists missing routes, gives route counts per town/scenario)")
    parser.add_argument("--benchmark", choices=("v0.0.3", "v0.0.4"), default="v0.0.3")
    parser.add_argument("--carla-root", help="CARLA folder with OpenDRIVE maps (Traffic_Signs junction check)")
    parser.add_argument("--save-path", help="per-route outputs with metric_info.json (Comfort/Smoothness)")
    parser.add_argument("--title", default="", help="report title (default: the run path)")


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def group_table(rows: Sequence[GroupRow]) -> str:
    return markdown_table(["", "routes", "evaluated", "successes", "mean DS", "SR % (of evaluated)"],
                          [[r.name, r.routes, r.evaluated, r.successes, f"{r.driving_score:.2f}",
                            f"{r.success_rate:.2f}"] for r in rows])


def headline_rows(metrics: Metrics) -> list[list[str]]:
    m = metrics
    return [
        ["Driving Score", f"{m.driving_score:.2f}"],
        ["Success Rate (%)", f"{m.success_rate:.2f}"],
        ["Route completion (%)", f"{m.route_completion:.2f}"],
        ["Efficiency", fmt(m.efficiency)],
        ["Comfort/Smoothness", fmt(m.smoothness) if m.smoothness is not None else "n/a (needs --save-path)"],
        ["Ability mean", fmt(m.ability_mean) if m.ability_mean is not None
         else f"n/a (mean of computable: {fmt(m.ability_mean_of_computable)})"],
        ["Routes evaluated", f"{m.evaluated_routes} of {m.total_routes}"],
    ]


def render_report(metrics: Metrics, title: str, images: dict[str, str]) -> str:
    m = metrics
    worst = sorted(m.per_route, key=lambda r: r.driving_score)[:15]
    parts = [
        f"# {title}",
        "",
        f"Bench2Drive {m.benchmark}, scored like Bench2Drive's tools (see docs/evaluation-metrics.md).",
        "",
        markdown_table(["metric", "value"], headline_rows(m)),
        "",
        "## Driving score per route",
        f"![score distribution]({images['scores']})",
        "",
        "## Abilities",
        f"![abilities]({images['abilities']})",
        "",
        markdown_table(["ability", "success rate %", "successes / denominator"],
                       [[name, fmt(rate), "{}/{}".format(*m.ability_counts[name]) if rate is not None
                         else "not computable"] for name, rate in m.abilities.items()]),
        "",
        "## Infractions",
        f"![infractions]({images['infractions']})",
        "",
        markdown_table(["infraction", "per km"],
                       [[INFRACTION_LABELS[k] + (" (km, not per km)" if k == "outside_route_lanes" else ""),
                         f"{v:.3f}"] for k, v in m.infractions_per_km.items()]),
        f"\n{m.km_driven:.2f} km driven (route length x completion).",
        "",
        "## Per town",
        f"![per town]({images['towns']})",
        "",
        group_table(m.per_town),
        "",
        "## Per scenario type",
        group_table(m.per_scenario),
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


def render_html_sections(metrics: Metrics, out: Path, images: dict[str, str]) -> list[str]:
    """The report's content as sections of a self-contained HTML page (PNGs embedded)."""
    from bench2drive_eval import html_page as h

    m = metrics
    worst = sorted(m.per_route, key=lambda r: r.driving_score)[:15]
    groups = ["", "routes", "evaluated", "successes", "mean DS", "SR % (of evaluated)"]

    def group_rows(rows: Sequence[GroupRow]) -> list[list[object]]:
        return [[r.name, r.routes, r.evaluated, r.successes, f"{r.driving_score:.2f}", f"{r.success_rate:.2f}"] for r in rows]

    sections = [
        h.paragraph(f"Bench2Drive {m.benchmark}, scored like Bench2Drive's tools (see docs/evaluation-metrics.md)."),
        h.table(["metric", "value"], headline_rows(m)),
        h.section("Driving score per route", h.image(out / images["scores"], "score distribution")),
        h.section("Abilities", h.image(out / images["abilities"], "abilities"),
                  h.table(["ability", "success rate %", "successes / denominator"],
                          [[name, fmt(rate), "{}/{}".format(*m.ability_counts[name]) if rate is not None else "not computable"]
                           for name, rate in m.abilities.items()])),
        h.section("Infractions", h.image(out / images["infractions"], "infractions"),
                  h.table(["infraction", "per km"],
                          [[INFRACTION_LABELS[k] + (" (km, not per km)" if k == "outside_route_lanes" else ""), f"{v:.3f}"]
                           for k, v in m.infractions_per_km.items()]),
                  h.paragraph(f"{m.km_driven:.2f} km driven (route length x completion).")),
        h.section("Per town", h.image(out / images["towns"], "per town"), h.table(groups, group_rows(m.per_town))),
        h.section("Per scenario type", h.table(groups, group_rows(m.per_scenario))),
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


def write_report(metrics: Metrics, out: str | Path, title: str) -> Path:
    """Write report.md, report.html (self-contained) and the PNGs into `out`; returns the report.md path."""
    out = Path(out)
    label = [title]
    images = {
        "scores": plots.score_distribution(metrics, out / "scores.png", title=f"{title}: driving score per route").name,
        "abilities": plots.abilities([metrics], label, out / "abilities.png").name,
        "infractions": plots.infractions([metrics], label, out / "infractions.png").name,
        "towns": plots.per_town([metrics], label, out / "towns.png").name,
    }
    path = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(render_report(metrics, title, images), encoding="utf-8")
    tmp.replace(path)
    from bench2drive_eval.html_page import write_html_page

    write_html_page(out / "report.html", title, render_html_sections(metrics, out, images))
    return path


def main(args: argparse.Namespace) -> int:
    merged = load_run(args.run)
    metrics = compute_metrics(merged, routes=args.routes, benchmark=args.benchmark,
                              carla_root=args.carla_root, save_path=args.save_path)
    write_outputs(args.out, merged, metrics)
    path = write_report(metrics, args.out, args.title or ", ".join(args.run))
    print(f"wrote {path} and {path.with_name('report.html')} (DS {metrics.driving_score:.2f}, SR {metrics.success_rate:.2f})")
    return 1 if metrics.errors else 0
