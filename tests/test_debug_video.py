"""`drivemoe debug-video`: one video frame per trace line, waypoints drawn where the camera model says."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.debugger.debug_video import (
    SELECTED_COLOR,
    VideoLayout,
    front_waypoint_pixels,
    load_trace,
    parse_frame_range,
    render_frame,
    render_trace_video,
)
from agent.runtime.routing_trace import TraceWriter, trace_record
from model.cameras import ROUTER_CANDIDATES
from model.cli import main as drivemoe_main
from model.image_preprocessing import PreparedImage


@dataclass
class FakePrediction:
    """The Prediction fields the trace writer reads (values chosen by the test)."""

    waypoints: np.ndarray
    camera_logits: np.ndarray
    camera_probs: np.ndarray
    selected_cameras: tuple[str, ...]
    action_router_logits: np.ndarray
    action_router_weights: np.ndarray
    action_router_experts: np.ndarray


def synthetic_prediction(i: int, steps: int = 10, experts: int = 7) -> FakePrediction:
    """A deterministic prediction whose chosen camera and experts change along the route."""
    logits = np.zeros(5)
    logits[(i // 4) % 5] = 2.0
    probs = np.exp(logits) / np.exp(logits).sum()
    router_logits = np.stack([np.roll(np.linspace(1.0, 0.0, experts), (i // 3 + s // 5) % experts) for s in range(steps)])
    top = np.argsort(-router_logits, axis=1)[:, :3]
    chosen = np.take_along_axis(router_logits, top, axis=1)
    weights = np.exp(chosen) / np.exp(chosen).sum(axis=1, keepdims=True)
    waypoints = np.stack([np.linspace(0.0, 9.0, 10), np.linspace(0.0, 0.5 * np.sin(i / 5), 10)], axis=1)
    return FakePrediction(waypoints, logits, probs, (ROUTER_CANDIDATES[int(np.argmax(probs))],),
                          router_logits, weights, top)


def write_synthetic_trace(folder: Path, lines: int = 12, save_name: str = "RouteScenario_1_rep0_Town01_Accident_1_11_29_00_00_00",
                          with_images: bool = True) -> list[dict]:
    """A trace written with the agent's own TraceWriter; returns the records."""
    writer = TraceWriter(folder)
    writer.write_header({"name": "tiny-drivemoe"}, {"preset": "default"}, save_name)
    records = []
    for i in range(lines):
        prediction = synthetic_prediction(i)
        images = {}
        if with_images:
            front = np.zeros((3, 32, 32), np.uint8)
            front[0] = 40 + 10 * i
            chosen = np.full((3, 32, 32), 128, np.uint8)
            images = writer.save_images(2 * i, {"CAM_FRONT": PreparedImage(front, "CAM_FRONT"),
                                                prediction.selected_cameras[0]: PreparedImage(chosen, prediction.selected_cameras[0])})
        record = trace_record(2 * i, 0.1 * i, 5.0 + 0.1 * i, (10.0 * i, 0.0), np.pi / 2, (25.0, 1.0), prediction,
                              {"steer": 0.1, "throttle": 0.5, "brake": 0.0}, {"model": 12.0, "tick": 15.0}, images)
        writer.append(record)
        records.append(record)
    writer.close()
    return records


def test_front_waypoints_are_projected_with_the_camera_model():
    layout = VideoLayout()
    size = (layout.tile_width, layout.tile_height)
    uv, visible = front_waypoint_pixels(np.array([[0.0, 0.0], [20.0, 0.0], [10.0, 2.0]]), size)
    assert not visible[0]  # the current position lies below the front camera's view
    # straight ahead on the ground: centre column, below the centre row by f * h / (x - cam_x)
    focal = layout.tile_width / (2 * np.tan(np.deg2rad(35.0)))
    assert uv[1, 0] == pytest.approx(layout.tile_width / 2)
    assert uv[1, 1] == pytest.approx(layout.tile_height / 2 + focal * 1.6 / (20.0 - 0.8))
    assert uv[2, 0] > layout.tile_width / 2  # to the right


def test_rendered_frame_draws_waypoints_at_projected_pixels_and_highlights_the_choice():
    prediction = synthetic_prediction(0)
    record = trace_record(0, 0.0, 5.0, (0.0, 0.0), 0.0, (25.0, 0.0), prediction,
                          {"steer": 0.0, "throttle": 0.3, "brake": 0.0}, {"model": 10.0})
    layout = VideoLayout()
    grey = {"CAM_FRONT": np.full((90, 160, 3), 100, np.uint8)}
    frame = render_frame(record, grey, "demo", layout)
    assert frame.shape == (layout.height, layout.width, 3)
    uv, visible = front_waypoint_pixels(np.asarray(record["waypoints"]), (layout.tile_width, layout.tile_height))
    x0, y0 = layout.tile_origin("CAM_FRONT")
    for (u, v), ok in zip(uv, visible):
        if ok:
            b, g, r = frame[y0 + int(round(v)), x0 + int(round(u))]
            assert g > 200 and r > 200 and b < 80  # yellow marker on a grey image
    # the selected camera's tile has the highlight border, the others do not
    chosen = prediction.selected_cameras[0]
    cx, cy = layout.tile_origin(chosen)
    assert tuple(frame[cy + 3, cx + layout.tile_width // 2]) == SELECTED_COLOR
    other = next(c for c in ROUTER_CANDIDATES if c != chosen)
    ox, oy = layout.tile_origin(other)
    assert tuple(frame[oy + 3, ox + layout.tile_width // 2]) != SELECTED_COLOR


def test_video_has_one_frame_per_inference(tmp_path):
    records = write_synthetic_trace(tmp_path / "trace", lines=12)
    out = tmp_path / "route.mp4"
    result = render_trace_video(tmp_path / "trace", out, progress=False)
    assert result.kind == "mp4", result.notes
    capture = cv2.VideoCapture(str(out))
    count = 0
    while True:
        ok, _ = capture.read()
        if not ok:
            break
        count += 1
    capture.release()
    assert count == len(records) == result.frames


def test_frame_range_cuts_the_video_and_cli_reports(tmp_path, capsys):
    write_synthetic_trace(tmp_path / "trace", lines=12)
    out = tmp_path / "cut.mp4"
    assert drivemoe_main(["debug-video", str(tmp_path / "trace"), "--out", str(out), "--frames", "4:10"]) == 0
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3  # frames 4, 6, 8
    capture.release()
    assert "wrote 3 frames" in capsys.readouterr().out
    assert parse_frame_range(":5") == (None, 5)
    with pytest.raises(ValueError, match="A:B"):
        parse_frame_range("5")


def test_bad_traces_give_one_line_errors(tmp_path, capsys):
    folder = tmp_path / "trace"
    write_synthetic_trace(folder, lines=3, with_images=False)
    text = (folder / "trace.jsonl").read_text().splitlines()
    text[1] = "{not json"
    (folder / "trace.jsonl").write_text("\n".join(text) + "\n")
    assert drivemoe_main(["debug-video", str(folder), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "trace.jsonl line 2" in err and "Traceback" not in err
    # a torn last line (agent killed mid-write) is dropped, not fatal
    (folder / "trace.jsonl").write_text("\n".join(text[:1] + [text[2], '{"frame": 9, "waypo']) + "\n")
    assert len(load_trace(folder).records) == 2
    assert drivemoe_main(["debug-video", str(tmp_path / "missing"), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "trace folder not found" in capsys.readouterr().err


def test_mosaic_puts_each_camera_in_its_tile():
    """The demo scene's passed car is in CAM_FRONT_RIGHT at frame 35: the video shows it in that tile only."""
    from agent.demo.scene import DemoScene, DemoSceneConfig

    scene = DemoScene(DemoSceneConfig(num_frames=40))
    assert scene.camera_label(35) == "CAM_FRONT_RIGHT"
    record = trace_record(35, 3.5, 6.0, (0.0, 0.0), 0.0, (25.0, 3.0), synthetic_prediction(8),
                          {"steer": 0.2, "throttle": 0.4, "brake": 0.0}, {"model": 30.0, "tick": 35.0})
    layout = VideoLayout()
    frame = render_frame(record, scene.render(35), "demo", layout)

    def red_fraction(camera: str) -> float:
        x0, y0 = layout.tile_origin(camera)
        tile = frame[y0 + 20 : y0 + layout.tile_height - 10, x0 + 8 : x0 + layout.tile_width - 8].astype(int)
        return float(np.mean((tile[..., 2] > 120) & (tile[..., 1] < 80) & (tile[..., 0] < 80)))

    assert red_fraction("CAM_FRONT_RIGHT") > 0.05
    assert red_fraction("CAM_FRONT_LEFT") == 0.0 and red_fraction("CAM_BACK_LEFT") == 0.0


def test_dense_model_lines_render_without_router_panels(tmp_path):
    prediction = FakePrediction(np.stack([np.arange(10.0), np.zeros(10)], axis=1), None, None, (), None, None, None)
    record = trace_record(0, 0.0, 3.0, (0.0, 0.0), 0.0, (20.0, 0.0), prediction, {"steer": 0.0, "throttle": 0.2, "brake": 0.0}, {})
    assert record["camera_router"] is None and record["action_router"] is None
    layout = VideoLayout()
    frame = render_frame(record, {}, "pi0", layout)
    for camera in ROUTER_CANDIDATES:  # nothing highlighted
        x0, y0 = layout.tile_origin(camera)
        assert tuple(frame[y0 + 3, x0 + layout.tile_width // 2]) != SELECTED_COLOR


def test_png_frames_when_no_video_encoder(tmp_path, monkeypatch):
    write_synthetic_trace(tmp_path / "trace", lines=4, with_images=False)

    class NoEncoder:
        def __init__(self, *args, **kwargs):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(cv2, "VideoWriter", NoEncoder)
    result = render_trace_video(tmp_path / "trace", tmp_path / "route.mp4", progress=False)
    assert result.kind == "png" and result.frames == 4
    assert sorted(p.name for p in result.path.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert "no mp4v encoder" in result.notes[0]


def test_live_trace_images_are_shown_in_their_tiles(tmp_path):
    from agent.debugger.debug_video import ImageSource

    records = write_synthetic_trace(tmp_path / "trace", lines=3)
    trace = load_trace(tmp_path / "trace")
    layout = VideoLayout()
    for i, record in enumerate(records):
        images = ImageSource(trace).images(trace.records[i])
        assert set(images) == {"CAM_FRONT", record["camera_router"]["selected"][0]}
        frame = render_frame(trace.records[i], images, trace.save_name, layout)
        x0, y0 = layout.tile_origin("CAM_FRONT")
        b, g, r = frame[y0 + layout.tile_height - 20, x0 + layout.tile_width - 20].astype(int)
        assert abs(r - (40 + 10 * i)) <= 6 and g <= 6 and b <= 6  # the saved front image (red level 40 + 10 i)
        x1, y1 = layout.tile_origin("CAM_BACK_RIGHT" if "CAM_BACK_RIGHT" not in images else "CAM_BACK_LEFT")
        assert tuple(frame[y1 + layout.tile_height // 2 + 20, x1 + 20]) == (60, 60, 60)  # no image saved: grey tile
