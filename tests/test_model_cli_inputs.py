"""`drivemoe predict` and `drivemoe convert` on inputs a user can produce: one clear line naming the
file, tensor or field and the value, exit code 2, and no output file (not even a partial one)."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.cli import main as cli_main


@pytest.fixture(scope="module")
def converted(drivemoe_reference: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "tiny_drivemoe"
    folder = drivemoe_reference / "tiny_drivemoe"
    assert cli_main(["convert", "--official", str(folder / "official_checkpoint.pt"),
                     "--official-config", str(folder / "config.json"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def fixture_inputs(drivemoe_reference: Path) -> dict[str, torch.Tensor]:
    return load_file(str(drivemoe_reference / "tiny_drivemoe" / "inputs.safetensors"))


def run_predict(converted: Path, inputs: dict[str, torch.Tensor], tmp_path: Path, capsys, out: Path | None = None) -> tuple[int, str, Path]:
    path = tmp_path / "inputs.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(path))
    out = out or tmp_path / "out" / "pred.safetensors"
    code = cli_main(["predict", "--model", str(converted), "--inputs", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err, out


def edited(inputs: dict[str, torch.Tensor], key: str, fn) -> dict[str, torch.Tensor]:
    changed = dict(inputs)
    changed[key] = fn(inputs[key].clone())
    return changed


def set_first(value):
    def fn(tensor):
        tensor.view(-1)[0] = value
        return tensor
    return fn


@pytest.mark.parametrize("key,value", [("raw_his_speed", float("nan")), ("raw_his_theta", float("inf")),
                                       ("raw_x_command_far", float("nan")), ("raw_his_acceleration", float("-inf")),
                                       ("init_noise", float("nan"))])
def test_predict_rejects_non_finite_inputs(converted, fixture_inputs, tmp_path, capsys, key, value) -> None:
    code, err, out = run_predict(converted, edited(fixture_inputs, key, set_first(value)), tmp_path, capsys)
    assert code == 2 and f"{key} holds 1 NaN/inf value(s)" in err and "inputs.safetensors" in err
    assert not out.exists()


@pytest.mark.parametrize("bad_id", [192, 10**6, -1])
def test_predict_rejects_ids_outside_the_vocabulary(converted, fixture_inputs, tmp_path, capsys, bad_id) -> None:
    code, err, out = run_predict(converted, edited(fixture_inputs, "input_ids", set_first(bad_id)), tmp_path, capsys)
    assert code == 2 and "outside the vocabulary [0, 191]" in err and str(bad_id) in err
    assert not out.exists()


def test_predict_rejects_batch_and_time_mismatches_and_empty_batches(converted, fixture_inputs, tmp_path, capsys) -> None:
    code, err, _ = run_predict(converted, edited(fixture_inputs, "raw_his_speed", lambda t: t[:1]), tmp_path, capsys)
    assert code == 2 and "raw_his_speed has shape (1, 5), expected (2, T)" in err
    code, err, _ = run_predict(converted, edited(fixture_inputs, "raw_his_theta", lambda t: t[:, :4]), tmp_path, capsys)
    assert code == 2 and "raw_his_theta has 4 time steps, raw_his_speed has 5" in err
    code, err, _ = run_predict(converted, edited(fixture_inputs, "raw_his_acceleration", lambda t: t[..., :2]), tmp_path, capsys)
    assert code == 2 and "raw_his_acceleration has shape (2, 5, 2), expected (2, T, 3)" in err
    empty = {k: v[:0] for k, v in fixture_inputs.items()}
    code, err, out = run_predict(converted, empty, tmp_path, capsys)
    assert code == 2 and "raw_images_uint8 holds no sample" in err
    assert not out.exists()


def test_predict_output_that_cannot_be_written(converted, fixture_inputs, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "a_file").write_text("x")
    code, err, _ = run_predict(converted, fixture_inputs, tmp_path, capsys, out=tmp_path / "a_file" / "pred.safetensors")
    assert code == 2 and "cannot write" in err and "a_file" in err

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    code, err, out = run_predict(converted, fixture_inputs, tmp_path, capsys)
    assert code == 2 and f"cannot write {out}: No space left on device" in err
    assert not out.exists() and not list(out.parent.iterdir())  # no partial file left behind


def official_checkpoint_with(drivemoe_reference: Path, tmp_path: Path, change) -> Path:
    data = torch.load(drivemoe_reference / "tiny_drivemoe" / "official_checkpoint.pt", weights_only=True)
    change(data["model"])
    path = tmp_path / "edited.pt"
    torch.save(data, path)
    return path


def run_convert(checkpoint: Path, config: Path, out: Path, capsys) -> tuple[int, str]:
    code = cli_main(["convert", "--official", str(checkpoint), "--official-config", str(config), "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_convert_rejects_strings_and_nan_in_the_state_dict(drivemoe_reference, tmp_path, capsys) -> None:
    config = drivemoe_reference / "tiny_drivemoe" / "config.json"
    key = next(k for k in torch.load(drivemoe_reference / "tiny_drivemoe" / "official_checkpoint.pt", weights_only=True)["model"]
               if k.endswith("embed_tokens.weight"))

    def put_string(state):
        state[key] = "not a tensor"

    code, err = run_convert(official_checkpoint_with(drivemoe_reference, tmp_path, put_string), config, tmp_path / "o1", capsys)
    shown = key.removeprefix("_orig_mod.")  # torch.compile's prefix is stripped on reading
    assert code == 2 and "non-tensor entries" in err and f"{shown} (str)" in err

    def put_nan(state):
        state[key][3, 5] = float("nan")

    code, err = run_convert(official_checkpoint_with(drivemoe_reference, tmp_path, put_nan), config, tmp_path / "o2", capsys)
    assert code == 2 and f"{shown} holds 1 NaN/inf value(s)" in err
    assert not (tmp_path / "o1").exists() or not list((tmp_path / "o1").iterdir())
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())


@pytest.mark.parametrize("path,value,message", [
    ("joint.config.head_dim", "abc", "field 'joint.config.head_dim' must be an integer, got 'abc'"),
    ("joint.config.head_dim", 32.7, "field 'joint.config.head_dim' must be an integer, got 32.7"),
    ("max_seq_len", True, "field 'max_seq_len' must be an integer, got True"),
    ("final_action_clip_value", float("nan"), "field 'final_action_clip_value' must be a finite number, got nan"),
    ("final_action_clip_value", "high", "field 'final_action_clip_value' must be a finite number, got 'high'"),
    ("final_action_clip_value", -1.0, "field 'final_action_clip_value' must be > 0, got -1.0"),
    ("joint.config.rms_norm_eps", None, "field 'joint.config.rms_norm_eps' must be a finite number, got None"),
])
def test_convert_names_wrongly_typed_official_config_fields(drivemoe_reference, tmp_path, capsys, path, value, message) -> None:
    payload = json.loads((drivemoe_reference / "tiny_drivemoe" / "config.json").read_text())
    node = payload["resolved_merged_config"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    config = tmp_path / "config.json"
    config.write_text(json.dumps(payload))  # json writes NaN as the bare token json.loads accepts
    code, err = run_convert(drivemoe_reference / "tiny_drivemoe" / "official_checkpoint.pt", config, tmp_path / "out", capsys)
    assert code == 2 and message in err and str(config) in err
    assert not (tmp_path / "out").exists()


def test_official_yaml_float_written_without_a_dot_is_read(drivemoe_reference, tmp_path) -> None:
    """PyYAML (YAML 1.1) reads `1e-6` as a string; the authors' YAMLs write eps that way."""
    import yaml

    from model.convert import official_model_config

    resolved = json.loads((drivemoe_reference / "tiny_drivemoe" / "config.json").read_text())["resolved_merged_config"]
    text = yaml.safe_dump(resolved).replace("rms_norm_eps: 1.0e-06", "rms_norm_eps: 1e-6")
    assert "rms_norm_eps: 1e-6" in text
    (tmp_path / "model.yaml").write_text(text)
    assert official_model_config(tmp_path / "model.yaml").joint.rms_norm_eps == 1e-6


def test_convert_output_that_cannot_be_written(drivemoe_reference, tmp_path, capsys, monkeypatch) -> None:
    folder = drivemoe_reference / "tiny_drivemoe"
    (tmp_path / "a_file").write_text("x")
    code, err = run_convert(folder / "official_checkpoint.pt", folder / "config.json", tmp_path / "a_file" / "out", capsys)
    assert code == 2 and "cannot write the converted model to" in err and "a_file" in err

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    code, err = run_convert(folder / "official_checkpoint.pt", folder / "config.json", tmp_path / "out", capsys)
    assert code == 2 and "No space left on device" in err
    assert not list((tmp_path / "out").iterdir()) and not list(tmp_path.glob(".*partial"))


def test_cpu_thread_default_and_drivemoe_threads(monkeypatch, capsys) -> None:
    import torch

    from model.cli import default_threads

    assert [default_threads({}, cores) for cores in (1, 2, 4, 8, 64)] == [1, 1, 2, 4, 4]
    assert default_threads({"DRIVEMOE_THREADS": "3"}, 64) == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("DRIVEMOE_THREADS", bad)
        assert cli_main(["predict", "--model", "m", "--inputs", "i", "--out", "o"]) == 2
        assert f"DRIVEMOE_THREADS={bad!r}: expected a whole number >= 1" in capsys.readouterr().err
    monkeypatch.setenv("DRIVEMOE_THREADS", "2")
    cli_main(["predict", "--model", "m", "--inputs", "missing.safetensors", "--out", "o"])
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
