"""The `bench2drive-eval compare` sub-command: per-route and per-ability deltas between two runs, and why routes flipped."""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench2drive_eval import plots
from bench2drive_eval.jsonio import write_json_atomic
from bench2drive_eval.metrics import Metrics, RouteScore, compute_metrics
from bench2drive_eval.report import fmt, markdown_table
from bench2drive_eval.results import load_run

IGNORED_IN_EXPLANATION = frozenset({"min_speed_infractions"})


@dataclass(frozen=True)
class RouteDelta:
    route_id: str
    scenario_type: str
    town: str
    score_a: float | None  # None: no record in that run
    score_b: float | None
    success_a: bool
    success_b: bool
    status_a: str
    status_b: str
    flip: str  # "fail->success", "success->fail" or ""
    why: str  # infractions / status that explain a flip

    @property
    def delta(self) -> float:
        return (self.score_b or 0.0) - (self.score_a or 0.0)


@dataclass(frozen=True)
class Comparison:
    label_a: str
    label_b: str
    headline: dict[str, tuple[float | None, float | None]]  # metric -> (A, B)
    abilities: dict[str, tuple[float | None, float | None]]
    routes: tuple[RouteDelta, ...]

    def flips(self, kind: str) -> list[RouteDelta]:
        return [r for r in self.routes if r.flip == kind]

    def flip_reasons(self, kind: str) -> dict[str, int]:
        """How many flipped routes each reason (infraction type, or failing status) explains."""
        counts: dict[str, int] = {}
        for route in self.flips(kind):
            for part in route.why.split("; "):
                key = part.split(" (")[0] if part.startswith("status") else part.split(" x")[0]
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label_a": self.label_a, "label_b": self.label_b,
            "headline": {k: {"a": a, "b": b, "delta": _delta(a, b)} for k, (a, b) in self.headline.items()},
            "abilities": {k: {"a": a, "b": b, "delta": _delta(a, b)} for k, (a, b) in self.abilities.items()},
            "flip_reasons": {kind: self.flip_reasons(kind) for kind in ("fail->success", "success->fail")},
            "routes": [dict(asdict(r), delta=r.delta) for r in self.routes],
        }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _failing(route: RouteScore | None) -> dict[str, int]:
    if route is None:
        return {}
    return {k: v for k, v in route.infractions.items() if k not in IGNORED_IN_EXPLANATION}


def explain_flip(worse: RouteScore | None, better: RouteScore | None) -> str:
    """What the failing attempt had that the successful one did not: infractions, else its status."""
    if worse is None:
        return "no result in the failing run"
    reasons = [f"{k} x{v}" for k, v in sorted(_failing(worse).items()) if v > _failing(better).get(k, 0)]
    if worse.status not in ("Completed", "Perfect"):
        reasons.append(f"status '{worse.status}' (completion {worse.route_completion:.1f}%)")
    return "; ".join(reasons) or f"status '{worse.status}'"


def compare_metrics(a: Metrics, b: Metrics, label_a: str = "A", label_b: str = "B") -> Comparison:
    routes_a = {r.route_id: r for r in a.per_route}
    routes_b = {r.route_id: r for r in b.per_route}
    ids = sorted(set(routes_a) | set(routes_b) | set(a.missing_routes) | set(b.missing_routes),
                 key=lambda x: (not x.isdigit(), int(x) if x.isdigit() else 0, x))
    deltas = []
    for rid in ids:
        ra, rb = routes_a.get(rid), routes_b.get(rid)
        ok_a, ok_b = bool(ra and ra.success), bool(rb and rb.success)
        flip, why = "", ""
        if ok_b and not ok_a:
            flip, why = "fail->success", explain_flip(ra, rb)
        elif ok_a and not ok_b:
            flip, why = "success->fail", explain_flip(rb, ra)
        known = ra or rb
        deltas.append(RouteDelta(
            route_id=rid, scenario_type=known.scenario_type if known else "", town=known.town if known else "",
            score_a=ra.driving_score if ra else None, score_b=rb.driving_score if rb else None,
            success_a=ok_a, success_b=ok_b, status_a=ra.status if ra else "missing",
            status_b=rb.status if rb else "missing", flip=flip, why=why,
        ))
    headline = {
        "driving_score": (a.driving_score, b.driving_score),
        "success_rate": (a.success_rate, b.success_rate),
        "route_completion": (a.route_completion, b.route_completion),
        "efficiency": (a.efficiency, b.efficiency),
        "smoothness": (a.smoothness, b.smoothness),
        "ability_mean": (a.ability_mean, b.ability_mean),
    }
    abilities = {name: (a.abilities.get(name), b.abilities.get(name)) for name in a.abilities}
    return Comparison(label_a, label_b, headline, abilities, tuple(deltas))


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def render_comparison(c: Comparison, images: dict[str, str] | None = None) -> str:
    up, down = c.flips("fail->success"), c.flips("success->fail")
    parts = [
        f"# {c.label_b} vs {c.label_a}",
        "",
        markdown_table(["metric", c.label_a, c.label_b, "delta"],
                       [[k, fmt(a), fmt(b), _signed(_delta(a, b))] for k, (a, b) in c.headline.items()]),
        "",
        "## Abilities",
        markdown_table(["ability", c.label_a, c.label_b, "delta"],
                       [[k, fmt(a), fmt(b), _signed(_delta(a, b))] for k, (a, b) in c.abilities.items()]),
    ]
    if images:
        parts += ["", *[f"![{name}]({file})" for name, file in images.items()]]
    parts += ["", "## Why routes flipped, by infraction",
              "Number of flipped routes whose failing attempt had each infraction (or failing status).", "",
              markdown_table(["reason", f"fail->success ({c.label_a} failed)", f"success->fail ({c.label_b} failed)"],
                             [[reason, c.flip_reasons("fail->success").get(reason, 0),
                               c.flip_reasons("success->fail").get(reason, 0)]
                              for reason in dict.fromkeys([*c.flip_reasons("fail->success"),
                                                           *c.flip_reasons("success->fail")])])]
    for title, rows in ((f"Routes that became successes with {c.label_b} ({len(up)})", up),
                        (f"Routes that became failures with {c.label_b} ({len(down)})", down)):
        parts += ["", f"## {title}", "Why: what the failing run had that the successful one did not.", "",
                  markdown_table(["route", "scenario", "town", c.label_a, c.label_b, "why"],
                                 [[r.route_id, r.scenario_type, r.town, fmt(r.score_a), fmt(r.score_b), r.why]
                                  for r in rows])]
    changed = sorted((r for r in c.routes if abs(r.delta) >= 0.005), key=lambda r: r.delta)
    shown = changed if len(changed) <= 20 else changed[:10] + changed[-10:]
    parts += ["", f"## Largest per-route driving score changes ({len(shown)} of {len(changed)} changed routes)",
              markdown_table(["route", "scenario", c.label_a, c.label_b, "delta"],
                             [[r.route_id, r.scenario_type, fmt(r.score_a), fmt(r.score_b), f"{r.delta:+.2f}"]
                              for r in shown]), ""]
    return "\n".join(parts)


def routes_csv(c: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["route_id", "scenario_type", "town", f"ds_{c.label_a}", f"ds_{c.label_b}", "delta",
                     f"success_{c.label_a}", f"success_{c.label_b}", f"status_{c.label_a}", f"status_{c.label_b}",
                     "flip", "why"])
    for r in c.routes:
        writer.writerow([r.route_id, r.scenario_type, r.town, "" if r.score_a is None else f"{r.score_a:.4f}",
                         "" if r.score_b is None else f"{r.score_b:.4f}", f"{r.delta:.4f}", int(r.success_a),
                         int(r.success_b), r.status_a, r.status_b, r.flip, r.why])
    return buffer.getvalue()


def write_comparison(c: Comparison, a: Metrics, b: Metrics, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [c.label_a, c.label_b]
    images = {
        "abilities": plots.abilities([a, b], labels, out / "compare_abilities.png").name,
        "per-route scores": plots.route_scatter(a, b, c.label_a, c.label_b, out / "compare_routes.png").name,
        "infractions": plots.infractions([a, b], labels, out / "compare_infractions.png").name,
        "towns": plots.per_town([a, b], labels, out / "compare_towns.png").name,
    }
    write_json_atomic(out / "compare.json", c.to_dict())
    for name, text in (("compare.md", render_comparison(c, images)), ("compare_routes.csv", routes_csv(c))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return out / "compare.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="baseline run folder or result JSON")
    parser.add_argument("run_b", metavar="RUN_B", help="run folder or result JSON compared with the baseline")
    parser.add_argument("--label-a", default="", help="name of RUN_A in tables (default: its file name)")
    parser.add_argument("--label-b", default="", help="name of RUN_B in tables (default: its file name)")
    parser.add_argument("--routes", help="route XML shared by both runs")
    parser.add_argument("--benchmark", choices=("v0.0.3", "v0.0.4"), default="v0.0.3")
    parser.add_argument("--carla-root", help="CARLA folder with OpenDRIVE maps (Traffic_Signs junction check)")
    parser.add_argument("--out", help="folder for compare.md, compare.json, compare_routes.csv and PNG plots")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")


def main(args: argparse.Namespace) -> int:
    if args.routes and not Path(args.routes).is_file():
        raise FileNotFoundError(f"--routes {args.routes}: route file not found")
    label_a = args.label_a or Path(args.run_a).stem
    label_b = args.label_b or Path(args.run_b).stem
    if label_a == label_b:
        label_a, label_b = f"A:{label_a}", f"B:{label_b}"
    runs = []
    for path in (args.run_a, args.run_b):
        runs.append(compute_metrics(load_run(path), routes=args.routes, benchmark=args.benchmark,
                                    carla_root=args.carla_root))
    comparison = compare_metrics(runs[0], runs[1], label_a, label_b)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print(render_comparison(comparison))
    if args.out:
        path = write_comparison(comparison, runs[0], runs[1], args.out)
        print(f"wrote {path} and its plots", file=sys.stderr if args.json else sys.stdout)
    errors = [e for m in runs for e in m.errors]
    for error in errors:
        print(f"bench2drive-eval compare: input problem: {error}", file=sys.stderr)
    return 1 if errors else 0
