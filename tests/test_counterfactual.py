"""Counterfactual routing: forced camera / expert re-runs, in the replay's trace and on the demo's lane change."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.demo.command import DEMO_WEIGHTS, build_demo_policy
from agent.demo.scene import DemoSceneConfig, write_demo_clip
from agent.debugger.replay import ReplayConfig, run_replay
from model.cameras import ROUTER_CANDIDATES
from model.cli import main as drivemoe_main
from model.counterfactual import forced_view_sets
from model.skills import SKILL_NAMES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    policy, folder, trained = build_demo_policy(tmp_path_factory.mktemp("model"), seed=0, weights=None)
    assert not trained
    return policy, folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_demo_clip(tmp_path_factory.mktemp("clip"), DemoSceneConfig(num_frames=12), progress=False)


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]


def test_forced_view_sets_put_each_candidate_first_and_keep_the_other_choices():
    assert forced_view_sets([3], 5) == [[0], [1], [2], [3], [4]]
    assert forced_view_sets([3, 1], 5) == [[0, 3], [1, 3], [2, 3], [3, 1], [4, 3]]


def test_forced_experts_drive_each_row_with_that_expert(tiny):
    policy, _ = tiny
    model, cfg = policy.model, policy.config
    e = cfg.action_moe.num_experts
    torch.manual_seed(0)
    tokens = torch.randn(e, cfg.num_prefix_images, cfg.vision.num_patches, cfg.joint.vlm.hidden_size) * 0.1
    tokens[:] = tokens[0]  # identical rows: only the forced expert differs
    cache = model.build_prefix_cache(policy._input_ids.expand(e, -1), policy._attention_mask.expand(e, -1), tokens,
                                     torch.zeros(e, cfg.flow.cond_steps, cfg.flow.proprio_dim))
    noise = torch.randn(1, cfg.flow.horizon, cfg.flow.action_dim).expand(e, -1, -1)
    out = model.denoise(cache, noise=noise, forced_experts=torch.arange(e))
    assert out["action_router_topk_idx"][:, :, 0].tolist() == [list(range(e))] * cfg.flow.num_inference_steps
    actions = out["final_action"]
    assert all(not torch.allclose(actions[0], actions[i]) for i in range(1, e))
    free = model.denoise(cache, noise=noise)
    assert torch.allclose(free["final_action"][0], free["final_action"][1])  # same rows, learned choice: same output

    # -1 keeps the router's choice: one mixed call (counterfactual_routing's batch) equals the two separate calls
    mixed = model.denoise(cache, noise=noise, forced_experts=torch.tensor([-1, -1, *range(2, e)]))
    assert torch.equal(mixed["final_action"][:2], free["final_action"][:2])
    assert torch.equal(mixed["final_action"][2:], actions[2:])
    assert torch.equal(mixed["action_router_topk_idx"][:, :2], free["action_router_topk_idx"][:, :2])


def test_replay_writes_counterfactuals_whose_chosen_row_is_the_prediction(tiny, clip, tmp_path):
    policy, folder = tiny
    run_replay(clip.clip_dir, policy, tmp_path, clip.camera_labels_path,
               ReplayConfig(progress=False, counterfactual_every=1, counterfactual_frames=(3, 9)))
    lines = _lines(tmp_path)
    with_cf = [line["frame"] for line in lines if "counterfactual" in line]
    assert with_cf == list(range(3, 9))
    header = json.loads((tmp_path / "trace_header.json").read_text())
    assert header["version"] == 2 and header["expert_names"] == list(SKILL_NAMES)
    for line in lines:
        cf = line.get("counterfactual")
        if cf is None:
            continue
        assert [a["name"] for a in cf["cameras"]] == list(ROUTER_CANDIDATES)
        assert [a["name"] for a in cf["experts"]] == list(SKILL_NAMES)
        chosen = line["camera_router"]["selected"][0]
        own = next(a for a in cf["cameras"] if a["name"] == chosen)
        assert own["ade_m"] == 0.0
        assert np.allclose(own["waypoints"], line["waypoints"], atol=1e-5)  # same noise: the actual prediction
        every = cf["cameras"] + cf["experts"]
        assert cf["sensitivity_m"] == max(a["ade_m"] for a in every)
        assert cf["most_different"]["name"] == max(every, key=lambda a: a["ade_m"])["name"]
        for a in every:  # ADE/FDE recomputed from the stored trajectories
            gap = np.linalg.norm(np.array(a["waypoints"]) - np.array(line["waypoints"]), axis=1)
            assert a["ade_m"] == pytest.approx(gap.mean(), abs=1e-5) and a["fde_m"] == pytest.approx(gap[-1], abs=1e-5)
        assert line["latency_ms"]["counterfactual"] > 0


def test_replay_cli_counterfactual_options(tiny, clip, tmp_path, capsys):
    _, folder = tiny
    out = tmp_path / "r"
    code = drivemoe_main(["replay", "--clip", str(clip.clip_dir), "--model", str(folder), "--out", str(out),
                          "--counterfactual-every", "4"])
    assert code == 0
    assert [line["frame"] for line in _lines(out) if "counterfactual" in line] == [0, 4, 8]
    assert drivemoe_main(["replay", "--clip", str(clip.clip_dir), "--model", str(folder), "--out", str(out),
                          "--counterfactual-frames", "5:2"]) == 2
    assert "--counterfactual-frames '5:2': the end must be after the start" in capsys.readouterr().err


def test_live_option_off_by_default_and_failures_never_raise(tiny, clip, tmp_path, caplog):
    from agent.debugger.counterfactual_hook import CounterfactualHook
    from agent.runtime.config import agent_config_from_dict

    assert agent_config_from_dict({"checkpoint": "x"}).save.counterfactual_every == 0
    hook = CounterfactualHook(object(), every=1)  # not a policy: the hook logs once and returns None
    assert hook(None, None, 0) is None and hook(None, None, 1) is None
    assert sum(hook.failures.values()) == 2 and len([r for r in caplog.records if "counterfactual" in r.message]) == 1
    policy, folder = tiny
    config = agent_config_from_dict({"checkpoint": str(folder), "device": "cpu", "save": {"counterfactual_every": 5}})
    run_replay(clip.clip_dir, policy, tmp_path, agent_config=config, config=ReplayConfig(progress=False))
    assert [line["frame"] for line in _lines(tmp_path) if "counterfactual" in line] == [0, 5, 10]


@pytest.mark.skipif(not (DEMO_WEIGHTS / "model.safetensors").is_file(), reason="demo weights not in weights/demo/")
def test_demo_lane_change_wait_counterfactual_shows_what_the_back_left_camera_changes(tmp_path):
    """The held-out 'wait' lane change: the car to wait for is seen only by CAM_BACK_LEFT. Forcing any other
    camera in its place moves the planned trajectory: measured (demo weights, seed 1000001) up to 0.29 m at the
    last waypoint for the closest alternative (CAM_BACK_RIGHT) and 0.59 m for the farthest (CAM_FRONT_RIGHT)."""
    from agent.demo.scenarios import ScenarioFamilyConfig, sample_scenario, showcase_seed, write_scenario_clip

    torch.set_num_threads(1)
    family = ScenarioFamilyConfig(num_frames=60)
    scenario = sample_scenario(showcase_seed("lane_change", family), family)
    written = write_scenario_clip(tmp_path / "clip", scenario, progress=False)
    policy, _, trained = build_demo_policy(tmp_path, 0, DEMO_WEIGHTS)
    assert trained
    run_replay(written.clip_dir, policy, tmp_path / "replay", written.camera_labels_path,
               ReplayConfig(progress=False, counterfactual_every=1, counterfactual_frames=(28, 42)))
    labels = json.loads(Path(written.camera_labels_path).read_text())
    gaps = []
    for line in _lines(tmp_path / "replay"):
        cf = line.get("counterfactual")
        if cf is None:
            continue
        assert labels[str(line["frame"])] == "CAM_BACK_LEFT" and line["camera_router"]["selected"][0] == "CAM_BACK_LEFT"
        others = [a for a in cf["cameras"] if a["name"] != "CAM_BACK_LEFT"]
        gaps.append(min(a["fde_m"] for a in others))  # even the closest other camera moves the end point this much
        assert cf["camera_sensitivity_m"] > 0.05
    assert len(gaps) == 14 and max(gaps) > 0.2
