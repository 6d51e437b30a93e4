"""The debugger's pictures read cleanly (picture test) and bad user input gives one line, never a traceback."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from agent.debugger.debug_video import VideoLayout, load_trace, render_frame
from agent.debugger.drawing import overlapping
from model.cli import main as drivemoe_main
from model.skills import SKILL_NAMES
from test_debug_video import write_synthetic_trace

NAME = "RouteScenario_1711_rep0_Town12_ParkingCutIn_1_11_29_00_00_00_a_very_long_route_title_that_would_not_fit"


def _counterfactual(line: dict) -> dict:
    """A counterfactual object shaped as model/counterfactual.py writes it."""
    chosen = np.array(line["waypoints"])
    cameras = [{"kind": "camera", "name": c, "index": i, "waypoints": (chosen + [0.0, 0.3 * i]).tolist(),
                "ade_m": 0.3 * i, "fde_m": 0.3 * i} for i, c in enumerate(line["camera_router"]["candidates"])]
    experts = [{"kind": "expert", "name": n, "index": e, "waypoints": (chosen * (1 + 0.05 * e)).tolist(), "ade_m": 0.1 * e,
                "fde_m": 0.2 * e} for e, n in enumerate(SKILL_NAMES)]
    return {"sensitivity_m": 1.2, "camera_sensitivity_m": 1.2, "expert_sensitivity_m": 0.6,
            "most_different": {"kind": "camera", "name": cameras[-1]["name"]}, "cameras": cameras, "experts": experts,
            "chosen_cameras": line["camera_router"]["selected"]}


def test_picture_text_boxes_inside_the_frame_and_not_overlapping(tmp_path):
    records = write_synthetic_trace(tmp_path, lines=4, save_name=NAME, with_images=False)
    record = dict(records[2], counterfactual=_counterfactual(records[2]))
    record["latency_ms"] = {"model": 12.0, "vision": 1.0, "prefix": 2.0, "denoise": 8.0, "counterfactual": 30.0, "tick": 50.0}
    layout = VideoLayout()
    boxes = []
    frame = render_frame(record, {}, NAME, layout, header={"expert_names": list(SKILL_NAMES)}, boxes=boxes)
    texts = [b.text for b in boxes]
    height, width = frame.shape[:2]
    outside = [b for b in boxes if b.box[0] < 0 or b.box[1] < 0 or b.box[2] > width or b.box[3] > height]
    assert outside == [] and overlapping(boxes) == []
    # every expert is named by its skill, the title is shortened to fit, the colour scale is labelled
    for name in SKILL_NAMES:
        assert name.replace("_", " ").lower() in texts
    title = next(t for t in texts if t.startswith("RouteScenario_"))
    assert "…" in title and title.endswith("fit")
    assert {"0", "0.5", "1", "weight"} <= set(texts)
    assert any(t.startswith("sensitivity 1.20 m") for t in texts)
    # the text is drawn (not an outline): the title box holds light text on the panel background
    x0, y0, x1, y1 = next(b.box for b in boxes if b.text == title)
    assert frame[y0:y1, x0:x1].max() > 200
    # boxes of one panel stay inside that panel (no label spilling into the neighbour)
    panel_top = 2 * layout.tile_height
    bev = [b for b in boxes if b.box[1] >= panel_top and b.box[0] < layout.panel_height]
    assert bev and all(b.box[2] <= layout.panel_height for b in bev)


def _edit_line(folder: Path, number: int, change) -> None:
    path = folder / "trace.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[number - 1])
    change(record)
    lines[number - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def test_nan_waypoints_and_position_render(tmp_path):
    write_synthetic_trace(tmp_path, lines=3, with_images=False)
    path = tmp_path / "trace.jsonl"
    text = path.read_text().splitlines()
    first = json.loads(text[0])
    first["waypoints"][3] = [float("nan"), 1.0]
    first["position"] = [float("nan"), float("nan")]
    text[0] = json.dumps(first)  # bare NaN, as a non-strict writer produces
    second = json.loads(text[1])
    second["waypoints"] = [[None, None]] * 10
    text[1] = json.dumps(second)
    path.write_text("\n".join(text) + "\n")
    assert drivemoe_main(["debug-video", str(tmp_path), "--out", str(tmp_path / "v.mp4")]) == 0


@pytest.mark.parametrize("field, value, message", [
    ("waypoints", [["h", 1.0]] * 10, "field 'waypoints' must be a list of [x, y] numbers"),
    ("frame", "7", "field 'frame' must be an integer"),
    ("speed", "fast", "field 'speed' must be a number"),
    ("action_router", {"num_experts": 7, "steps": [{"experts": ["a"], "weights": [1.0]}]}, "field 'action_router'"),
])
def test_wrong_types_name_file_line_and_field(tmp_path, capsys, field, value, message):
    write_synthetic_trace(tmp_path, lines=3, with_images=False)
    _edit_line(tmp_path, 2, lambda r: r.__setitem__(field, value))
    assert drivemoe_main(["debug-video", str(tmp_path), "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'trace.jsonl'} line 2: {message}" in err and "Traceback" not in err


def test_non_utf8_trace_is_named(tmp_path, capsys):
    write_synthetic_trace(tmp_path, lines=3, with_images=False)
    path = tmp_path / "trace.jsonl"
    data = path.read_bytes().split(b"\n")
    data[1] = data[1].replace(b"steer", b"st\xffer")
    path.write_bytes(b"\n".join(data))
    assert drivemoe_main(["debug-video", str(tmp_path), "--out", str(tmp_path / "v.mp4")]) == 2
    assert f"{path} line 2: not UTF-8 text" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_targets_fail_before_rendering(tmp_path, capsys):
    write_synthetic_trace(tmp_path / "t", lines=3, with_images=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert drivemoe_main(["debug-video", str(tmp_path / "t"), "--out", str(locked / "v.mp4")]) == 2
        assert drivemoe_main(["routing-report", str(tmp_path / "t"), "--out", str(locked / "r")]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {locked / 'v.mp4'}" in err and f"cannot write the report to {locked / 'r'}" in err
        assert list(locked.iterdir()) == []  # nothing half-written, no PNG fallback
    finally:
        locked.chmod(0o700)


def test_unwritable_target_as_root_is_also_named(tmp_path, capsys):
    """A target below a regular file cannot be created by anyone (root included)."""
    write_synthetic_trace(tmp_path / "t", lines=3, with_images=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert drivemoe_main(["debug-video", str(tmp_path / "t"), "--out", str(blocker / "v.mp4")]) == 2
    assert drivemoe_main(["routing-report", str(tmp_path / "t"), "--out", str(blocker / "r")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocker / 'v.mp4'}" in err and f"cannot write the report to {blocker / 'r'}" in err
    assert "Traceback" not in err and not (tmp_path / "file_frames").exists()


def test_report_lists_corrupt_traces_and_counts_duplicated_frames_once(tmp_path, capsys):
    good = tmp_path / "run" / "RouteScenario_1_rep0_Town01_Accident_1_11_29_00_00_00"
    records = write_synthetic_trace(good, lines=6, save_name=good.name, with_images=False)
    with open(good / "trace.jsonl", "a") as handle:  # frames 0 and 2 again
        for record in records[:2]:
            handle.write(json.dumps(record) + "\n")
    bad = tmp_path / "run" / "RouteScenario_2_rep0_Town01_Accident_1_11_29_00_00_00"
    write_synthetic_trace(bad, lines=3, save_name=bad.name, with_images=False)
    (bad / "trace.jsonl").write_bytes(b"\xff\xfe garbage\n" + (bad / "trace.jsonl").read_bytes())
    assert drivemoe_main(["routing-report", str(tmp_path / "run"), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "trace not read" in err and "not UTF-8" in err and "2 duplicated frame line(s) counted once" in err
    numbers = json.loads((tmp_path / "r" / "report.json").read_text())
    assert numbers["inferences"] == 6 and list(numbers["routes"]) == [good.name]
    assert numbers["bad_traces"][0]["folder"] == str(bad)
    assert "not read" in (tmp_path / "r" / "report.md").read_text()
    assert load_trace(good).duplicates == 2


def test_version_1_traces_still_read_and_newer_versions_are_refused(tmp_path, capsys):
    v1 = tmp_path / "v1"
    write_synthetic_trace(v1, lines=4, with_images=False)
    header = json.loads((v1 / "trace_header.json").read_text())
    (v1 / "trace_header.json").write_text(json.dumps({**header, "version": 1}))
    lines = [json.loads(line) for line in (v1 / "trace.jsonl").read_text().splitlines()]
    (v1 / "trace.jsonl").write_text("".join(json.dumps({**line, "version": 1}) + "\n" for line in lines))
    assert drivemoe_main(["debug-video", str(v1), "--out", str(tmp_path / "v.mp4")]) == 0
    assert drivemoe_main(["routing-report", str(v1), "--out", str(tmp_path / "r")]) == 0
    (v1 / "trace_header.json").write_text(json.dumps({**header, "version": 3}))
    assert drivemoe_main(["debug-video", str(v1), "--out", str(tmp_path / "v.mp4")]) == 2
    assert "trace format version 3 is newer than this reader" in capsys.readouterr().err


def test_full_disk_while_writing_plots_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import matplotlib.figure

    write_synthetic_trace(tmp_path / "t", lines=3, with_images=False)

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert drivemoe_main(["routing-report", str(tmp_path / "t"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'r' / 'route_000_timeline.png'}: No space left on device" in err


def test_demo_into_an_unwritable_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert drivemoe_main(["demo", "--out", str(blocker / "demo"), "--untrained", "--frames", "15"]) == 2
    assert f"cannot write {blocker / 'demo'}" in capsys.readouterr().err
