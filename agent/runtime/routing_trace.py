"""Writer of the routing trace, format v1 (docs/trace-format.md): header, one JSON line per inference.

`trace_record()` turns one inference (pose, target, Prediction, control, latencies) into the line
the format defines; `TraceWriter` appends and flushes lines as they happen and can save the camera
images of chosen frames. Readers (debug video, routing report) live elsewhere and only read files.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench2drive_eval.jsonio import write_json_atomic
from model.cameras import BENCH2DRIVE_CAMERAS, ROUTER_CANDIDATES
from model.image_preprocessing import PreparedImage

TRACE_VERSION = 2  # 2 adds the optional `counterfactual` object; readers accept 1 and 2
TRACE_FILE = "trace.jsonl"
HEADER_FILE = "trace_header.json"
IMAGES_DIR = "images"


def _floats(values: Any) -> Any:
    """numpy arrays / scalars -> nested lists of Python floats (JSON-safe, NaN -> None)."""
    array = np.asarray(values, dtype=np.float64)
    out = array.tolist()

    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if not np.isfinite(v) else float(v)

    return clean(out)


def strict_json_record(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with every non-finite float replaced by null and the replaced fields' paths listed under
    `non_finite` (e.g. ["sim_time", "control.steer"]), so the line is strict JSON and the gap is visible."""
    paths: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not np.isfinite(value):
            paths.append(path)
            return None
        return value

    cleaned = clean(record, "")
    if paths:
        cleaned["non_finite"] = [*cleaned.get("non_finite", []), *paths]
    return cleaned


def camera_router_record(prediction: Any) -> dict[str, Any] | None:
    """The `camera_router` object of a trace line, or None for Drive-pi0 (no router outputs)."""
    probs = getattr(prediction, "camera_probs", None)
    if probs is None:
        return None
    return {
        "candidates": list(ROUTER_CANDIDATES),
        "logits": _floats(getattr(prediction, "camera_logits")),
        "probs": _floats(probs),
        "selected": list(getattr(prediction, "selected_cameras", ()) or ()),
    }


def action_router_record(prediction: Any) -> dict[str, Any] | None:
    """The `action_router` object of a trace line, or None for Drive-pi0."""
    logits = getattr(prediction, "action_router_logits", None)
    if logits is None:
        return None
    logits = np.asarray(logits)
    weights = np.asarray(getattr(prediction, "action_router_weights"))
    experts = np.asarray(getattr(prediction, "action_router_experts"))
    steps = [
        {"logits": _floats(logits[i]), "weights": _floats(weights[i]), "experts": [int(e) for e in experts[i]]}
        for i in range(logits.shape[0])
    ]
    return {"num_experts": int(logits.shape[-1]), "steps": steps}


def trace_record(
    frame: int,
    sim_time: float,
    speed: float,
    position: tuple[float, float],
    compass: float,
    target_point: tuple[float, float],
    prediction: Any,
    control: dict[str, float],
    latency_ms: dict[str, float],
    images: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One line of trace.jsonl (see docs/trace-format.md for every key)."""
    record: dict[str, Any] = {
        "version": TRACE_VERSION,
        "frame": int(frame),
        "sim_time": float(sim_time),
        "speed": float(speed),
        "position": _floats(position),
        "compass": float(compass),
        "target_point": _floats(target_point),
        "camera_router": camera_router_record(prediction),
        "action_router": action_router_record(prediction),
        "waypoints": _floats(getattr(prediction, "waypoints")),
        "control": {k: float(v) for k, v in control.items()},
        "latency_ms": {k: float(v) for k, v in latency_ms.items()},
    }
    if images:
        record["images"] = dict(images)
    return record


def _preset_switches(agent_config: dict[str, Any]) -> dict[str, Any] | None:
    """{"preset": name, "switches": every switch the presets set, with its value in this run}."""
    from agent.runtime.config import PRESET_VALUES, preset_switches

    if not isinstance(agent_config, dict) or agent_config.get("preset") not in PRESET_VALUES:
        return None
    try:
        return preset_switches(agent_config)
    except KeyError:  # a partial config dict (tests, old callers): no switch summary
        return None


def model_expert_names(model_config: Any) -> list[str] | None:
    """The header's `expert_names` for a model config: skill names with 7 experts, "expert i" otherwise,
    None without an action router (Drive-pi0)."""
    from model.skills import expert_names

    if not getattr(model_config, "use_action_moe", False):
        return None
    return list(expert_names(int(model_config.action_moe.num_experts)))


class TraceWriter:
    """Appends trace lines to <folder>/trace.jsonl, flushing each; writes the header once.

    A folder that already holds a trace (an earlier run into the same folder, or a route the evaluator
    restarts) keeps it as trace.previous-N.jsonl (+ header) and starts a new one: two runs never mix in
    one file, and nothing is lost."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.previous = self._keep_previous_trace()
        self._handle = open(self.folder / TRACE_FILE, "w", encoding="utf-8")
        self.lines = 0

    def _keep_previous_trace(self) -> Path | None:
        trace = self.folder / TRACE_FILE
        if not trace.is_file() or trace.stat().st_size == 0:
            return None
        number = 1
        while (self.folder / f"trace.previous-{number}.jsonl").exists():
            number += 1
        kept = self.folder / f"trace.previous-{number}.jsonl"
        trace.rename(kept)
        header = self.folder / HEADER_FILE
        if header.is_file():
            header.rename(self.folder / f"trace_header.previous-{number}.json")
        return kept

    def write_header(self, model: dict[str, Any], agent_config: dict[str, Any], save_name: str | None,
                     expert_names: list[str] | None = None) -> None:
        header = {
            "format": "drivemoe-trace",
            "version": TRACE_VERSION,
            "model": model,
            "agent_config": agent_config,
            "preset": _preset_switches(agent_config),
            "cameras": [dataclasses.asdict(c) for c in BENCH2DRIVE_CAMERAS],
            "save_name": save_name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if expert_names is not None:
            header["expert_names"] = list(expert_names)
        write_json_atomic(self.folder / HEADER_FILE, header)

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(strict_json_record(record), allow_nan=False) + "\n")
        self._handle.flush()
        self.lines += 1

    def save_images(self, frame: int, images: dict[str, PreparedImage]) -> dict[str, str]:
        """Save RGB images as JPEG under images/; returns camera -> path relative to the folder."""
        out: dict[str, str] = {}
        (self.folder / IMAGES_DIR).mkdir(exist_ok=True)
        for name, image in images.items():
            relative = f"{IMAGES_DIR}/{frame:06d}_{name}.jpg"
            bgr = np.ascontiguousarray(image.chw.transpose(1, 2, 0)[:, :, ::-1])
            cv2.imwrite(str(self.folder / relative), bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 90])
            out[name] = relative
        return out

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
