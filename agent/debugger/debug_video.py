"""`drivemoe debug-video`: render a routing trace (docs/trace-format.md) as a video, one frame per inference.

Each video frame shows the six cameras as a mosaic (the camera router's choice outlined, every
candidate's probability printed), the predicted waypoints projected into the front camera with the
real Bench2Drive camera model (agent/debugger/projection.py), a bird's-eye inset with the waypoints and the
target point, the action router's expert weights (final denoising step as bars, all steps as a
heat map, experts named by skill), the counterfactual trajectories when the line has them, and
speed, controls and latency. Text is drawn with a real font (agent/debugger/drawing.py). Images come from the trace's saved `images` or, for a
replay, from the clip (`--clip`, or the `clip` path the replay writes into the trace header).
Cameras without an image are drawn as grey tiles saying so.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.debugger.drawing import Painter, TextBox
from agent.debugger.outputs import output_error
from agent.debugger.projection import project_points
from agent.runtime.routing_trace import HEADER_FILE, TRACE_FILE
from model.cameras import CAMERAS_BY_NAME, FRONT, ROUTER_CANDIDATES

REQUIRED_KEYS = ("frame", "waypoints")
READABLE_VERSIONS = (1, 2)

# mosaic order, as the cameras sit on the car
MOSAIC: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
# BGR. Yellow marks the choice (outline of the chosen camera, chosen trajectory); each candidate camera
# has its own colour for its probability bar and its counterfactual trajectory in the BEV.
CHOSEN_COLOR = (0, 230, 255)
WAYPOINT_COLOR = CHOSEN_COLOR
SELECTED_COLOR = CHOSEN_COLOR
TARGET_COLOR = (255, 0, 255)
CAMERA_COLORS: dict[str, tuple[int, int, int]] = {
    "CAM_FRONT_LEFT": (255, 140, 30),   # blue
    "CAM_FRONT_RIGHT": (200, 90, 255),  # pink
    "CAM_BACK": (60, 200, 60),          # green
    "CAM_BACK_LEFT": (230, 230, 40),    # cyan
    "CAM_BACK_RIGHT": (40, 90, 255),    # red-orange
}
EXPERT_BAR_COLOR = (120, 200, 120)
CONTROL_COLOR = (255, 160, 0)


class TraceError(ValueError):
    """A trace folder or line is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Trace:
    """A trace folder read into memory: the header (None if absent) and the lines in order."""

    folder: Path
    header: dict[str, Any] | None
    records: list[dict[str, Any]]
    duplicates: int = 0  # lines dropped because their frame was already read

    @property
    def save_name(self) -> str:
        if self.header and self.header.get("save_name"):
            return str(self.header["save_name"])
        return self.folder.name


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TraceError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TraceError(f"{path} line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_points(value: Any, n: int | None = None) -> bool:
    """A list of [x, y] pairs of numbers (null allowed: the writer stores NaN as null)."""
    return (isinstance(value, list) and (n is None or len(value) == n)
            and all(isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in value))


def check_record(record: dict[str, Any], where: str) -> None:
    """TraceError naming `where` and the field when a key the readers use has the wrong type."""
    def bad(field: str, expected: str) -> TraceError:
        return TraceError(f"{where}: field {field!r} must be {expected}, got {json.dumps(record.get(field))[:60]}")

    if not isinstance(record["frame"], int) or isinstance(record["frame"], bool):
        raise bad("frame", "an integer")
    if not _is_points(record["waypoints"]):
        raise bad("waypoints", "a list of [x, y] numbers")
    for key in ("sim_time", "speed", "compass"):
        if key in record and not _is_number(record[key]):
            raise bad(key, "a number")
    for key in ("position", "target_point"):
        if record.get(key) is not None and not _is_points([record[key]]):
            raise bad(key, "[x, y] numbers")
    for key in ("control", "latency_ms"):
        if key in record and not (isinstance(record[key], dict) and all(_is_number(v) for v in record[key].values())):
            raise bad(key, "an object of numbers")
    camera = record.get("camera_router")
    if camera is not None and not (isinstance(camera, dict) and isinstance(camera.get("probs", []), list)
                                   and all(_is_number(v) for v in camera.get("probs", []))
                                   and isinstance(camera.get("selected", []), list)
                                   and all(isinstance(c, str) for c in camera.get("selected", []))):
        raise bad("camera_router", "null or {candidates, logits, probs, selected}")
    action = record.get("action_router")
    if action is not None:
        steps = action.get("steps") if isinstance(action, dict) else None
        ok = (isinstance(action, dict) and isinstance(action.get("num_experts"), int) and isinstance(steps, list)
              and all(isinstance(s, dict) and isinstance(s.get("experts"), list) and isinstance(s.get("weights"), list)
                      and all(isinstance(e, int) for e in s["experts"]) and all(_is_number(w) for w in s["weights"])
                      for s in steps))
        if not ok:
            raise bad("action_router", "null or {num_experts, steps: [{logits, weights, experts}]}")
    counterfactual = record.get("counterfactual")
    if counterfactual is not None and not (isinstance(counterfactual, dict) and all(
            isinstance(a, dict) and _is_points(a.get("waypoints")) and _is_number(a.get("ade_m"))
            for a in [*counterfactual.get("cameras", []), *counterfactual.get("experts", [])])):
        raise bad("counterfactual", "null or {cameras: [...], experts: [...]} with waypoints and ade_m")


def load_trace(folder: str | Path) -> Trace:
    """Read `folder/trace.jsonl` (+ `trace_header.json` when present); TraceError names bad lines.

    Duplicated frames (the same `frame` twice, e.g. two runs appended into one file by an old
    writer) keep their first line; `Trace.duplicates` counts the dropped ones."""
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
            header = json.loads(_read_text(header_path))
        except json.JSONDecodeError as error:
            raise TraceError(f"{header_path}: not valid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(header, dict):
            raise TraceError(f"{header_path}: expected a JSON object, got {type(header).__name__}")
        version = header.get("version")
        if isinstance(version, int) and version > max(READABLE_VERSIONS):
            raise TraceError(f"{header_path}: trace format version {version} is newer than this reader "
                             f"(reads {list(READABLE_VERSIONS)}); update the project")
    records = []
    seen: set[int] = set()
    duplicates = 0
    lines = _read_text(path).splitlines()
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
        check_record(record, f"{path} line {number}")
        if record["frame"] in seen:
            duplicates += 1
            continue
        seen.add(record["frame"])
        records.append(record)
    return Trace(folder, header, records, duplicates)


def parse_frame_range(text: str | None, option: str = "--frames") -> tuple[int | None, int | None]:
    """'A:B' -> (A, B) (half-open, either side optional); None -> (None, None)."""
    if text is None:
        return None, None
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"{option} must look like A:B (e.g. 120:300 or 120:), got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else None
        stop = int(parts[1]) if parts[1].strip() else None
    except ValueError:
        raise ValueError(f"{option} must hold integers, got {text!r}") from None
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"{option} {text!r}: the end must be after the start")
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

            if not Path(clip_dir).is_dir():
                raise TraceError(f"{trace.folder}: the clip folder {clip_dir} (--clip or the header's `clip`) does not exist")
            self.clip = B2DClip(clip_dir)

    def images(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """camera name -> RGB uint8 for the cameras available for this line."""
        out: dict[str, np.ndarray] = {}
        saved = record.get("images") if isinstance(record.get("images"), dict) else {}
        for camera, relative in saved.items():
            image = cv2.imread(str(self.trace.folder / str(relative)), cv2.IMREAD_COLOR)
            if image is not None:
                out[camera] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.clip is not None:
            for camera in CAMERAS_BY_NAME:
                if camera not in out and self.clip.image_path(camera, int(record["frame"])).is_file():
                    try:
                        out[camera] = self.clip.read_image(camera, int(record["frame"]))
                    except ValueError:  # a corrupt clip JPEG: drawn as a tile without image
                        pass
        return out


# ---------------------------------------------------------------------------------------------
# drawing


@dataclass(frozen=True)
class VideoLayout:
    """Pixel layout of one video frame: a 3x2 mosaic above a panel row (BEV | action router | status)."""

    tile_width: int = 320
    tile_height: int = 180
    panel_height: int = 250
    status_width: int = 300

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


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, null, NaN written by another tool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _points(value: Any) -> np.ndarray:
    """[[x, y], ...] with nulls/NaN -> [N, 2] float array of the finite points only."""
    rows = [(float(p[0]), float(p[1])) for p in (value or []) if isinstance(p, (list, tuple)) and len(p) == 2
            and _number(p[0]) is not None and _number(p[1]) is not None]
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def expert_names_of(header: dict[str, Any] | None, count: int) -> list[str]:
    """Skill names of the experts: the trace header's `expert_names`, else model/skills.py's when there are 7."""
    from model.skills import SKILL_NAMES

    names = (header or {}).get("expert_names")
    if isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names):
        return list(names)
    return list(SKILL_NAMES) if count == len(SKILL_NAMES) else [f"expert {e}" for e in range(count)]


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
    return {k: v for k, v in ((k, _number(v)) for k, v in probs.items()) if v is not None}, list(router.get("selected", []))


def _draw_mosaic(canvas: np.ndarray, painter: Painter, record: dict[str, Any], images: dict[str, np.ndarray],
                 layout: VideoLayout) -> None:
    probs, selected = _camera_router(record)
    size = (layout.tile_width, layout.tile_height)
    for names in MOSAIC:
        for camera in names:
            x0, y0 = layout.tile_origin(camera)
            if camera in images:
                tile = cv2.resize(cv2.cvtColor(images[camera], cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
            else:
                tile = np.full((size[1], size[0], 3), 60, np.uint8)
                painter.text("no image saved", x0 + size[0] // 2, y0 + size[1] // 2 - 8, 13, (200, 200, 200), None, anchor="mt")
            if camera == FRONT:
                uv, visible = front_waypoint_pixels(_points(record.get("waypoints")), size)
                points = [tuple(int(round(c)) for c in p) for p, ok in zip(uv, visible) if ok and np.all(np.abs(p) < 1e5)]
                for a, b in zip(points, points[1:]):
                    cv2.line(tile, a, b, CHOSEN_COLOR, 2, cv2.LINE_AA)
                for p in points:
                    cv2.circle(tile, p, 4, CHOSEN_COLOR, -1, cv2.LINE_AA)
            canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = tile
            label = camera.replace("CAM_", "")
            if camera in probs:
                label += f"   p = {probs[camera]:.2f}"
                if selected and camera == selected[0]:
                    label += "   chosen"
            elif camera == FRONT:
                label += "   (always used)"
            box = painter.text(label, x0 + 6, y0 + 5, 13, (255, 255, 255), (0, 0, 0), bold=camera in selected)
            if camera in CAMERA_COLORS:  # colour key: the same colour draws this camera's alternative in the BEV
                cv2.rectangle(canvas, (box.box[2] + 3, y0 + 7), (box.box[2] + 15, y0 + 19), CAMERA_COLORS[camera], -1)
            if camera in probs:  # probability bar in the camera's colour on a dark track, above the bottom edge
                top, bottom = y0 + size[1] - 14, y0 + size[1] - 6
                cv2.rectangle(canvas, (x0 + 10, top), (x0 + size[0] - 10, bottom), (35, 35, 35), -1)
                cv2.rectangle(canvas, (x0 + 10, top), (x0 + 10 + int((size[0] - 20) * min(max(probs[camera], 0.0), 1.0)), bottom),
                              CAMERA_COLORS[camera], -1)
            if camera in selected:
                thickness = 5 if camera == selected[0] else 2
                cv2.rectangle(canvas, (x0 + 2, y0 + 2), (x0 + size[0] - 3, y0 + size[1] - 3), SELECTED_COLOR, thickness)


def bev_pixels(points_ego: np.ndarray, size: int, metres: float) -> np.ndarray:
    """Ego-frame points -> inset pixels: ego at the bottom centre, x forward up, y right to the right."""
    points = np.asarray(points_ego, dtype=np.float64).reshape(-1, 2)
    scale = (size - 40) / metres
    u = size / 2 + points[:, 1] * scale
    v = size - 24 - points[:, 0] * scale
    return np.stack([u, v], axis=1)


BEV_RANGES_M = (6.0, 10.0, 20.0, 30.0, 50.0, 80.0)


def _bev_range(paths: list[np.ndarray]) -> tuple[float, float]:
    """(metres shown ahead, ring spacing): the smallest range holding the longest drawn path with a margin."""
    reach = max((float(np.abs(p).max()) for p in paths if len(p)), default=0.0) * 1.2
    metres = next((r for r in BEV_RANGES_M if r >= reach), BEV_RANGES_M[-1])
    return metres, (2.0 if metres <= 10.0 else 5.0 if metres <= 30.0 else 10.0)


def _polyline(panel: np.ndarray, points: np.ndarray, color: tuple[int, int, int], thickness: int, dots: bool = False) -> None:
    pixels = [tuple(int(c) for c in p) for p in np.clip(points, -1e4, 1e4).round().astype(int)]
    for a, b in zip(pixels, pixels[1:]):
        cv2.line(panel, a, b, color, thickness, cv2.LINE_AA)
    if dots:
        for p in pixels:
            cv2.circle(panel, p, 2, color, -1, cv2.LINE_AA)


def _draw_bev(panel: np.ndarray, painter: Painter, origin: tuple[int, int], record: dict[str, Any]) -> None:
    size = panel.shape[0]
    ox, oy = origin
    panel[:] = (40, 40, 40)
    chosen = _points(record.get("waypoints"))
    counterfactual = record.get("counterfactual") if isinstance(record.get("counterfactual"), dict) else None
    alternatives = [(a.get("name"), _points(a.get("waypoints"))) for a in (counterfactual or {}).get("cameras", []) if isinstance(a, dict)]
    worst = (counterfactual or {}).get("most_different") or {}
    worst_expert = [_points(a.get("waypoints")) for a in (counterfactual or {}).get("experts", [])
                    if isinstance(a, dict) and worst.get("kind") == "expert" and a.get("name") == worst.get("name")]
    metres, ring = _bev_range([chosen] + [p for _, p in alternatives] + worst_expert)
    ego = bev_pixels(np.zeros((1, 2)), size, metres)[0]
    for r in np.arange(ring, metres + 1e-6, ring):
        cv2.circle(panel, (int(ego[0]), int(ego[1])), int(r * (size - 40) / metres), (75, 75, 75), 1, cv2.LINE_AA)
    cv2.rectangle(panel, (int(ego[0]) - 4, int(ego[1]) - 8), (int(ego[0]) + 4, int(ego[1]) + 8), (200, 200, 200), -1)
    for name, path in alternatives:
        if name in CAMERA_COLORS and len(path):
            _polyline(panel, bev_pixels(path, size, metres), CAMERA_COLORS[name], 2)
    for path in worst_expert:
        if len(path):
            _polyline(panel, bev_pixels(path, size, metres), (255, 255, 255), 1)
    if len(chosen):
        _polyline(panel, bev_pixels(chosen, size, metres), CHOSEN_COLOR, 1, dots=True)
    else:
        painter.text("no finite waypoints", ox + size // 2, oy + size // 2 - 8, 13, (120, 120, 255), (0, 0, 0), anchor="mt")
    target = _points([record.get("target_point")])
    if len(target):
        t = bev_pixels(target, size, metres)[0]
        clipped = np.clip(t, 6, size - 6)
        cv2.drawMarker(panel, tuple(int(c) for c in clipped), TARGET_COLOR,
                       cv2.MARKER_STAR if np.allclose(t, clipped) else cv2.MARKER_TRIANGLE_UP, 14, 2)
        painter.text(f"target {target[0, 0] + 0.0:.0f}, {target[0, 1] + 0.0:.0f} m", ox + 4, oy + size - 20, 12, (255, 170, 255))
    painter.text(f"BEV {metres:.0f} m (rings {ring:.0f} m)", ox + 4, oy + 4, 12)
    if counterfactual is not None and _number(counterfactual.get("sensitivity_m")) is not None:
        worst = counterfactual.get("most_different") or {}
        painter.text(f"sensitivity {counterfactual['sensitivity_m']:.2f} m", ox + 4, oy + 24, 12, (255, 255, 255))
        painter.text(f"most: {str(worst.get('name', '?')).replace('CAM_', '')}", ox + 4, oy + 44, 12, (220, 220, 220))
        painter.text("yellow chosen, colours: camera", ox + 4, oy + 64, 11, (220, 220, 220))
        painter.text("forced (tile key), white: expert", ox + 4, oy + 82, 11, (220, 220, 220))


def _weights_matrix(router: dict[str, Any], experts: int) -> np.ndarray:
    steps = router["steps"]
    weights = np.zeros((len(steps), experts))
    for i, step in enumerate(steps):
        for expert, weight in zip(step.get("experts", []), step.get("weights", [])):
            if isinstance(expert, int) and 0 <= expert < experts and _number(weight) is not None:
                weights[i, expert] = weight
    return weights


def _draw_action_router(panel: np.ndarray, painter: Painter, origin: tuple[int, int], record: dict[str, Any],
                        names_of: Callable[[int], list[str]]) -> None:
    ox, oy = origin
    panel[:] = (30, 30, 30)
    router = record.get("action_router")
    height, width = panel.shape[:2]
    if not router or not router.get("steps"):
        painter.text("no action router (dense model)", ox + 10, oy + 10, 13)
        return
    experts = int(router["num_experts"])
    weights = _weights_matrix(router, experts)
    steps = weights.shape[0]
    names = names_of(experts)
    painter.text("action router: skill experts", ox + 8, oy + 4, 13, bold=True)
    name_right, bar_left, bar_right = 132, 140, 212
    map_left, map_right = 252, width - 12
    painter.text("final step", ox + bar_left, oy + 26, 11, (200, 200, 200), None)
    painter.text(f"denoising steps 1-{steps}", ox + map_left, oy + 26, 11, (200, 200, 200), None)
    row_top, row_h = 44, max(8, min(22, (height - 100) // max(experts, 1)))
    cell_w = max(1, (map_right - map_left) // max(steps, 1))
    final = weights[-1]
    for e in range(experts):
        y = row_top + e * row_h
        chosen = final[e] > 0
        label = painter.fit(names[e].replace("_", " ").lower(), name_right - 8, 12)
        painter.text(label, ox + name_right, oy + y + 2, 12, (255, 255, 255) if chosen else (150, 150, 150), None, anchor="rt")
        cv2.rectangle(panel, (bar_left, y + 3), (bar_right, y + row_h - 3), (55, 55, 55), -1)
        cv2.rectangle(panel, (bar_left, y + 3), (bar_left + int((bar_right - bar_left) * min(final[e], 1.0)), y + row_h - 3),
                      EXPERT_BAR_COLOR, -1)
        if chosen:
            painter.text(f"{final[e]:.2f}", ox + bar_right + 3, oy + y + 3, 11, (255, 255, 255), None)
        for i in range(steps):
            colour = _heat_colour(weights[i, e])
            cv2.rectangle(panel, (map_left + i * cell_w, y + 1), (map_left + (i + 1) * cell_w - 2, y + row_h - 2), colour, -1)
    scale_top = row_top + experts * row_h + 8
    ramp = np.linspace(0.0, 1.0, map_right - map_left)
    for i, value in enumerate(ramp):
        cv2.line(panel, (map_left + i, scale_top), (map_left + i, scale_top + 9), _heat_colour(value), 1)
    painter.text("weight", ox + map_left - 6, oy + scale_top - 3, 11, (200, 200, 200), None, anchor="rt")
    painter.text("0", ox + map_left, oy + scale_top + 12, 11, (200, 200, 200), None)
    painter.text("0.5", ox + (map_left + map_right) // 2, oy + scale_top + 12, 11, (200, 200, 200), None, anchor="mt")
    painter.text("1", ox + map_right, oy + scale_top + 12, 11, (200, 200, 200), None, anchor="rt")


def _heat_colour(value: float) -> tuple[int, int, int]:
    level = int(round(255 * min(max(float(value), 0.0), 1.0)))
    bgr = cv2.applyColorMap(np.array([[level]], np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _draw_status(panel: np.ndarray, painter: Painter, origin: tuple[int, int], record: dict[str, Any], save_name: str) -> None:
    ox, oy = origin
    panel[:] = (25, 25, 25)
    width = panel.shape[1]
    control = record.get("control") if isinstance(record.get("control"), dict) else {}
    latency = record.get("latency_ms") if isinstance(record.get("latency_ms"), dict) else {}
    sim_time, speed = _number(record.get("sim_time")), _number(record.get("speed"))
    painter.text(painter.fit(save_name, width - 16, 13, bold=True), ox + 8, oy + 4, 13, bold=True, background=None)
    painter.text(f"frame {record['frame']}    t = " + ("-" if sim_time is None else f"{sim_time:.1f} s"), ox + 8, oy + 26, 13, background=None)
    painter.text("speed " + ("-" if speed is None else f"{speed:.2f} m/s"), ox + 8, oy + 46, 13, background=None)
    y = 70
    for name, lo in (("steer", -1.0), ("throttle", 0.0), ("brake", 0.0)):
        value = _number(control.get(name))
        painter.text(f"{name} " + ("-" if value is None else f"{value:+.2f}"), ox + 8, oy + y - 1, 12, background=None)
        x0, x1 = 120, width - 12
        cv2.rectangle(panel, (x0, y), (x1, y + 12), (80, 80, 80), 1)
        if value is None:  # not recorded (null in the trace): an empty bar, not a bar at 0
            y += 22
            continue
        zero = x0 if lo == 0.0 else (x0 + x1) // 2
        end = int(zero + (value if lo == 0.0 else value / 2) * (x1 - x0))
        cv2.rectangle(panel, (min(zero, end), y), (max(zero, end), y + 12), CONTROL_COLOR, -1)
        y += 22
    y += 6
    painter.text("latency (ms)", ox + 8, oy + y, 12, (200, 200, 200), None)
    y += 18
    items = [(str(k), _number(v)) for k, v in latency.items()]
    column = (width - 16) // 2
    for i, (key, value) in enumerate(items):
        row, col = divmod(i, 2)
        if y + row * 17 > panel.shape[0] - 16:
            break
        text = painter.fit(f"{key} " + ("-" if value is None else f"{value:.1f}"), column - 6, 12)
        painter.text(text, ox + 8 + col * column, oy + y + row * 17, 12, background=None)


def render_frame(record: dict[str, Any], images: dict[str, np.ndarray], save_name: str = "",
                 layout: VideoLayout = VideoLayout(), header: dict[str, Any] | None = None,
                 boxes: list[TextBox] | None = None) -> np.ndarray:
    """One BGR video frame for one trace line; `boxes` (if given) receives every text box drawn."""
    canvas = np.zeros((layout.height, layout.width, 3), np.uint8)
    painter = Painter(canvas)
    _draw_mosaic(canvas, painter, record, images, layout)
    top = 2 * layout.tile_height
    bev = layout.panel_height
    router_right = layout.width - layout.status_width
    _draw_bev(canvas[top:, :bev], painter, (0, top), record)
    _draw_action_router(canvas[top:, bev:router_right], painter, (bev, top), record, lambda n: expert_names_of(header, n))
    _draw_status(canvas[top:, router_right:], painter, (router_right, top), record, save_name)
    drawn = painter.flush()
    if boxes is not None:
        boxes.extend(drawn)
    return canvas


# ---------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class VideoResult:
    path: Path  # the video file, or the folder of PNG frames when no codec was available
    frames: int
    kind: str  # "mp4" or "png"
    notes: list[str] = field(default_factory=list)


def _check_writable(out: Path) -> None:
    """ValueError naming the path and the reason when `out` cannot be written (before any rendering)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write {out}: {error.strerror or error}") from None


def write_frames(frames: Iterable[np.ndarray], out: str | Path, fps: float, total: int | None = None,
                 progress: bool = True) -> VideoResult:
    """Write BGR frames with cv2.VideoWriter (mp4v) to a temporary file renamed to `out` when complete;
    PNG frames in `<out stem>_frames/` if this OpenCV has no encoder. Unwritable targets fail first."""
    from tqdm import tqdm

    out = Path(out)
    _check_writable(out)
    iterator: Iterator[np.ndarray] = iter(tqdm(frames, total=total, desc="debug video", unit="frame", disable=not progress))
    first = next(iterator, None)
    if first is None:
        raise ValueError("no trace lines to render (check --frames)")
    height, width = first.shape[:2]
    partial = out.with_name(f".{out.stem}.partial{out.suffix or '.mp4'}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if writer.isOpened():
        try:
            writer.write(first)
            count = 1
            for frame in iterator:
                writer.write(frame)
                count += 1
        finally:
            writer.release()
        if not partial.is_file() or partial.stat().st_size == 0:
            partial.unlink(missing_ok=True)
            raise ValueError(f"cannot write {out}: the video encoder wrote nothing (disk full?)")
        partial.replace(out)
        return VideoResult(out, count, "mp4")
    partial.unlink(missing_ok=True)
    folder = out.with_name(out.stem + "_frames")
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for frame in [first, *iterator]:
        if not cv2.imwrite(str(folder / f"{count:06d}.png"), frame):
            raise ValueError(f"cannot write {folder / f'{count:06d}.png'} (disk full or not writable)")
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
    rendered = (render_frame(r, source.images(r), trace.save_name, header=trace.header) for r in records)
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
    try:
        result = render_trace_video(args.trace_dir, args.out, args.frames, args.fps, args.clip)
    except OSError as error:
        raise output_error(error) from None
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.frames} frames to {result.path}")
    return 0
