"""`drivemoe convert` on the authors' tiny checkpoints: reported keys, round trip, clear errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoints import load_official_checkpoint, load_pretrained, read_config
from model.cli import main as cli_main
from model.config import ModelConfig
from model.errors import CheckpointError

MODELS = ("drivemoe", "drivepi0")
PRECISIONS = ("official_checkpoint.pt", "official_checkpoint_bf16.pt")


def convert(reference: Path, model: str, checkpoint: str, out: Path, *extra: str) -> int:
    return cli_main(["convert", "--official", str(reference / f"tiny_{model}" / checkpoint),
                     "--official-config", str(reference / f"tiny_{model}" / "config.json"), "--out", str(out), *extra])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("checkpoint", PRECISIONS)
def test_convert_reports_keys_and_round_trips(drivemoe_reference: Path, tmp_path: Path, capsys, model: str, checkpoint: str) -> None:
    assert convert(drivemoe_reference, model, checkpoint, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    official, meta = load_official_checkpoint(drivemoe_reference / f"tiny_{model}" / checkpoint)
    criterion = sorted(k for k in official if k.startswith("criterion."))
    assert f"keys loaded: {len(official) - len(criterion)}" in printed
    for key in criterion:
        assert key in printed
    assert ("bfloat16" if "bf16" in checkpoint else "float32") in printed
    assert (tmp_path / "out" / "model.safetensors").is_file()

    loaded, config = load_pretrained(tmp_path / "out")
    assert config == ModelConfig.from_official(
        json.loads((drivemoe_reference / f"tiny_{model}" / "config.json").read_text())["resolved_merged_config"], name=config.name)
    state = loaded.state_dict()
    for key, value in official.items():
        if key.startswith("criterion."):
            continue
        assert torch.equal(state[key], value.float()), key  # every tiny weight is bf16-exact
    # tied names share storage after loading
    for proprio_key, action_key in loaded.joint_model.tied_parameter_names():
        assert state[proprio_key].data_ptr() == state[action_key].data_ptr()
    _, payload = read_config(tmp_path / "out")
    assert len(payload["tied_weights"]) == len(loaded.joint_model.tied_parameter_names()) > 0
    if model == "drivepi0":
        assert meta.keys() >= {"cnt_update", "wandb_id"}
    else:
        assert meta["stage"] == 2


def test_convert_bfloat16_storage_and_prompt_ids(drivemoe_reference: Path, tmp_path: Path) -> None:
    assert convert(drivemoe_reference, "drivemoe", "official_checkpoint.pt", tmp_path / "bf16", "--dtype", "bfloat16", "--prompt-ids", "2,17,33,108") == 0
    model, config = load_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    assert config.sequence.prompt_token_ids == (2, 17, 33, 108)
    model32, _ = load_pretrained(tmp_path / "bf16", dtype="float32")
    assert model32.dtype == torch.float32


def test_convert_with_preset_and_stats(drivemoe_reference: Path, tmp_path: Path) -> None:
    stats = json.loads((drivemoe_reference / "statistics" / "b2d_statistics.json").read_text())
    stats["speed"] = [0.0, 10.0]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    code = cli_main(["convert", "--official", str(drivemoe_reference / "tiny_drivepi0" / "official_checkpoint.pt"),
                     "--preset", "tiny-drivepi0", "--stats", str(tmp_path / "stats.json"), "--out", str(tmp_path / "out")])
    assert code == 0
    _, config = load_pretrained(tmp_path / "out")
    assert config.stats.speed == (0.0, 10.0)


def test_mismatched_config_names_the_keys(drivemoe_reference: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["convert", "--official", str(drivemoe_reference / "tiny_drivemoe" / "official_checkpoint.pt"),
                     "--preset", "tiny-drivepi0", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unexpected key" in err and "camera_router" in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_shape_mismatch_names_key_and_shapes(drivemoe_reference: Path, tmp_path: Path, capsys) -> None:
    resolved = json.loads((drivemoe_reference / "tiny_drivepi0" / "config.json").read_text())["resolved_merged_config"]
    resolved["vocab_size"] = 200
    (tmp_path / "cfg.json").write_text(json.dumps({"resolved_merged_config": resolved}))
    code = cli_main(["convert", "--official", str(drivemoe_reference / "tiny_drivepi0" / "official_checkpoint.pt"),
                     "--official-config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "embed_tokens.weight" in err and "(200, 64)" in err and "(192, 64)" in err


def test_truncated_and_missing_files(drivemoe_reference: Path, tmp_path: Path, capsys) -> None:
    data = (drivemoe_reference / "tiny_drivepi0" / "official_checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_official_checkpoint(tmp_path / "cut.pt")
    assert cli_main(["convert", "--official", str(tmp_path / "missing.pt"), "--preset", "tiny-drivepi0", "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt" in capsys.readouterr().err

    assert convert(drivemoe_reference, "drivepi0", "official_checkpoint.pt", tmp_path / "ok") == 0
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "ok", broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        load_pretrained(broken)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_pretrained(tmp_path / "nowhere")


def test_loaded_folder_with_wrong_config_fails_clearly(drivemoe_reference: Path, tmp_path: Path) -> None:
    assert convert(drivemoe_reference, "drivepi0", "official_checkpoint.pt", tmp_path / "ok") == 0
    path = tmp_path / "ok" / "config.json"
    payload = json.loads(path.read_text())
    payload["model"]["joint"]["num_kv_heads"] = 4
    path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"k_proj.weight: config .* expects \(64, 32\), checkpoint has \(32, 32\)"):
        load_pretrained(tmp_path / "ok")
    payload["model"]["joint"]["num_kv_heads"] = 3
    path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="joint.num_kv_heads"):
        load_pretrained(tmp_path / "ok")


def test_yaml_official_config_with_references(drivemoe_reference: Path, tmp_path: Path) -> None:
    import yaml

    resolved = json.loads((drivemoe_reference / "tiny_drivemoe" / "config.json").read_text())["resolved_merged_config"]
    resolved["joint"]["config"]["mixture"] = "${mixture}"
    resolved["joint"]["config"]["pad_token_id"] = "${pad_token_id}"
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(resolved))
    from model.convert import read_official_config

    config = ModelConfig.from_official(read_official_config(tmp_path / "model.yaml"), name="tiny-drivemoe")
    assert config == ModelConfig.preset("tiny-drivemoe")
    resolved["max_seq_len"] = "${eval:'3*16+8'}"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(resolved))
    with pytest.raises(ValueError, match="resolve=True"):
        read_official_config(tmp_path / "bad.yaml")


def test_incomplete_official_config_names_the_field(drivemoe_reference: Path) -> None:
    resolved = json.loads((drivemoe_reference / "tiny_drivemoe" / "config.json").read_text())["resolved_merged_config"]
    broken = json.loads(json.dumps(resolved))
    del broken["vision"]["config"]["patch_size"]
    with pytest.raises(ValueError, match="patch_size"):
        ModelConfig.from_official(broken)
    broken = json.loads(json.dumps(resolved))
    del broken["joint"]
    with pytest.raises(ValueError, match="joint.config"):
        ModelConfig.from_official(broken)
