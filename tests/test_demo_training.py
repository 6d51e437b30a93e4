"""Demo weights: the scenario family labels the camera that shows the cue, seeds are split, and a
miniature run of `python -m agent.demo.training` writes a model that the policy and the demo load."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agent.demo.scenarios import (
    KINDS,
    LEFT_LANE,
    RIGHT_LANE,
    ScenarioFamilyConfig,
    ScenarioScene,
    held_out_seeds,
    sample_scenario,
    training_seeds,
)
from model.cameras import FRONT, NULL_CAMERA_LABEL
from model.skills import Skill, skill_of_scenario

FAMILY = ScenarioFamilyConfig(num_frames=60)


def _red_fraction(image: np.ndarray) -> float:
    r, g, b = (image[..., k].astype(int) for k in range(3))
    return float(np.mean((r > 120) & (g < 80) & (b < 80)))


@pytest.mark.parametrize("seed", range(12))  # three of each kind, both lane-change variants
def test_labels_follow_the_authors_rules_on_the_scenario_plan(seed):
    spec = sample_scenario(seed, FAMILY)
    labels = ScenarioScene(spec).camera_labels()
    side = spec.side.upper()
    sequence = [labels[str(i)] for i in range(FAMILY.num_frames)]
    changes = [label for i, label in enumerate(sequence) if i == 0 or label != sequence[i - 1]]
    if spec.kind in ("lane_change", "overtake"):  # rear-side camera of the target lane until the ego is in it
        assert changes in ([f"CAM_BACK_{side}"], [f"CAM_BACK_{side}", NULL_CAMERA_LABEL]), changes
        target = RIGHT_LANE if spec.side == "right" else LEFT_LANE
        if NULL_CAMERA_LABEL not in sequence:  # a "wait" whose change ends after the clip
            assert spec.variant == "wait" and abs(spec.ego.d(FAMILY.num_frames / spec.scene.fps) - target) > 0.5
            return
        first_null = sequence.index(NULL_CAMERA_LABEL)
        assert abs(spec.ego.d(first_null / spec.scene.fps) - target) <= 0.5
        assert abs(spec.ego.d((first_null - 1) / spec.scene.fps) - target) > 0.5
    elif spec.kind == "cut_in":  # the front-side camera facing the car until it is in the ego's lane
        assert changes == [f"CAM_FRONT_{side}", NULL_CAMERA_LABEL], changes
        end = spec.scene.num_frames / spec.scene.fps
        assert spec.ego.s(end) - spec.ego.s(end - 0.1) < spec.ego.v0 * 0.1 * 0.8  # and the ego has slowed down
    else:  # hard_brake: nothing to look at beside the car ahead; both brake
        assert changes == [NULL_CAMERA_LABEL]
        end = spec.scene.num_frames / spec.scene.fps
        assert spec.ego.s(end) - spec.ego.s(end - 0.1) < spec.ego.v0 * 0.1 * 0.5


def test_in_a_lane_change_only_the_routed_camera_tells_wait_from_go():
    """The demo's point: at the first scored frame the front cameras look the same in both variants,
    the labelled back-side camera shows the car close behind only in "wait", and the right manoeuvre
    over the next two seconds differs (go: moving over; wait: still in its lane)."""
    seen = set()
    for seed in range(1, 40, len(KINDS)):  # the lane-change seeds
        spec = sample_scenario(seed, FAMILY)
        assert spec.kind == "lane_change"
        seen.add(spec.variant)
        scene = ScenarioScene(spec)
        first = 4  # the first frame with the full five-step ego history
        label = scene.camera_label(first)
        assert label == f"CAM_BACK_{spec.side.upper()}"
        images = scene.render(first)
        assert _red_fraction(images[FRONT]) == 0.0 and _red_fraction(scene.render(first - 2)[FRONT]) == 0.0
        t = scene.time(first)
        moved = abs(spec.ego.d(t + 2.0) - spec.ego.d(t))
        if spec.variant == "wait":
            assert _red_fraction(images[label]) > 0.02, seed
            assert moved < 0.05
        else:
            assert spec.variant == "go"
            assert _red_fraction(images[label]) == 0.0, seed
            assert moved > 0.5
    assert seen == {"wait", "go"}


def test_wait_variant_changes_lane_once_the_car_is_ahead_in_the_front_view():
    spec = next(sample_scenario(s, FAMILY) for s in range(1, 40, len(KINDS)) if sample_scenario(s, FAMILY).variant == "wait")
    scene = ScenarioScene(spec)
    start = int(math.ceil(spec.ego.t_shift * spec.scene.fps))
    assert spec.cue.s(spec.ego.t_shift) - spec.ego.s(spec.ego.t_shift) >= 7.0
    assert _red_fraction(scene.render(start)[FRONT]) > 0.0  # the passing car is now in front


def test_showcase_seed_is_held_out_and_of_the_asked_kind():
    from agent.demo.scenarios import HELD_OUT_SEED_BASE, showcase_seed

    for kind in KINDS:
        seed = showcase_seed(kind, FAMILY)
        spec = sample_scenario(seed, FAMILY)
        assert seed >= HELD_OUT_SEED_BASE and spec.kind == kind and spec.variant in ("", "wait")
    with pytest.raises(ValueError, match="unknown scenario kind 'parking'"):
        showcase_seed("parking", FAMILY)


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


@pytest.mark.timeout(300)  # four spawned worker processes (two trainings, two replays), each importing torch
def test_miniature_training_run_gives_a_model_the_policy_and_the_demo_load(tmp_path):
    import agent.demo.command as demo
    from agent.demo.training import main
    from model.policy import DrivePolicy

    out = tmp_path / "weights"
    code = main(["--out", str(out), "--work", str(tmp_path / "work"), "--train-clips", "4", "--held-out-clips", "2",
                 "--frames", "18", "--stage1-steps", "2", "--stage2-steps", "1", "--drivepi0-steps", "2",
                 "--batch-size", "4", "--workers", "2"])
    assert code == 0
    assert not (tmp_path / "work").exists()  # scratch removed
    assert (out / "model.safetensors").stat().st_size + (out / "config.json").stat().st_size < 5 * 1024 * 1024
    policy = DrivePolicy.from_pretrained(out)
    assert policy.config.use_camera_router and policy.config.use_action_moe
    results = json.loads((out / "results.json").read_text())
    overall = results["overall"]
    assert [r["name"] for r in overall] == ["DriveMoE (stage 2)", "Drive-pi0"]
    assert overall[0]["camera_accuracy"] is not None and overall[1]["camera_accuracy"] is None
    assert all(r["frames"] > 0 and math.isfinite(r["ade_m"]) for r in overall)
    # per-kind rows pool to the overall numbers
    per_kind = results["per_kind"]
    assert sum(rows[0]["frames"] for rows in per_kind.values()) == overall[0]["frames"]
    pooled = sum(rows[0]["ade_m"] * rows[0]["frames"] for rows in per_kind.values()) / overall[0]["frames"]
    assert pooled == pytest.approx(overall[0]["ade_m"])
    text = (out / "RESULTS.md").read_text()
    assert "Drive-pi0" in text and "camera-router accuracy" in text and "Per scenario kind" in text

    loaded, model_dir, trained = demo.build_demo_policy(tmp_path / "demo", seed=0, weights=out)
    assert trained and model_dir == out
    expected = policy.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), expected[name].numpy()), name
    # the whole demo (clip, replay, video, report) runs on the trained folder and says so
    result = demo.run_demo(tmp_path / "demo", demo.DemoConfig(frames=15, image_size=(160, 90), progress=False, weights=out))
    assert result.trained and result.model_dir == out
    assert result.scores["camera_router"]["scored_frames"] > 0
