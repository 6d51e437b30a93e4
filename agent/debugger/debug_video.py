"""`drivemoe debug-video`: render a routing trace (docs/trace-format.md) as a video, one frame per inference.

Each video frame shows the six cameras as a mosaic (the camera router's choice outlined, every
candidate's probability printed), the predicted waypoints projected into the front camera with the
real Bench2Drive camera model (agent/debugger/projection.py), a bird's-eye inset with the waypoints and the
target point, the action router's expert weights (final denoising step as bars, all steps as a
heat map), and speed, controls and latency. Images come from the trace's saved `images` or, for a
replay, from the clip (`--clip`, or the `clip` path the replay writes into the trace header).
Cameras without an image are drawn as grey tiles saying so.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.debugger.projection import project_points
from agent.runtime.routing_trace import HEADER_FILE, TRACE_FILE
from model.cameras import CAMERAS_BY_NAME, FRONT, ROUTER_CANDIDATES

REQUIRED_KEYS = ("frame", "waypoints")

# mosaic order, as the cameras sit on the car
MOSAIC: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
WAYPOINT_COLOR = (0, 255, 255)  # BGR yellow
TARGET_COLOR = (255, 0, 255)  # BGR magenta
SELECTED_COLOR = (0, 215, 255)  # BGR orange-yellow


class TraceError(ValueError):
    """A trace folder or line is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Trace:
    """A trace folder read into memory: the header (None if absent) and the lines in order."""

    folder: Path
    header: dict[str, Any] | None
    records: list[dict[str, Any]]

    @property
    def save_name(self) -> str:
        if self.header and self.header.get("save_name"):
            return str(self.header["save_name"])
        return self.folder.name


def load_trace(folder: str | Path) -> Trace:
    """Read `folder/trace.jsonl` (+ `trace_header.json` when present); TraceError names bad lines."""
    folder = Path(folder)
    path = folder / TRACE_FILE
    if not folder.is_dir():
        raise TraceError(f"{folder}: trace folder not found")
    if not path.is_file():
        raise TraceError(f"{path}: no trace file (expected {TRACE_FILE} in the trace folder)")
    header = None
    header_path = folder / HEADER_FILE
    if header_path.is_file():
        try:
            header = json.loads(header_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TraceError(f"{header_path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the live agent may have been killed mid-write: drop a torn last line
                break
            raise TraceError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise TraceError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise TraceError(f"{path} line {number}: missing key(s) {missing}")
        records.append(record)
    return Trace(folder, header, records)


def parse_frame_range(text: str | None) -> tuple[int | None, int | None]:
    """'A:B' -> (A, B) (half-open, either side optional); None -> (None, None)."""
    if text is None:
        return None, None
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--frames must look like A:B (e.g. 120:300 or 120:), got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else None
        stop = int(parts[1]) if parts[1].strip() else None
    except ValueError:
        raise ValueError(f"--frames must hold integers, got {text!r}") from None
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"--frames {text!r}: the end must be after the start")
    return start, stop


def select_records(records: Sequence[dict[str, Any]], start: int | None, stop: int | None) -> list[dict[str, Any]]:
    return [r for r in records if (start is None or r["frame"] >= start) and (stop is None or r["frame"] < stop)]


# ---------------------------------------------------------------------------------------------
# images


class ImageSource:
    """Camera images of a trace line: the trace's saved images, else the replayed clip's frame."""

    def __init__(self, trace: Trace, clip_dir: str | Path | None = None) -> None:
        self.trace = trace
        self.clip = None
        if clip_dir is None and trace.header:
            clip_dir = trace.header.get("clip")
        if clip_dir is not None:
            from model.dataset.b2d_clip import B2DClip

            self.clip = B2DClip(clip_dir)

    def images(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """camera name -> RGB uint8 for the cameras available for this line."""
        out: dict[str, np.ndarray] = {}
        for camera, relative in (record.get("images") or {}).items():
            image = cv2.imread(str(self.trace.folder / relative), cv2.IMREAD_COLOR)
            if image is not None:
                out[camera] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.clip is not None:
            for camera in CAMERAS_BY_NAME:
                if camera not in out and self.clip.image_path(camera, int(record["frame"])).is_file():
                    out[camera] = self.clip.read_image(camera, int(record["frame"]))
        return out


# ---------------------------------------------------------------------------------------------
# drawing


@dataclass(frozen=True)
class VideoLayout:
    """Pixel layout of one video frame: a 3x2 mosaic above a panel row."""

    tile_width: int = 320
    tile_height: int = 180
    panel_height: int = 250

    @property
    def width(self) -> int:
        return 3 * self.tile_width

    @property
    def height(self) -> int:
        return 2 * self.tile_height + self.panel_height

    def tile_origin(self, camera: str) -> tuple[int, int]:
        for row, names in enumerate(MOSAIC):
            if camera in names:
                return names.index(camera) * self.tile_width, row * self.tile_height
        raise ValueError(f"camera {camera!r} is not in the mosaic")


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, color=(255, 255, 255)) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def front_waypoint_pixels(waypoints: np.ndarray, tile_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ground-level ego-frame waypoints in a CAM_FRONT image of `tile_size` (w, h)."""
    points = np.asarray(waypoints, dtype=np.float64).reshape(-1, 2)
    projection = project_points(points, FRONT, image_size=tile_size)
    return projection.uv, projection.visible


def _camera_router(record: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    router = record.get("camera_router")
    if not router:
        return {}, []
    probs = dict(zip(router.get("candidates", ROUTER_CANDIDATES), router.get("probs", [])))
    return {k: float(v) for k, v in probs.items() if v is not None}, list(router.get("selected", []))


def _draw_mosaic(canvas: np.ndarray, record: dict[str, Any], images: dict[str, np.ndarray], layout: VideoLayout) -> None:
    probs, selected = _camera_router(record)
    size = (layout.tile_width, layout.tile_height)
    for names in MOSAIC:
        for camera in names:
            x0, y0 = layout.tile_origin(camera)
            if camera in images:
                tile = cv2.resize(cv2.cvtColor(images[camera], cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
            else:
                tile = np.full((size[1], size[0], 3), 60, np.uint8)
                _text(tile, "no image saved", (size[0] // 2 - 60, size[1] // 2), 0.45, (180, 180, 180))
            if camera == FRONT:
                uv, visible = front_waypoint_pixels(np.asarray(record["waypoints"]), size)
                points = [tuple(int(round(c)) for c in p) for p, ok in zip(uv, visible) if ok]
                for a, b in zip(points, points[1:]):
                    cv2.line(tile, a, b, WAYPOINT_COLOR, 2, cv2.LINE_AA)
                for p in points:
                    cv2.circle(tile, p, 4, WAYPOINT_COLOR, -1, cv2.LINE_AA)
            label = camera.replace("CAM_", "")
            if camera in probs:
                label += f"  p={probs[camera]:.2f}"
            elif camera == FRONT:
                label += "  (always)"
            _text(tile, label, (6, 16))
            if camera in probs:  # probability bar along the bottom edge
                cv2.rectangle(tile, (0, size[1] - 6), (int(size[0] * probs[camera]), size[1]), SELECTED_COLOR, -1)
            canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = tile
            if camera in selected:
                thickness = 5 if camera == selected[0] else 2
                cv2.rectangle(canvas, (x0 + 2, y0 + 2), (x0 + size[0] - 3, y0 + size[1] - 3), SELECTED_COLOR, thickness)


def bev_pixels(points_ego: np.ndarray, size: int, metres: float) -> np.ndarray:
    """Ego-frame points -> inset pixels: ego at the bottom centre, x forward up, y right to the right."""
    points = np.asarray(points_ego, dtype=np.float64).reshape(-1, 2)
    scale = (size - 20) / metres
    u = size / 2 + points[:, 1] * scale
    v = size - 15 - points[:, 0] * scale
    return np.stack([u, v], axis=1)


def _draw_bev(panel: np.ndarray, record: dict[str, Any], metres: float = 30.0) -> None:
    size = panel.shape[0]
    panel[:] = (40, 40, 40)
    for r in range(5, int(metres) + 1, 5):
        centre = bev_pixels(np.zeros((1, 2)), size, metres)[0]
        radius = int(r * (size - 20) / metres)
        cv2.circle(panel, (int(centre[0]), int(centre[1])), radius, (70, 70, 70), 1)
    ego = bev_pixels(np.zeros((1, 2)), size, metres)[0]
    cv2.rectangle(panel, (int(ego[0]) - 4, int(ego[1]) - 8), (int(ego[0]) + 4, int(ego[1]) + 8), (200, 200, 200), -1)
    waypoints = bev_pixels(np.asarray(record["waypoints"]), size, metres).round().astype(int)
    for p in waypoints:
        cv2.circle(panel, tuple(int(c) for c in p), 3, WAYPOINT_COLOR, -1, cv2.LINE_AA)
    target = record.get("target_point")
    if target is not None and all(v is not None for v in target):
        t = bev_pixels(np.asarray(target), size, metres)[0]
        clipped = np.clip(t, 6, size - 6)
        cv2.drawMarker(panel, tuple(int(c) for c in clipped), TARGET_COLOR,
                       cv2.MARKER_STAR if np.allclose(t, clipped) else cv2.MARKER_TRIANGLE_UP, 14, 2)
        _text(panel, f"target {target[0] + 0.0:.0f}, {target[1] + 0.0:.0f} m", (6, size - 4), 0.4, (255, 150, 255))
    _text(panel, f"BEV {metres:.0f} m", (6, 14), 0.4)


def _draw_action_router(panel: np.ndarray, record: dict[str, Any]) -> None:
    panel[:] = (30, 30, 30)
    router = record.get("action_router")
    height, width = panel.shape[:2]
    if not router or not router.get("steps"):
        _text(panel, "no action router (dense model)", (10, 30))
        return
    experts = int(router["num_experts"])
    steps = router["steps"]
    weights = np.zeros((len(steps), experts))
    for i, step in enumerate(steps):
        for expert, weight in zip(step["experts"], step["weights"]):
            weights[i, int(expert)] = weight
    _text(panel, f"action router: final step (bars), {len(steps)} steps (map)", (6, 14), 0.4)
    bar_top, bar_bottom = 30, 130
    bar_width = max(4, (width - 20) // experts - 4)
    final = weights[-1]
    for e in range(experts):
        x = 10 + e * (bar_width + 4)
        h = int((bar_bottom - bar_top) * final[e])
        chosen = final[e] > 0
        cv2.rectangle(panel, (x, bar_bottom - h), (x + bar_width, bar_bottom), (80, 200, 80) if chosen else (90, 90, 90), -1)
        _text(panel, f"{e}", (x + bar_width // 2 - 4, bar_bottom + 14), 0.4)
        if chosen:
            _text(panel, f"{final[e]:.2f}", (x, bar_bottom - h - 3), 0.35)
    # heat map: rows = denoising steps (top = first), columns = experts
    map_top = bar_bottom + 22
    cell_h = max(1, (height - map_top - 4) // max(len(steps), 1))
    for i in range(len(steps)):
        for e in range(experts):
            x = 10 + e * (bar_width + 4)
            value = int(255 * weights[i, e])
            cv2.rectangle(panel, (x, map_top + i * cell_h), (x + bar_width, map_top + (i + 1) * cell_h - 1), (value // 3, value, value // 3), -1)


def _draw_status(panel: np.ndarray, record: dict[str, Any], save_name: str) -> None:
    panel[:] = (25, 25, 25)
    control = record.get("control") or {}
    latency = record.get("latency_ms") or {}
    lines = [
        save_name[:38],
        f"frame {record['frame']}   t = {record.get('sim_time', float('nan')):.1f} s",
        f"speed {record.get('speed', float('nan')):.2f} m/s",
    ]
    y = 18
    for line in lines:
        _text(panel, line, (8, y), 0.45)
        y += 20
    for name, lo in (("steer", -1.0), ("throttle", 0.0), ("brake", 0.0)):
        value = float(control.get(name, 0.0))
        _text(panel, f"{name:8s} {value:+.2f}", (8, y + 10), 0.42)
        x0, x1 = 130, panel.shape[1] - 10
        cv2.rectangle(panel, (x0, y), (x1, y + 12), (70, 70, 70), 1)
        zero = x0 if lo == 0.0 else (x0 + x1) // 2
        end = int(zero + (value if lo == 0.0 else value / 2) * (x1 - x0))
        cv2.rectangle(panel, (min(zero, end), y), (max(zero, end), y + 12), (0, 160, 255), -1)
        y += 22
    y += 6
    _text(panel, "latency (ms)", (8, y), 0.42)
    y += 18
    for key, value in latency.items():
        _text(panel, f"{key:8s} {float(value):8.1f}", (8, y), 0.42)
        y += 17
        if y > panel.shape[0] - 4:
            break


def render_frame(record: dict[str, Any], images: dict[str, np.ndarray], save_name: str = "",
                 layout: VideoLayout = VideoLayout()) -> np.ndarray:
    """One BGR video frame for one trace line."""
    canvas = np.zeros((layout.height, layout.width, 3), np.uint8)
    _draw_mosaic(canvas, record, images, layout)
    top = 2 * layout.tile_height
    bev_size = layout.panel_height
    _draw_bev(canvas[top:, :bev_size], record)
    status_width = 300
    _draw_action_router(canvas[top:, bev_size : layout.width - status_width], record)
    _draw_status(canvas[top:, layout.width - status_width :], record, save_name)
    return canvas


# ---------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class VideoResult:
    path: Path  # the video file, or the folder of PNG frames when no codec was available
    frames: int
    kind: str  # "mp4" or "png"
    notes: list[str] = field(default_factory=list)


def write_frames(frames: Iterable[np.ndarray], out: str | Path, fps: float, total: int | None = None,
                 progress: bool = True) -> VideoResult:
    """Write BGR frames with cv2.VideoWriter (mp4v); PNG frames in `<out stem>_frames/` if that fails."""
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iterator: Iterator[np.ndarray] = iter(tqdm(frames, total=total, desc="debug video", unit="frame", disable=not progress))
    first = next(iterator, None)
    if first is None:
        raise ValueError("no trace lines to render (check --frames)")
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if writer.isOpened():
        writer.write(first)
        count = 1
        for frame in iterator:
            writer.write(frame)
            count += 1
        writer.release()
        return VideoResult(out, count, "mp4")
    folder = out.with_name(out.stem + "_frames")
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for frame in [first, *iterator]:
        cv2.imwrite(str(folder / f"{count:06d}.png"), frame)
        count += 1
    note = f"OpenCV has no mp4v encoder here: wrote {count} PNG frames to {folder} instead of {out}"
    return VideoResult(folder, count, "png", [note])


def render_trace_video(trace_dir: str | Path, out: str | Path, frames: str | None = None, fps: float = 10.0,
                       clip_dir: str | Path | None = None, progress: bool = True) -> VideoResult:
    """Render the trace in `trace_dir` (optionally a frame range 'A:B') to `out`."""
    trace = load_trace(trace_dir)
    start, stop = parse_frame_range(frames)
    records = select_records(trace.records, start, stop)
    if not records:
        raise ValueError(f"{trace.folder}: no trace lines in frame range {frames!r} ({len(trace.records)} lines in total)")
    source = ImageSource(trace, clip_dir)
    rendered = (render_frame(r, source.images(r), trace.save_name) for r in records)
    return write_frames(rendered, out, fps, total=len(records), progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace_dir", help="trace folder (trace.jsonl [+ trace_header.json, images/])")
    parser.add_argument("--out", required=True, help="output video file, e.g. route.mp4")
    parser.add_argument("--frames", default=None, help="frame range A:B (trace `frame` numbers, end exclusive)")
    parser.add_argument("--fps", type=float, default=10.0, help="video frame rate (default 10: one inference per 0.1 s)")
    parser.add_argument("--clip", default=None, help="Bench2Drive clip folder to take images from (replays)")


def main(args: argparse.Namespace) -> int:
    if args.fps <= 0 or not math.isfinite(args.fps):
        raise ValueError(f"--fps must be positive, got {args.fps}")
    result = render_trace_video(args.trace_dir, args.out, args.frames, args.fps, args.clip)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.frames} frames to {result.path}")
    return 0
