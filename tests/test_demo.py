"""`drivemoe demo`: clip, untrained tiny model, replay, video and report in one command."""
from __future__ import annotations

import json

import cv2
import pytest

from model.cli import main as drivemoe_main


@pytest.fixture()
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_command_writes_every_artefact(tmp_path, capsys, restore_threads):
    out = tmp_path / "demo"
    assert drivemoe_main(["demo", "--out", str(out), "--frames", "15", "--untrained"]) == 0
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed  # says plainly that the model is untrained
    for line in ("clip:", "trace:", "video:", "report:"):
        assert line in printed
    trace = [json.loads(l) for l in (out / "replay" / "trace.jsonl").read_text().splitlines()]
    assert [l["frame"] for l in trace] == list(range(15))
    capture = cv2.VideoCapture(str(out / "demo.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == len(trace)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["inferences"] == 15
    assert sum(report["camera_counts"].values()) == 15
    scores = json.loads((out / "replay" / "scores.json").read_text())
    assert scores["camera_router"]["scored_frames"] == 15
    assert scores["waypoints"]["scored_frames"] == 6  # frames 0..5 have ten future frames
    assert (out / "model" / "model.safetensors").is_file()
    label_files = list((out / "clip" / "camera_labels").glob("*.json"))
    assert [f.name for f in label_files] == ["LaneChange_Town00_Route1000001_Weather0.json"]  # the default: a held-out lane change
    assert len(json.loads(label_files[0].read_text())) == 15


def test_demo_uses_the_committed_trained_weights(tmp_path, capsys, restore_threads):
    from agent.demo.command import DEMO_WEIGHTS

    assert (DEMO_WEIGHTS / "model.safetensors").is_file(), "weights/demo/ is part of the repository"
    size = sum((DEMO_WEIGHTS / name).stat().st_size for name in ("model.safetensors", "config.json"))
    assert size < 5 * 1024 * 1024, f"the demo checkpoint must stay under 5 MB, it is {size} bytes"
    assert drivemoe_main(["demo", "--out", str(tmp_path / "demo"), "--frames", "15", "--kind", "cut_in"]) == 0
    printed = capsys.readouterr().out
    assert "trained demo weights" in printed and "UNTRAINED" not in printed
    header = json.loads((tmp_path / "demo" / "replay" / "trace_header.json").read_text())
    assert header["model"]["trained"] is True


def test_demo_rejects_a_clip_too_short_to_score(tmp_path, capsys):
    assert drivemoe_main(["demo", "--out", str(tmp_path / "demo"), "--frames", "5"]) != 0
    assert "--frames must be >= 15" in capsys.readouterr().err
