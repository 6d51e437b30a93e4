"""Agent config: YAML loading, presets, precedence, clear errors, the evaluator's config+save string."""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime.config import AgentConfigError, load_agent_config, parse_agent_config_argument

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_checkpoint_and_device_alone_are_a_complete_config(tmp_path):
    config = load_agent_config(write(tmp_path, "checkpoint: model_dir\ndevice: cpu\n"))
    assert config.device == "cpu"
    assert config.checkpoint == str((tmp_path / "model_dir").resolve())  # relative to the YAML
    assert config.preset == "default" and config.inference_interval == 2
    assert not config.test_time_augmentation and config.seeded_noise
    assert config.history_mode == "current_10hz" and config.desired_speed_mode == "half_second"
    assert config.controller.creep.enabled and config.planner.min_distance == 7.5
    assert config.inference_start == "first_tick" and config.theta_wrap and config.jpeg_channels == "rgb"
    assert config.planner.plan == "sparse" and config.controller.aim_origin == "first_waypoint"


def test_official_preset_sets_the_authors_behaviour_and_yaml_overrides_it(tmp_path):
    config = load_agent_config(write(tmp_path, "checkpoint: /m\npreset: official\n"))
    assert config.test_time_augmentation and not config.seeded_noise
    assert config.history_mode == "official_offset" and config.desired_speed_mode == "official"
    # closed_loop.yaml has use_bf16: False: the authors' agent runs float32
    assert not config.controller.creep.enabled and config.dtype == "float32"
    assert config.inference_start == "after_initial_brake" and not config.theta_wrap
    assert config.jpeg_channels == "authors_swapped" and config.planner.plan == "dense"
    assert config.controller.aim_origin == "ego" and config.controller.min_aim_norm == 0.0
    overridden = load_agent_config(
        write(tmp_path, "checkpoint: /m\npreset: official\nseeded_noise: true\ncontroller:\n  speed_pid:\n    kp: 3\n")
    )
    assert overridden.seeded_noise and overridden.test_time_augmentation
    assert overridden.controller.speed_pid.kp == 3.0 and overridden.controller.speed_pid.ki == 0.5


@pytest.mark.parametrize(
    "text, words",
    [
        ("device: cpu\n", ["checkpoint", "missing"]),
        ("checkpoint: /m\ncontroler: {}\n", ["controler"]),
        ("checkpoint: /m\ncontroller:\n  turn_pid:\n    kp: fast\n", ["controller.turn_pid.kp", "fast"]),
        ("checkpoint: /m\npreset: fastest\n", ["preset", "fastest"]),
        ("checkpoint: /m\ninference_interval: 0\n", ["inference_interval"]),
        ("checkpoint: /m\nsave:\n  counterfactual_every: -1\n", ["save.counterfactual_every", ">= 0", "-1"]),
        ("checkpoint: /m\nsave:\n  image_every: -5\n", ["save.image_every", "-5"]),
        ("checkpoint: /m\nplanner:\n  min_distance: 30\n", ["min_distance"]),
        ("checkpoint: [unclosed\n", ["not valid YAML"]),
        ("", ["empty"]),
    ],
)
def test_bad_configs_fail_with_one_clear_message_naming_file_and_field(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(AgentConfigError) as info:
        load_agent_config(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(AgentConfigError, match="nope.yaml: file not found"):
        load_agent_config(tmp_path / "nope.yaml")


def test_evaluator_argument_takes_config_before_first_plus_and_last_save_name():
    assert parse_agent_config_argument("cfg.yaml") == ("cfg.yaml", None)
    assert parse_agent_config_argument("cfg.yaml+RouteScenario_1_rep0") == ("cfg.yaml", "RouteScenario_1_rep0")
    # on route k the evaluator has appended k save names
    assert parse_agent_config_argument("c.yaml+RouteScenario_1+RouteScenario_2+RouteScenario_3") == (
        "c.yaml",
        "RouteScenario_3",
    )


@pytest.mark.parametrize("name", ["default.yaml", "official.yaml"])
def test_shipped_configs_load(name):
    config = load_agent_config(REPO / "configs" / "agent" / name)
    assert config.preset == name.removesuffix(".yaml")


def test_preset_switches_list_every_switch_with_its_value():
    from agent.runtime.config import PRESET_VALUES, agent_config_from_dict, preset_switches

    assert set(PRESET_VALUES["default"]) == set(PRESET_VALUES["official"])  # each switch in both presets
    config = agent_config_from_dict({"checkpoint": "/m", "preset": "official", "planner": {"plan": "sparse"}})
    header = preset_switches(config)
    assert header["preset"] == "official" and header["switches"]["planner"] == {"plan": "sparse"}  # YAML wins
    assert header["switches"]["controller"]["creep"] == {"enabled": False}
    assert set(header["switches"]) == set(PRESET_VALUES["official"])


@pytest.mark.parametrize("field, value, words", [
    ("inference_start", "later", ["inference_start", "later"]),
    ("jpeg_channels", "bgr", ["jpeg_channels", "bgr"]),
    ("controller", {"aim_origin": "wp3"}, ["controller.aim_origin", "wp3"]),
    ("controller", {"steer_standstill_speed": float("nan")}, ["controller.steer_standstill_speed", "nan"]),
    ("controller", {"min_aim_norm": -1.0}, ["controller.min_aim_norm", "-1.0"]),
])
def test_new_switches_are_validated(field, value, words):
    from agent.runtime.config import agent_config_from_dict

    with pytest.raises(AgentConfigError) as error:
        agent_config_from_dict({"checkpoint": "/m", field: value}, source="cfg.yaml")
    assert all(word in str(error.value) for word in words + ["cfg.yaml"])
