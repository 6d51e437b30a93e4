"""Scores of a replay against the clip's ground truth: waypoint ADE/FDE, camera- and skill-router accuracy.

Ground-truth waypoints of frame k are the clip's ego positions at frames k, k+1, ..., k+H-1 (10 Hz;
the ego box locations, as the training windows read them, or the annotated GNSS-derived `x`, `y` of
all H frames when one of them has no usable ego box) expressed in the ego frame of frame k (model.ego_state.world_to_ego with frame k's compass-style
`theta`), so the first is the origin, exactly like the training targets. ADE averages the
Euclidean error over the H-1 future points (the current point is 0 in both), FDE is the error of
the last point. A frame is scored only when all H frames exist and are good.

Camera labels use the authors' format (frame index -> camera or "NULL", NULL trained as CAM_BACK);
the predicted camera is the router's top choice. The skill label is the clip's scenario type mapped
by model/skills.py; the predicted skill is the argmax of the action-router logits averaged over the
denoising steps (expert i is trained toward skill class i, so this needs E == number of skills).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.cameras import ROUTER_CANDIDATES, router_class_of_label
from model.ego_state import world_to_ego
from model.training.windows import _ego_position as ego_box_position


@dataclass(frozen=True)
class FramePrediction:
    """What the replay keeps of one inference for scoring."""

    frame: int
    waypoints: np.ndarray  # [H, 2] metres, ego frame
    selected_camera: str | None
    action_router_logits: np.ndarray | None  # [steps, E]


def future_waypoints(annotations: Mapping[int, dict], frame: int, horizon: int) -> np.ndarray | None:
    """[horizon, 2] ground-truth waypoints of `frame` in its ego frame, or None if a frame is missing."""
    frames = [frame + i for i in range(horizon)]
    if any(f not in annotations for f in frames):
        return None
    current = annotations[frame]
    theta = current.get("theta")
    if theta is None or not np.isfinite(theta):
        return None
    boxes = [ego_box_position(annotations[f]) for f in frames]
    if all(problem is None for _, problem in boxes):
        world = np.array([xy for xy, _ in boxes], dtype=np.float64)
    else:  # never mix the two points: they lie 1.4 m apart
        world = np.array([[annotations[f]["x"], annotations[f]["y"]] for f in frames], dtype=np.float64)
    return world_to_ego(world, world[0], float(theta))


def displacement_errors(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(ADE over the future points 1..H-1, FDE at the last point), metres."""
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted waypoints {predicted.shape} and ground truth {truth.shape} differ in shape")
    errors = np.linalg.norm(predicted - truth, axis=1)
    return float(errors[1:].mean()), float(errors[-1])


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], classes: int) -> np.ndarray:
    """[classes, classes] counts; rows are labels, columns predictions."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(true, predicted):
        matrix[int(t), int(p)] += 1
    return matrix


def predicted_skill(action_router_logits: np.ndarray | None) -> int | None:
    if action_router_logits is None:
        return None
    logits = np.asarray(action_router_logits, dtype=np.float64)
    return int(np.argmax(logits.mean(axis=0)))


def score_replay(
    predictions: Sequence[FramePrediction],
    annotations: Mapping[int, dict],
    camera_labels: Mapping[int, str] | None,
    skill_label: int | None,
    skill_names: Sequence[str],
    horizon: int,
) -> dict:
    """All scores as a JSON-ready dict (None where a score cannot be computed, with the reason)."""
    ade, fde = [], []
    for p in predictions:
        truth = future_waypoints(annotations, p.frame, horizon)
        if truth is not None and np.asarray(p.waypoints).shape == truth.shape:
            a, f = displacement_errors(p.waypoints, truth)
            ade.append(a)
            fde.append(f)
    scores: dict = {
        "inferences": len(predictions),
        "waypoints": {
            "scored_frames": len(ade),
            "ade_m": float(np.mean(ade)) if ade else None,
            "fde_m": float(np.mean(fde)) if fde else None,
            "horizon": horizon,
        },
    }
    camera: dict = {"candidates": list(ROUTER_CANDIDATES)}
    if camera_labels is None:
        camera["note"] = "no camera labels given (--camera-labels)"
    else:
        pairs = [
            (router_class_of_label(camera_labels[p.frame]), ROUTER_CANDIDATES.index(p.selected_camera))
            for p in predictions
            if p.frame in camera_labels and p.selected_camera in ROUTER_CANDIDATES
        ]
        matrix = confusion_matrix([t for t, _ in pairs], [q for _, q in pairs], len(ROUTER_CANDIDATES))
        camera.update(
            scored_frames=len(pairs),
            accuracy=float(np.trace(matrix) / matrix.sum()) if pairs else None,
            confusion=matrix.tolist(),
        )
        if not pairs:
            camera["note"] = "no labelled frame had a camera-router choice (Drive-pi0 or labels for other frames)"
    scores["camera_router"] = camera
    skill: dict = {"classes": list(skill_names)}
    chosen = [predicted_skill(p.action_router_logits) for p in predictions]
    chosen = [c for c in chosen if c is not None]
    if skill_label is None:
        skill["note"] = "the clip's scenario type has no skill label (clip name not <Scenario>_<Town>_Route<id>_Weather<id>?)"
    elif not chosen:
        skill["note"] = "no action-router outputs (dense model)"
    elif any(c >= len(skill_names) for c in chosen):
        skill["note"] = f"the action router has more experts than the {len(skill_names)} skill classes: not scored"
    else:
        matrix = confusion_matrix([skill_label] * len(chosen), chosen, len(skill_names))
        skill.update(label=skill_names[skill_label], scored_frames=len(chosen),
                     accuracy=float(np.trace(matrix) / matrix.sum()), confusion=matrix.tolist())
    scores["skill_router"] = skill
    return scores
