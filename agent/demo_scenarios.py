"""A seeded family of procedural demo scenarios where the relevant car sits in a known camera and the
ego's manoeuvre depends on it (training and held-out clips for the demo weights).

Every scenario reuses the built-in scene's road, renderer and annotation writer (agent/demo_scene.py)
and changes only the motion of the ego and of one other car (the cue). The kinds, each mapped to a
skill by model/skills.py through its Bench2Drive scenario type (the clip name's first part):

* overtake   (HazardAtSideLane -> OVERTAKING): a slower car in the other lane is passed; the ego
  drives in the left or the right lane, so the cue passes on the right or on the left.
* lane_change (LaneChange -> MERGING): the route moves to the other lane; a slower car in that lane
  starts beside-behind the ego (back-left / back-right camera) and the ego changes lane as soon as it
  has dropped back into the back camera's view.
* hard_brake (HardBreakRoute -> EMERGENCY_BRAKE): a car ahead in the ego's lane brakes; so does the ego.
* cut_in     (HighwayCutIn -> GIVEWAY): a car ahead-beside (front-left / front-right camera) cuts
  into the ego's lane; the ego slows to open a gap.

Camera labels are computed, not assigned: DemoScene.camera_label's rule (the camera whose axis is
nearest the cue car's centre among those that see it; "NULL" when that is the front camera or the
car is farther than label_range_m). Lateral offsets d are metres to the right of the road centreline.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.demo_scene import (
    CAR_EXTENT,
    LANE_WIDTH_M,
    Box,
    DemoClip,
    DemoScene,
    DemoSceneConfig,
    EgoPose,
    camera_label_of_point,
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
    """One sampled scenario: its kind, the side of the cue, the scene geometry and both motions."""

    kind: str
    cue_side: str  # "left" or "right": where the cue car is relative to the ego at the start
    scene: DemoSceneConfig
    ego: Motion
    cue: Motion


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


@functools.lru_cache(maxsize=2)
def _back_camera_distance(side: str) -> float:
    """How far (m, centre to centre) a car one lane to `side` must be behind the ego to be labelled
    CAM_BACK rather than the back-side camera (the label rule of DemoScene, scanned in 5 cm steps)."""
    lateral = LANE_WIDTH_M if side == "right" else -LANE_WIDTH_M
    for behind in np.arange(0.0, 20.0, 0.05):
        if camera_label_of_point(np.array([-behind, lateral, CAR_EXTENT[2]]), 30.0) == "CAM_BACK":
            return float(behind)
    raise AssertionError("the back camera never sees a car one lane to the side")


def sample_scenario(seed: int, family: ScenarioFamilyConfig = ScenarioFamilyConfig()) -> ScenarioSpec:
    """The scenario of `seed`: the kind cycles with the seed (balanced classes), the rest is drawn."""
    rng = np.random.default_rng([seed, 7])
    kind = family.kinds[seed % len(family.kinds)]
    side = "right" if rng.random() < 0.5 else "left"
    ego_lane, other_lane = (LEFT_LANE, RIGHT_LANE) if side == "right" else (RIGHT_LANE, LEFT_LANE)
    scene = DemoSceneConfig(
        num_frames=family.num_frames,
        image_width=family.image_width,
        image_height=family.image_height,
        straight_length_m=float(rng.uniform(5.0, 40.0)),
        curve_radius_m=float(rng.uniform(35.0, 90.0)),
        curve_angle_deg=float(rng.uniform(0.0, 90.0)),
        scenario_type=SCENARIO_TYPE_OF_KIND[kind],
        route_id=seed,
        seed=seed,
    )
    s0 = float(rng.uniform(2.0, 10.0))
    v = float(rng.uniform(4.5, 7.0))
    if kind == "overtake":
        ego = Motion(s0, v, d_from=ego_lane)
        cue = Motion(s0 + float(rng.uniform(8.0, 16.0)), v - float(rng.uniform(2.0, 3.5)), d_from=other_lane)
    elif kind == "lane_change":
        dv = float(rng.uniform(1.5, 2.5))
        gap = float(rng.uniform(1.0, 2.5))
        cue = Motion(s0 - gap, v - dv, d_from=other_lane)
        # start changing lane when the cue leaves the back-side camera for the back camera
        t_shift = (_back_camera_distance(side) - gap) / dv
        ego = Motion(s0, v, d_from=ego_lane, d_to=other_lane, t_shift=t_shift, shift_s=float(rng.uniform(2.5, 3.0)))
    elif kind == "hard_brake":
        t_brake = float(rng.uniform(0.5, 2.0))
        decel = float(rng.uniform(1.5, 3.0))
        gap = float(rng.uniform(10.0, 18.0))
        v_end = float(rng.uniform(0.5, 2.0))
        cue = Motion(s0 + gap, v, a=-decel, v_limit=v_end, d_from=ego_lane, delay=t_brake)
        ego = Motion(s0, v, a=-decel * 0.9, v_limit=v_end, d_from=ego_lane, delay=t_brake)
        side = "front"
    else:  # cut_in
        ahead = float(rng.uniform(3.0, 5.5))
        t_cut = float(rng.uniform(1.5, 3.0))
        cue = Motion(s0 + ahead, v, d_from=other_lane, d_to=ego_lane, t_shift=t_cut, shift_s=float(rng.uniform(2.5, 3.5)))
        ego = Motion(s0, v, a=-float(rng.uniform(1.0, 2.0)), v_limit=v * 0.6, d_from=ego_lane, delay=t_cut)
    return ScenarioSpec(kind, side, scene, ego, cue)


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
        x, y, _ = self.road.pose(s, np.full_like(s, self.spec.ego.d_to if math.isfinite(self.spec.ego.t_shift) else self.spec.ego.d_from))
        return np.stack([x, y], axis=1)

    def annotation(self, index: int) -> dict:
        out = super().annotation(index)
        out["bounding_boxes"][1]["speed"] = self._speed(self.spec.cue, self.time(index))
        return out

    @staticmethod
    def _speed(motion: Motion, t: float) -> float:
        dt = 0.05
        return float((motion.s(t + dt) - motion.s(max(0.0, t - dt))) / (t + dt - max(0.0, t - dt)))


def write_scenario_clip(out_dir: str | Path, spec: ScenarioSpec) -> DemoClip:
    """Render `spec` into `out_dir/<clip name>/` (Bench2Drive layout), labels to `out_dir/camera_labels/`."""
    from bench2drive_eval.jsonio import write_json_atomic
    from model.dataset.b2d_clip import write_frame

    scene = ScenarioScene(spec)
    out = Path(out_dir)
    clip_dir = out / spec.scene.clip_name
    labels = {}
    for frame in scene.frames():
        write_frame(clip_dir, frame.index, frame.annotation, frame.images)
        labels[str(frame.index)] = frame.camera_label
    labels_path = out / "camera_labels" / f"{spec.scene.clip_name}.json"
    write_json_atomic(labels_path, labels, indent=4)
    return DemoClip(clip_dir, labels_path, spec.scene.scenario_type, spec.scene.num_frames)


def training_seeds(count: int) -> list[int]:
    return list(range(count))


def held_out_seeds(count: int) -> list[int]:
    return list(range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + count))
