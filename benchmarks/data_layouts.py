"""Measure what separates `prepare-data --layout default` from `--layout authors`, and the ego box
from the GNSS as position source, on generated clips (tests/b2d_synth.py) with Bench2Drive's geometry.

Clips head 0.3 rad left of north at 5 m/s with yaw rates 0, ±0.6 and 0.3 rad/s, so some histories
cross north. Prints numbers; asserts nothing (docs/training.md quotes them).

    PYTHONPATH=. python benchmarks/data_layouts.py [--frames 40]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from model.ego_state import world_to_ego
from model.training.index import read_index
from model.training.prepare_data import PrepareSettings, prepare
from tests.b2d_synth import SynthClip, compasses, ego_track, far_commands, gnss_positions, write_clip

# the authors' released statistics (config/statistics/b2d_statistics.json), theta pair
AUTHORS_THETA = (-0.18638665676116944, 0.22671463966369854)


def _normalised(theta: float) -> float:
    low, high = AUTHORS_THETA
    return 2.0 * (theta - low) / (high - low) - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    specs = [SynthClip(name=f"LaneChange_Town06_Route{i}_Weather1", num_frames=args.frames, yaw_rate=rate,
                       start_yaw=-math.pi / 2 - 0.3, seed=i, far_spacing=25.0, far_lookahead=10.0)
             for i, rate in enumerate([0.0, 0.3, 0.6, -0.6])]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for spec in specs:
            write_clip(base / "root", spec)
        for layout in ("default", "authors"):
            settings = PrepareSettings(str(base / "root"), None, None, 0.0, False, layout, "hash")
            prepare(base / "root", base / layout, settings)
        ours, theirs = read_index(base / "default").arrays, read_index(base / "authors").arrays
        stats = {k: json.loads((base / k / "statistics.json").read_text())["theta"] for k in ("default", "authors")}
    step = theirs["ego_state"][..., 7] - ours["ego_state"][..., 7]
    jumped = np.abs(step) > 1.0
    residual = np.abs(step - 2 * np.pi * np.round(step / (2 * np.pi))).max()
    others = [i for i in range(10) if i != 7]
    same = np.array_equal(ours["ego_state"][..., others], theirs["ego_state"][..., others]) and np.array_equal(
        ours["actions"], theirs["actions"])
    print(f"windows: {len(ours['frame'])} ({args.frames - 10} per clip)")
    print(f"theta: {int(jumped.any(axis=1).sum())} windows / {int(jumped.sum())} steps differ by 2pi "
          f"(residual {residual:.1e}); every other value identical: {same}")
    print(f"theta statistics: default {stats['default']}, authors {stats['authors']}")
    print(f"normalised with the authors' statistics: -0.05 rad -> {_normalised(-0.05):.2f}, "
          f"2pi - 0.05 -> {_normalised(2 * math.pi - 0.05):.2f}")
    future, command = 0.0, 0.0
    for spec in specs:
        box, _ = ego_track(spec)
        gnss, far, compass = gnss_positions(spec), far_commands(spec), compasses(spec)
        for t in range(spec.num_frames - 10):
            a = world_to_ego(box[t : t + 10], box[t], compass[t])
            b = world_to_ego(gnss[t : t + 10], gnss[t], compass[t])
            future = max(future, float(np.linalg.norm(a - b, axis=1).max()))
            command = max(command, float(np.linalg.norm(world_to_ego(far[t:t + 1], box[t], compass[t])
                                                        - world_to_ego(far[t:t + 1], gnss[t], compass[t]))))
    print(f"GNSS x/y instead of the ego box: future points move by up to {future:.2f} m, the far command by {command:.2f} m")


if __name__ == "__main__":
    main()
