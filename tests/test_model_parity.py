"""Parity with the authors' implementation on the reference fixtures (tiny DriveMoE and Drive-pi0).

Converted with `drivemoe convert` (fp32 and bf16 checkpoints), run with `drivemoe predict`, compared
with expected_inference (atol = rtol = 1e-5, discrete choices exact); intermediates, the uncached path
and every training loss are checked through the model API.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoints import load_pretrained
from model.cli import main as cli_main
from model.losses import inverse_frequency_weights
from model.predict import model_inputs, pixels_from_uint8

TOL = {"atol": 1e-5, "rtol": 1e-5}
DISCRETE = ("selected_view", "action_router_topk_idx")


@pytest.fixture(scope="module")
def converted(drivemoe_reference: Path, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for model in ("drivemoe", "drivepi0"):
        for precision, name in (("fp32", "official_checkpoint.pt"), ("bf16", "official_checkpoint_bf16.pt")):
            folder = root / f"{model}_{precision}"
            code = cli_main(["convert", "--official", str(drivemoe_reference / f"tiny_{model}" / name),
                             "--official-config", str(drivemoe_reference / f"tiny_{model}" / "config.json"), "--out", str(folder)])
            assert code == 0
            out[(model, precision)] = folder
    return out


def loaded(converted, model: str):
    net, config = load_pretrained(converted[(model, "fp32")])
    for p in net.parameters():
        p.requires_grad_(False)  # as the authors' agent (it changes nn.MultiheadAttention's matmul path)
    return net, config


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if name in DISCRETE:
        assert torch.equal(actual.long(), expected.long()), f"{name}: {actual.tolist()} != {expected.tolist()}"
    else:
        torch.testing.assert_close(actual.double(), expected.double(), **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("model", ["drivemoe", "drivepi0"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict_matches_expected_inference(drivemoe_reference: Path, converted, tmp_path: Path, model: str, precision: str) -> None:
    out_path = tmp_path / "out.safetensors"
    code = cli_main(["predict", "--model", str(converted[(model, precision)]),
                     "--inputs", str(drivemoe_reference / f"tiny_{model}" / "inputs.safetensors"), "--out", str(out_path)])
    assert code == 0
    got = load_file(str(out_path))
    expected = load_file(str(drivemoe_reference / f"tiny_{model}" / "expected_inference.safetensors"))
    names = ["final_action", "unnormalised_trajectory", "euler_states"]
    if model == "drivemoe":
        names += ["camera_logits", "selected_view", "action_router_logits", "action_router_topk_idx", "action_router_topk_weights"]
    assert sorted(got) == sorted(names)
    for name in names:
        assert got[name].dtype == expected[name].dtype, name
        assert_close(name, got[name], expected[name])
    if model == "drivemoe":
        assert got["selected_view"].tolist()[0] != got["selected_view"].tolist()[1]  # the fixture routes the two samples apart


@pytest.mark.parametrize("model", ["drivemoe", "drivepi0"])
def test_input_normalisation_matches_fixture(drivemoe_reference: Path, converted, model: str) -> None:
    inputs = load_file(str(drivemoe_reference / f"tiny_{model}" / "inputs.safetensors"))
    _, config = loaded(converted, model)
    args = model_inputs(inputs, config)
    torch.testing.assert_close(pixels_from_uint8(inputs["raw_images_uint8"]), inputs["pixel_values"], atol=0, rtol=0)
    torch.testing.assert_close(args["proprio"], inputs["proprios"], **TOL)
    if "waypoints" in inputs:
        torch.testing.assert_close(args["goal"], inputs["waypoints"], **TOL)
        torch.testing.assert_close(args["goal"], args["proprio"][:, -1, 8:10], atol=0, rtol=0)


@pytest.mark.parametrize("model", ["drivemoe", "drivepi0"])
def test_intermediates_and_uncached_path(drivemoe_reference: Path, converted, model: str) -> None:
    net, config = loaded(converted, model)
    inputs = load_file(str(drivemoe_reference / f"tiny_{model}" / "inputs.safetensors"))
    expected = load_file(str(drivemoe_reference / f"tiny_{model}" / "expected_inference.safetensors"))
    args = model_inputs(inputs, config)
    with torch.no_grad():
        result = net.infer_action(args["pixel_values"], args["input_ids"], args["attention_mask"], args["proprio"],
                                  goal=args["goal"], noise=args["noise"], return_intermediates=True)
        for name in ("velocity_per_step", "t_per_step", "time_embedding_per_step", "action_embeds_per_step",
                     "decoder_input_per_step", "final_action_preclamp", "euler_states"):
            assert_close(name, result[name], expected[name])
        assert_close("proprio_embeds", net.embed_proprio(args["proprio"]), expected["proprio_embeds"])

        # vision calls in the authors' order: front t, front t-1, then the selected view
        pixels = args["pixel_values"]
        order = [0, 1] + ([2 + int(v) for v in expected["selected_view"]] if config.use_camera_router else [])
        calls = [pixels[:, 0:1], pixels[:, 1:2]]
        if config.use_camera_router:
            calls.append(torch.stack([pixels[b, order[2 + b]] for b in range(pixels.shape[0])]).unsqueeze(1))
        tokens = []
        for i, call in enumerate(calls):
            scaled, vision_out, projected = net.encode_images(call, return_intermediates=True)
            assert_close(f"vision_tower_out[{i}]", vision_out[:, 0], expected["vision_tower_out"][i])
            assert_close(f"projector_out[{i}]", projected[:, 0], expected["projector_out"][i])
            tokens.append(scaled)
        if config.use_camera_router:
            routed = net.route_cameras_detailed(tokens[0][:, 0], args["goal"])
            assert_close("camera_logits", routed.logits, expected["camera_logits"])
            assert_close("camera_router_waypoint_token", routed.waypoint_token, expected["camera_router_waypoint_token"])
            assert_close("camera_router_attn_out", routed.attn_out, expected["camera_router_attn_out"])
            assert_close("camera_router_ln_out", routed.ln_out, expected["camera_router_ln_out"])
            assert_close("selected_view", result["selected_view"], expected["selected_view"])
            for key in ("action_router_logits", "action_router_probs", "action_router_topk_idx", "action_router_topk_weights"):
                assert_close(key, result[key], expected[key])
            tokens[2] = net.add_view_embeddings(tokens[2], result["selected_views"])
        embeds = net.embed_prefix(args["input_ids"], torch.cat(tokens, dim=1))
        assert_close("inputs_embeds", embeds, expected["inputs_embeds"])
        assert torch.all(embeds[args["attention_mask"] == 0] == 0)

        naive = net.infer_action_uncached(args["pixel_values"], args["input_ids"], args["attention_mask"], args["proprio"],
                                          goal=args["goal"], noise=args["noise"])
    assert_close("naive_final_action", naive["final_action"], expected["naive_final_action"])
    torch.testing.assert_close(naive["final_action"], result["final_action"], atol=1e-6, rtol=0)
    if config.use_camera_router:
        assert_close("naive_camera_logits", naive["camera_logits"], expected["naive_camera_logits"])
        assert_close("naive_action_router_logits", naive["action_router_logits"], expected["naive_action_router_logits"])


def test_focal_class_weights_match_the_authors(drivemoe_reference: Path, converted) -> None:
    summary = json.loads((drivemoe_reference / "tiny_drivemoe" / "expected_training.json").read_text())["summary"]["stage1_train"]
    _, config = loaded(converted, "drivemoe")
    torch.testing.assert_close(inverse_frequency_weights(config.loss.camera_class_counts), torch.tensor(summary["camera_focal_alpha"]), atol=0, rtol=0)
    torch.testing.assert_close(inverse_frequency_weights(config.loss.scenario_class_counts), torch.tensor(summary["action_focal_alpha"]), atol=0, rtol=0)


TRAINING_NAMES = {"camera_router_loss_weighted": "camera_router_loss", "action_router_loss_weighted": "action_router_loss"}


@pytest.mark.parametrize("model,variant,stage,train", [
    ("drivemoe", "stage1_train", 1, True), ("drivemoe", "stage2_train", 2, True),
    ("drivemoe", "stage2_evalmode", 2, False), ("drivepi0", "train", 1, True)])
def test_training_losses_match_expected_training(drivemoe_reference: Path, converted, model: str, variant: str, stage: int, train: bool) -> None:
    net, _ = load_pretrained(converted[(model, "fp32")])
    inputs = load_file(str(drivemoe_reference / f"tiny_{model}" / "inputs.safetensors"))
    expected = load_file(str(drivemoe_reference / f"tiny_{model}" / "expected_training.safetensors"))
    batch = {"pixel_values": inputs["pixel_values"], "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
             "proprio": inputs["proprios"], "actions": expected["actions_gt"], "t": expected["t"], "x0": expected["x0_noise"]}
    if model == "drivemoe":
        batch.update(goal=inputs["waypoints"], camera_ids=expected["camera_ids"], scenario_ids=expected["scenario_ids"])
    net.train(train)
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the fixtures disabled the camera-router dropout
    out = net.forward_train(batch, stage, gumbel_noise=expected.get(f"{variant}.gumbel_noise"))
    keys = [k for k in expected if k.startswith(variant + ".") and not k.endswith(".gumbel_noise")]
    assert keys
    for key in keys:
        name = key.split(".", 1)[1]
        actual = out[TRAINING_NAMES.get(name, name)].detach()
        if actual.dtype == torch.int64:
            assert torch.equal(actual, expected[key]), key
        else:
            torch.testing.assert_close(actual.double(), expected[key].double(), atol=1e-6, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    assert out["total_loss"].requires_grad
    if variant == "stage2_train":  # quirk Q2: sample 1's tokens come from the Gumbel sample, its embedding from the argmax
        assert out["view_tokens_taken_from"][1] != out["view_embedding_index"][1]


def test_predict_reports_bad_inputs_clearly(drivemoe_reference: Path, converted, tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    inputs = load_file(str(drivemoe_reference / "tiny_drivemoe" / "inputs.safetensors"))
    del inputs["raw_his_speed"]
    save_file(inputs, str(tmp_path / "no_speed.safetensors"))
    args = ["predict", "--model", str(converted[("drivemoe", "fp32")]), "--out", str(tmp_path / "o.safetensors"), "--inputs"]
    assert cli_main(args + [str(tmp_path / "no_speed.safetensors")]) == 2
    assert "raw_his_speed" in capsys.readouterr().err
    # the Drive-pi0 fixture (2 images) fed to the DriveMoE model: the shape error names the tensor
    assert cli_main(args + [str(drivemoe_reference / "tiny_drivepi0" / "inputs.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "raw_images_uint8" in err and "(2, 7, 3, 32, 32)" in err
    assert cli_main(args + [str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
