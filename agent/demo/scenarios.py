"""A seeded family of procedural demo scenarios: the camera to check follows from the front view and the
goal, and in one kind what that camera shows decides the manoeuvre (training and held-out clips for the
demo weights).

Every scenario reuses the built-in scene's road, renderer and annotation writer (agent/demo/scene.py)
and changes only the motion of the ego and of one other car (the cue). The kinds, each mapped to a
skill by model/skills.py through its Bench2Drive scenario type (the clip name's first part):

* lane_change (LaneChange -> MERGING): the route moves to the other lane (the goal point says so).
  Variant "wait": a faster car is close behind in that lane, seen only by the back camera of that side;
  the ego lets it pass and changes lane once it is well ahead. Variant "go": the target lane is free
  next to the ego (the nearest car is far behind, seen only by the back camera); the ego changes lane
  about a second in. Without the back-side view the two are the same scene: a model that sees only
  the front cameras can at best average them.
* overtake   (HazardAtSideLane -> OVERTAKING): a slow car ahead in the ego's lane; the ego moves to the
  other lane to pass it and stays there (the route follows that lane).
* hard_brake (HardBreakRoute -> EMERGENCY_BRAKE): a car ahead in the ego's lane brakes; so does the ego.
* cut_in     (HighwayCutIn -> GIVEWAY): a car ahead-beside cuts into the ego's lane; the ego slows down.

Camera labels follow the authors' Bench2Drive rules (DRIVEMOE.md, "Camera and skill labels"), applied to
the scenario's plan rather than to where the car happens to be: a lane change into a lane running the
same way -> the back-side camera of the target lane until the ego is in it; a cut-in -> the front-side
camera facing it until the car is in the ego's lane; otherwise "NULL" (trained as CAM_BACK). Lateral
offsets d are metres to the right of the road centreline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.cameras import NULL_CAMERA_LABEL
from agent.demo.scene import (
    CAR_EXTENT,
    LANE_WIDTH_M,
    Box,
    DemoClip,
    DemoScene,
    DemoSceneConfig,
    EgoPose,
)

KINDS: tuple[str, ...] = ("overtake", "lane_change", "hard_brake", "cut_in")
SCENARIO_TYPE_OF_KIND: dict[str, str] = {
    "overtake": "HazardAtSideLane",
    "lane_change": "LaneChange",
    "hard_brake": "HardBreakRoute",
    "cut_in": "HighwayCutIn",
}
LEFT_LANE = -LANE_WIDTH_M / 2
RIGHT_LANE = LANE_WIDTH_M / 2
# Seeds of training clips count up from 0; held-out clips use seeds from here on (disjoint sets).
HELD_OUT_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class Motion:
    """Longitudinal: constant speed v0 until `delay`, then acceleration a until the speed reaches
    v_limit, then constant speed. Lateral: d(t) moves from d_from to d_to with a smoothstep over
    [t_shift, t_shift + shift_s]."""

    s0: float
    v0: float
    a: float = 0.0
    v_limit: float = 0.0
    d_from: float = 0.0
    d_to: float = 0.0
    t_shift: float = math.inf
    shift_s: float = 3.0
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.v0 < 0 or self.v_limit < 0 or self.shift_s <= 0:
            raise ValueError(f"invalid motion {self}: speeds must be >= 0 and shift_s > 0")

    def _switch_time(self) -> float:
        if self.a == 0.0 or (self.a > 0) != (self.v_limit > self.v0):
            return math.inf
        return (self.v_limit - self.v0) / self.a

    def s(self, t: float) -> float:
        if t <= self.delay:
            return self.s0 + self.v0 * t
        s0, t = self.s0 + self.v0 * self.delay, t - self.delay
        t_switch = self._switch_time()
        if t <= t_switch:
            return s0 + self.v0 * t + 0.5 * self.a * t * t
        s_switch = s0 + self.v0 * t_switch + 0.5 * self.a * t_switch * t_switch
        return s_switch + self.v_limit * (t - t_switch)

    def d(self, t: float) -> float:
        if not math.isfinite(self.t_shift):
            return self.d_from
        u = min(1.0, max(0.0, (t - self.t_shift) / self.shift_s))
        return self.d_from + (self.d_to - self.d_from) * u * u * (3.0 - 2.0 * u)


@dataclass(frozen=True)
class ScenarioSpec:
    """One sampled scenario: its kind (and variant), the side of the other lane, the geometry and both motions."""

    kind: str
    side: str  # "left" or "right": where the other lane (the cue's lane, or the target lane) is seen from the ego
    scene: DemoSceneConfig
    ego: Motion
    cue: Motion
    variant: str = ""  # lane_change: "wait" (a car close behind in the target lane) or "go" (the lane is free)

    @property
    def changes_lane(self) -> bool:
        return math.isfinite(self.ego.t_shift) and self.ego.d_to != self.ego.d_from


@dataclass(frozen=True)
class ScenarioFamilyConfig:
    """How scenarios are sampled and rendered."""

    num_frames: int = 60
    image_width: int = 160  # the model sees 32 x 32; a small render keeps generation cheap
    image_height: int = 90
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"scenario kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if self.num_frames < 15:
            raise ValueError(f"num_frames must be >= 15 (one training window needs 14 frames), got {self.num_frames}")


# A lane change counts as done (label back to "NULL") within this lateral distance of the target lane.
LANE_REACHED_M = 0.5
# "wait": the ego starts its lane change once the passing car is this far ahead (centre to centre):
# its rear is then in the front camera's view.
PASSED_GAP_M = 7.0


def _first_time(condition, until: float = 30.0, step: float = 0.05) -> float:
    for t in np.arange(0.0, until, step):
        if condition(float(t)):
            return float(t)
    raise AssertionError("scenario condition never met")


def sample_scenario(seed: int, family: ScenarioFamilyConfig = ScenarioFamilyConfig()) -> ScenarioSpec:
    """The scenario of `seed`: the kind cycles with the seed (balanced classes), lane changes alternate
    between "wait" and "go", the rest is drawn."""
    rng = np.random.default_rng([seed, 7])
    kind = family.kinds[seed % len(family.kinds)]
    side = "right" if rng.random() < 0.5 else "left"
    ego_lane, other_lane = (LEFT_LANE, RIGHT_LANE) if side == "right" else (RIGHT_LANE, LEFT_LANE)
    scene = DemoSceneConfig(
        num_frames=family.num_frames,
        image_width=family.image_width,
        image_height=family.image_height,
        # the scenario plays on the straight: the far target point (up to ~50 m ahead) stays on it, so a
        # goal beside the ego's lane means a lane change, not the road bending; the curve lies beyond
        straight_length_m=float(rng.uniform(100.0, 130.0)),
        curve_radius_m=float(rng.uniform(35.0, 90.0)),
        curve_angle_deg=float(rng.uniform(0.0, 90.0)),
        scenario_type=SCENARIO_TYPE_OF_KIND[kind],
        route_id=seed,
        seed=seed,
    )
    s0 = float(rng.uniform(2.0, 10.0))
    v = float(rng.uniform(4.5, 7.0))
    shift_s = float(rng.uniform(2.5, 3.0))
    variant = ""
    if kind == "lane_change":
        variant = "wait" if (seed // len(family.kinds)) % 2 == 0 else "go"
        # Both egos drive on at constant speed; until the go-ego turns, nothing but the back-side
        # camera (and, later, the passing car in front) tells the two apart.
        if variant == "wait":
            cue = Motion(s0 - float(rng.uniform(1.5, 3.5)), v + float(rng.uniform(2.5, 3.5)), d_from=other_lane)
            t_shift = _first_time(lambda t: cue.s(t) - (s0 + v * t) >= PASSED_GAP_M)
        else:
            cue = Motion(s0 - float(rng.uniform(14.0, 22.0)), v, d_from=other_lane)
            t_shift = float(rng.uniform(0.8, 1.3))
        ego = Motion(s0, v, d_from=ego_lane, d_to=other_lane, t_shift=t_shift, shift_s=shift_s)
    elif kind == "overtake":
        gap, dv = float(rng.uniform(12.0, 20.0)), float(rng.uniform(2.5, 4.0))
        cue = Motion(s0 + gap, v - dv, d_from=ego_lane)
        t_shift = max(0.3, (gap - float(rng.uniform(8.0, 11.0))) / dv)
        ego = Motion(s0, v, d_from=ego_lane, d_to=other_lane, t_shift=t_shift, shift_s=shift_s)
    elif kind == "hard_brake":
        t_brake = float(rng.uniform(0.5, 2.0))
        decel = float(rng.uniform(1.5, 3.0))
        gap = float(rng.uniform(10.0, 18.0))
        v_end = float(rng.uniform(0.5, 2.0))
        cue = Motion(s0 + gap, v, a=-decel, v_limit=v_end, d_from=ego_lane, delay=t_brake)
        ego = Motion(s0, v, a=-decel * 0.9, v_limit=v_end, d_from=ego_lane, delay=t_brake)
    else:  # cut_in
        ahead = float(rng.uniform(4.0, 7.0))
        t_cut = float(rng.uniform(1.0, 2.5))
        cue = Motion(s0 + ahead, v, d_from=other_lane, d_to=ego_lane, t_shift=t_cut, shift_s=float(rng.uniform(2.5, 3.5)))
        ego = Motion(s0, v, a=-float(rng.uniform(1.0, 2.0)), v_limit=v * 0.6, d_from=ego_lane, delay=t_cut)
    return ScenarioSpec(kind, side, scene, ego, cue, variant)


def scenario_camera_label(spec: ScenarioSpec, t: float) -> str:
    """The authors' labelling rules applied to the scenario's plan at time t (see the module docstring)."""
    if spec.changes_lane and abs(spec.ego.d(t) - spec.ego.d_to) > LANE_REACHED_M:
        return f"CAM_BACK_{spec.side.upper()}"
    if spec.kind == "cut_in" and abs(spec.cue.d(t) - spec.ego.d(t)) > LANE_REACHED_M:
        return f"CAM_FRONT_{spec.side.upper()}"
    return NULL_CAMERA_LABEL


class ScenarioScene(DemoScene):
    """DemoScene with the ego and the cue car moving as a ScenarioSpec says."""

    def __init__(self, spec: ScenarioSpec) -> None:
        self.spec = spec  # set before DemoScene.__init__, which plans the route with these motions
        super().__init__(spec.scene)
        self.ego_lane = spec.ego.d_from
        self.other_lane = spec.cue.d_from

    def ego_s(self, t: float) -> float:
        return self.spec.ego.s(t)

    def other_s(self, t: float) -> float:
        return self.spec.cue.s(t)

    def _moving_pose(self, motion: Motion, t: float) -> EgoPose:
        """Pose on the road with the heading turned by the lateral motion (d' / s')."""
        dt = 0.05
        s, d = motion.s(t), motion.d(t)
        ds = (motion.s(t + dt) - motion.s(t - dt)) / (2 * dt)
        dd = (motion.d(t + dt) - motion.d(t - dt)) / (2 * dt)
        x, y, yaw = self.road.pose(s, d)
        heading = math.atan2(dd, max(ds, 0.1))
        return EgoPose(float(x), float(y), float(yaw) + heading)

    def ego_pose(self, t: float) -> EgoPose:
        return self._moving_pose(self.spec.ego, t)

    def other_box(self, t: float) -> Box:
        pose = self._moving_pose(self.spec.cue, t)
        return Box(pose.x, pose.y, pose.yaw, CAR_EXTENT, (200, 45, 40))

    def _lane_points(self, spacing: float) -> np.ndarray:
        """The route follows the lane the ego ends in (the target lane of a lane change)."""
        start = self.spec.ego.s(0.0)
        s = np.append(np.arange(start, self.road.length, spacing), self.road.length)
        x, y, _ = self.road.pose(s, np.full_like(s, self.spec.ego.d_to if self.spec.changes_lane else self.spec.ego.d_from))
        return np.stack([x, y], axis=1)

    def camera_label(self, index: int) -> str:
        return scenario_camera_label(self.spec, self.time(index))

    def annotation(self, index: int) -> dict:
        out = super().annotation(index)
        out["bounding_boxes"][1]["speed"] = self._speed(self.spec.cue, self.time(index))
        return out

    @staticmethod
    def _speed(motion: Motion, t: float) -> float:
        dt = 0.05
        return float((motion.s(t + dt) - motion.s(max(0.0, t - dt))) / (t + dt - max(0.0, t - dt)))


def write_scenario_clip(out_dir: str | Path, spec: ScenarioSpec, progress: bool = False) -> DemoClip:
    """Render `spec` into `out_dir/<clip name>/` (Bench2Drive layout), labels to `out_dir/camera_labels/`."""
    from tqdm import tqdm

    from bench2drive_eval.jsonio import write_json_atomic
    from model.dataset.b2d_clip import write_frame

    scene = ScenarioScene(spec)
    out = Path(out_dir)
    clip_dir = out / spec.scene.clip_name
    labels = {}
    for frame in tqdm(scene.frames(), total=spec.scene.num_frames, desc="demo clip", unit="frame", disable=not progress):
        write_frame(clip_dir, frame.index, frame.annotation, frame.images)
        labels[str(frame.index)] = frame.camera_label
    labels_path = out / "camera_labels" / f"{spec.scene.clip_name}.json"
    write_json_atomic(labels_path, labels, indent=4)
    return DemoClip(clip_dir, labels_path, spec.scene.scenario_type, spec.scene.num_frames)


def training_seeds(count: int) -> list[int]:
    return list(range(count))


def held_out_seeds(count: int) -> list[int]:
    return list(range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + count))


def showcase_seed(kind: str, family: ScenarioFamilyConfig = ScenarioFamilyConfig()) -> int:
    """The first held-out seed of `kind` (for lane changes, of the "wait" variant, where the routed
    camera decides the manoeuvre): what `drivemoe demo` shows by default."""
    if kind not in family.kinds:
        raise ValueError(f"unknown scenario kind {kind!r}; choose one of {', '.join(family.kinds)}")
    for seed in held_out_seeds(8 * len(family.kinds)):
        spec = sample_scenario(seed, family)
        if spec.kind == kind and spec.variant in ("", "wait"):
            return seed
    raise AssertionError(f"no held-out seed of kind {kind}")
