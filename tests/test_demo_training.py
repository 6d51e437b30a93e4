"""Demo weights: the scenario family labels the camera that shows the cue, seeds are split, and a
miniature run of `python -m agent.demo_training` writes a model that the policy and the demo load."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agent.demo_scenarios import (
    KINDS,
    LEFT_LANE,
    RIGHT_LANE,
    ScenarioFamilyConfig,
    ScenarioScene,
    held_out_seeds,
    sample_scenario,
    training_seeds,
)
from agent.demo_scene import DemoSceneConfig
from agent.projection import project_points
from model.cameras import FRONT, NULL_CAMERA_LABEL
from model.skills import Skill, skill_of_scenario

FAMILY = ScenarioFamilyConfig(num_frames=60)


def _red_fraction(image: np.ndarray) -> float:
    r, g, b = (image[..., k].astype(int) for k in range(3))
    return float(np.mean((r > 120) & (g < 80) & (b < 80)))


@pytest.mark.parametrize("seed", range(8))  # two of each kind
def test_labelled_camera_sees_the_cue_car(seed):
    spec = sample_scenario(seed, FAMILY)
    scene = ScenarioScene(spec)
    labels = scene.camera_labels()
    assert set(labels.values()) <= {NULL_CAMERA_LABEL, "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    checked = 0
    for index in range(0, FAMILY.num_frames, 6):
        label = labels[str(index)]
        t = scene.time(index)
        box = scene.other_box(t)
        centre = scene.ego_pose(t).world_to_ego(np.array([[box.x, box.y, box.extent[2]]]))
        distance = float(np.hypot(centre[0, 0], centre[0, 1]))
        camera = FRONT if label == NULL_CAMERA_LABEL else label
        if label == NULL_CAMERA_LABEL and distance > spec.scene.label_range_m:
            continue
        projection = project_points(centre, camera, (FAMILY.image_width, FAMILY.image_height))
        assert projection.visible[0], (spec.kind, index, label, centre)
        u, v = projection.uv[0]
        assert 0 <= u < FAMILY.image_width and 0 <= v < FAMILY.image_height
        # and the red car is actually drawn in that camera's image
        assert _red_fraction(scene.render(index)[camera]) > 0.002, (spec.kind, index, label)
        checked += 1
    assert checked >= 3


def test_side_of_the_cue_decides_the_camera_and_the_manoeuvre():
    by_kind: dict[tuple[str, str], list] = {}
    for seed in range(40):
        spec = sample_scenario(seed, FAMILY)
        by_kind.setdefault((spec.kind, spec.cue_side), []).append(spec)
    assert {kind for kind, _ in by_kind} == set(KINDS)
    for (kind, side), specs in by_kind.items():
        for spec in specs:
            scene = ScenarioScene(spec)
            labels = set(scene.camera_labels().values()) - {NULL_CAMERA_LABEL, "CAM_BACK"}
            end = spec.scene.num_frames / spec.scene.fps
            if kind == "lane_change":  # checks the back camera of the target lane, then moves there
                assert labels == {f"CAM_BACK_{side.upper()}"}
                target = RIGHT_LANE if side == "right" else LEFT_LANE
                assert abs(spec.ego.d(end) - target) < 0.5 * abs(spec.ego.d(0.0) - target)
            elif kind == "cut_in":  # the car cutting in is seen ahead-beside; the ego slows down
                assert labels == {f"CAM_FRONT_{side.upper()}"}
                assert spec.ego.s(end) - spec.ego.s(end - 0.1) < spec.ego.v0 * 0.1 * 0.8
                assert abs(spec.cue.d(end) - spec.ego.d(end)) < 0.1
            elif kind == "overtake":  # passed on the side of the slower car
                assert labels and all(label.endswith(side.upper()) for label in labels)
                assert spec.cue.s(end) < spec.ego.s(end) + 6.0
            else:  # hard_brake: the car stays ahead in the lane, both brake
                assert labels == set()
                assert spec.ego.s(end) - spec.ego.s(end - 0.1) < spec.ego.v0 * 0.1 * 0.5


def test_scenario_types_map_to_distinct_skills():
    skills = {skill_of_scenario(sample_scenario(seed, FAMILY).scene.scenario_type) for seed in range(len(KINDS))}
    assert skills == {Skill.OVERTAKING, Skill.MERGING, Skill.EMERGENCY_BRAKE, Skill.GIVEWAY}


def test_held_out_seeds_differ_from_training_seeds():
    train, held = training_seeds(500), held_out_seeds(50)
    assert not set(train) & set(held)
    train_names = {sample_scenario(s, FAMILY).scene.clip_name for s in train}
    held_specs = [sample_scenario(s, FAMILY) for s in held]
    assert not train_names & {spec.scene.clip_name for spec in held_specs}
    # and the held-out scenarios are new geometry, not renamed copies
    train_geometry = {(round(sample_scenario(s, FAMILY).scene.curve_radius_m, 6), round(sample_scenario(s, FAMILY).ego.v0, 6))
                      for s in train[:50]}
    assert all((round(spec.scene.curve_radius_m, 6), round(spec.ego.v0, 6)) not in train_geometry for spec in held_specs)


def test_same_seed_same_scenario():
    assert sample_scenario(3, FAMILY) == sample_scenario(3, FAMILY)
    assert sample_scenario(3, FAMILY) != sample_scenario(7, FAMILY)


@pytest.mark.timeout(120)
def test_miniature_training_run_gives_a_model_the_policy_and_the_demo_load(tmp_path):
    import agent.demo as demo
    from agent.demo_training import main
    from model.policy import DrivePolicy

    out = tmp_path / "weights"
    code = main(["--out", str(out), "--work", str(tmp_path / "work"), "--train-clips", "4", "--held-out-clips", "1",
                 "--frames", "18", "--stage1-steps", "2", "--stage2-steps", "1", "--drivepi0-steps", "2",
                 "--batch-size", "4", "--workers", "1"])
    assert code == 0
    assert not (tmp_path / "work").exists()  # scratch removed
    assert (out / "model.safetensors").stat().st_size + (out / "config.json").stat().st_size < 5 * 1024 * 1024
    policy = DrivePolicy.from_pretrained(out)
    assert policy.config.use_camera_router and policy.config.use_action_moe
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results] == ["DriveMoE (stage 2)", "DriveMoE (stage 1)", "Drive-pi0"]
    assert results[0]["camera_accuracy"] is not None and results[2]["camera_accuracy"] is None
    assert all(r["frames"] > 0 and math.isfinite(r["ade_m"]) for r in results)
    text = (out / "RESULTS.md").read_text()
    assert "Drive-pi0" in text and "camera-router accuracy" in text

    loaded, model_dir, trained = demo.build_demo_policy(tmp_path / "demo", seed=0, weights=out)
    assert trained and model_dir == out
    for name, tensor in loaded.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), policy.model.state_dict()[name].numpy()), name
    # the whole demo (clip, replay, video, report) runs on the trained folder and says so
    result = demo.run_demo(tmp_path / "demo", demo.DemoConfig(
        scene=DemoSceneConfig(num_frames=15, image_width=160, image_height=90), progress=False, weights=out))
    assert result.trained and result.model_dir == out
    assert result.scores["camera_router"]["scored_frames"] > 0
