"""A config or statistics file that is not UTF-8 text gives one error naming the file, never a UnicodeDecodeError."""
from __future__ import annotations

import pytest

from agent.runtime.config import AgentConfigError, load_agent_config
from bench2drive_eval.seeds import SeedsError, write_derived_config
from model.checkpoints import CheckpointError, read_config
from model.convert import read_official_config, read_stats
from model.training.config import TrainConfigError, load_config

NOT_UTF8 = b"checkpoint: \xff\xfe weights\n"


def _bad_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_UTF8)
    return path


@pytest.mark.parametrize("name, read, error", [
    ("agent.yaml", load_agent_config, AgentConfigError),
    ("train.yaml", load_config, TrainConfigError),
    ("official.yaml", read_official_config, ValueError),
    ("stats.json", read_stats, ValueError),
    ("agent_seed.yaml", lambda path: write_derived_config(path, 1, path.with_name("out.yaml")), SeedsError),
])
def test_a_file_that_is_not_utf8_names_itself(tmp_path, name, read, error):
    path = _bad_file(tmp_path, name)
    with pytest.raises(error) as raised:
        read(path)
    assert not isinstance(raised.value, UnicodeDecodeError)
    assert str(path) in str(raised.value) and "not UTF-8 text (byte 12)" in str(raised.value)


def test_a_model_folder_config_that_is_not_utf8_names_itself(tmp_path):
    (tmp_path / "config.json").write_bytes(NOT_UTF8)
    with pytest.raises(CheckpointError, match=r"config\.json: not UTF-8 text \(byte 12\)"):
        read_config(tmp_path)
