"""The shared dict -> dataclass reader behind the model, training and agent configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

import pytest
from pydantic import Field

from model.dataclass_dicts import build_dataclass


class ToyError(ValueError):
    pass


@dataclass(frozen=True)
class Gains:
    kp: float
    ki: float
    window: int = 20

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"gains.window must be >= 1, got {self.window}")


@dataclass(frozen=True)
class Stats:
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class Inner:
    gains: Gains = Gains(5.0, 0.5, 10)
    mode: Literal["sparse", "dense"] = "sparse"
    label: str | None = None
    counts: tuple[int, ...] = (1, 2)
    betas: tuple[float, float] = (0.9, 0.999)
    ids: list[int] | None = None
    extra: Any = None


@dataclass(frozen=True)
class Root:
    name: str
    enabled: bool = True
    steps: int = 3
    rate: float = 0.5
    inner: Inner = Inner()
    stats: Stats = field(default_factory=Stats)


def build(values: Any, **options: Any) -> Root:
    return build_dataclass(Root, values, "cfg.yaml", error=ToyError, **options)


def message(values: Any) -> str:
    with pytest.raises(ToyError) as info:
        build(values)
    return str(info.value)


def test_nested_sections_keep_the_field_defaults_for_keys_left_out():
    root = build({"name": "a", "inner": {"gains": {"kp": 3}}})
    assert root.inner.gains == Gains(3.0, 0.5, 10)  # ki and window from the field default, not the class
    assert isinstance(root.inner.gains.kp, float)
    assert root.inner.mode == "sparse" and root.stats == Stats()
    assert build({"name": "a"}) == Root(name="a")


def test_lists_become_the_annotated_sequences_and_ints_become_floats():
    root = build({"name": "a", "rate": 2, "inner": {"counts": [4, 5, 6], "betas": [1, 0.5], "ids": (7, 8)}})
    assert root.rate == 2.0 and isinstance(root.rate, float)
    assert root.inner.counts == (4, 5, 6) and root.inner.betas == (1.0, 0.5)
    assert root.inner.ids == [7, 8] and isinstance(root.inner.ids, list)
    assert build({"name": "a", "inner": {"ids": None, "label": None}}).inner.ids is None


def test_unknown_keys_are_named_with_their_section_and_the_known_keys():
    text = message({"name": "a", "inner": {"gains": {"kp": 1, "kd": 2}}})
    assert text.startswith("cfg.yaml: unknown key 'kd' in section 'inner.gains' (known: ki, kp, window)")
    assert message({"name": "a", 1: "x"}).startswith("cfg.yaml: unknown key 1 (known: enabled, inner")
    assert message({"name": "a", "inner": {None: 1}}).startswith("cfg.yaml: unknown key 'None' in section 'inner'")
    text = message({"name": "a", "colour": 1, "size": 2})
    assert text.startswith("cfg.yaml: unknown keys 'colour', 'size' (known: enabled, inner, name, rate, stats, steps)")


@pytest.mark.parametrize("values, expected", [
    ({"name": 3}, "key 'name' must be a string, got 3"),
    ({"name": "a", "enabled": "yes"}, "key 'enabled' must be true or false, got 'yes'"),
    ({"name": "a", "steps": 2.5}, "key 'steps' must be an integer, got 2.5"),
    ({"name": "a", "steps": True}, "key 'steps' must be an integer, got True"),
    ({"name": "a", "rate": False}, "key 'rate' must be a number, got False"),
    ({"name": "a", "inner": {"gains": {"kp": "fast"}}}, "key 'inner.gains.kp' must be a number, got 'fast'"),
    ({"name": "a", "inner": {"mode": "wide"}}, "key 'inner.mode' must be one of 'sparse', 'dense', got 'wide'"),
    ({"name": "a", "inner": {"label": 4}}, "key 'inner.label' must be a string or null, got 4"),
    ({"name": "a", "inner": {"counts": [1, "x"]}}, "key 'inner.counts[1]' must be an integer, got 'x'"),
    ({"name": "a", "inner": {"counts": "12"}}, "key 'inner.counts' must be a list"),
    ({"name": "a", "inner": {"betas": [0.9]}}, "key 'inner.betas' must be a list of 2 items"),
    ({"name": "a", "inner": {"ids": [1, None]}}, "key 'inner.ids[1]' must be an integer, got None"),
    ({"name": "a", "inner": 5}, "section 'inner' must be a mapping (known keys: betas, counts, extra, gains"),
    ([1, 2], "the top level must be a mapping (known keys: enabled, inner, name"),
])
def test_wrong_types_name_the_key_path_and_the_value(values, expected):
    assert message(values).startswith(f"cfg.yaml: {expected}")


def test_a_number_written_as_yaml_text_gets_a_hint():
    assert "write 5.0e-5" in message({"name": "a", "rate": "5e-5"})
    assert "write 5.0e-5" not in message({"name": "a", "rate": "fast"})


def test_missing_required_keys_and_sections_are_named():
    assert message({}) == "cfg.yaml: key 'name' is required"

    @dataclass(frozen=True)
    class NeedsSection:
        gains: Gains

    with pytest.raises(ValueError, match=r"^src: section 'gains' is required$"):
        build_dataclass(NeedsSection, {}, "src")
    with pytest.raises(ValueError, match=r"^src: key 'gains.ki' is required$"):
        build_dataclass(NeedsSection, {"gains": {"kp": 1}}, "src")


def test_post_init_errors_get_the_source_and_the_readers_error_type():
    with pytest.raises(ToyError, match=r"^cfg.yaml: gains.window must be >= 1, got 0$"):
        build({"name": "a", "inner": {"gains": {"window": 0}}})


def test_custom_builders_read_their_type_and_get_the_key_path():
    seen = []

    def read_stats(values: Mapping[str, Any], where: str) -> Stats:
        seen.append((dict(values), where))
        return Stats(low=values["p01"], high=values["p99"])

    root = build({"name": "a", "stats": {"p01": -1.0, "p99": 2.0, "ignored": 0}}, builders={Stats: read_stats})
    assert root.stats == Stats(-1.0, 2.0)
    assert seen == [({"p01": -1.0, "p99": 2.0, "ignored": 0}, "cfg.yaml: stats")]
    with pytest.raises(ToyError, match=r"^cfg.yaml: section 'stats' must be a mapping, got \[1\]"):
        build({"name": "a", "stats": [1]}, builders={Stats: read_stats})


def test_instances_are_taken_as_they_are_and_unchecked_annotations_pass_through():
    gains = Gains(1.0, 2.0, 3)
    extra = object()
    root = build({"name": "a", "inner": {"gains": gains, "extra": extra}})
    assert root.inner.gains is gains and root.inner.extra is extra


def test_long_values_are_shortened_in_messages():
    text = message({"name": "a", "steps": "x" * 500})
    assert len(text) < 200 and text.endswith("...")


@dataclass(frozen=True)
class Strictness:
    count: int = 1
    flag: bool = False
    ratio: float = 0.5
    optional_ratio: float | None = None
    pair: tuple[float, float] = (0.0, 1.0)
    level: Literal[1, 2] = 1
    positive: Annotated[float, Field(gt=0)] = 1.0
    window: Annotated[int, Field(ge=1, le=50)] = 20
    either: int | str = 0
    copy: int = 0  # a key named like a pydantic BaseModel attribute
    json: str = ""


def strict_message(values: Any) -> str:
    with pytest.raises(ToyError) as info:
        build_dataclass(Strictness, values, "s.json", error=ToyError)
    return str(info.value)


@pytest.mark.parametrize("values, expected", [
    ({"count": 32.7}, "key 'count' must be an integer, got 32.7"),
    ({"count": 32.0}, "key 'count' must be an integer, got 32.0"),
    ({"count": True}, "key 'count' must be an integer, got True"),
    ({"count": "abc"}, "key 'count' must be an integer, got 'abc'"),
    ({"count": "3"}, "key 'count' must be an integer, got '3'"),
    ({"flag": 1}, "key 'flag' must be true or false, got 1"),
    ({"flag": "true"}, "key 'flag' must be true or false, got 'true'"),
    ({"ratio": "0.5"}, "key 'ratio' must be a number, got '0.5'"),
    ({"level": True}, "key 'level' must be one of 1, 2, got True"),
    ({"level": 1.0}, "key 'level' must be one of 1, 2, got 1.0"),
    ({"either": 2.5}, "key 'either' must be an integer or a string, got 2.5"),
    ({"copy": "x"}, "key 'copy' must be an integer, got 'x'"),
])
def test_no_value_is_coerced_into_another_type(values, expected):
    assert strict_message(values).startswith(f"s.json: {expected}")


@pytest.mark.parametrize("key, value", [
    ("ratio", float("nan")), ("ratio", float("inf")), ("ratio", float("-inf")),
    ("optional_ratio", float("nan")), ("positive", float("inf")),
])
def test_nan_and_inf_are_rejected_for_every_float_field(key, value):
    assert strict_message({key: value}) == f"s.json: key {key!r} must be a finite number, got {value!r}"


def test_nan_inside_a_list_names_the_item():
    assert strict_message({"pair": [0.0, float("nan")]}) == "s.json: key 'pair[1]' must be a finite number, got nan"


@pytest.mark.parametrize("values, expected", [
    ({"positive": 0.0}, "key 'positive' must be greater than 0, got 0.0"),
    ({"positive": -3}, "key 'positive' must be greater than 0, got -3"),
    ({"window": 0}, "key 'window' must be greater than or equal to 1, got 0"),
    ({"window": 51}, "key 'window' must be less than or equal to 50, got 51"),
])
def test_annotated_field_constraints_are_enforced(values, expected):
    assert strict_message(values) == f"s.json: {expected}"


def test_strict_fields_keep_their_valid_values():
    config = build_dataclass(Strictness, {"count": 4, "flag": True, "ratio": 2, "optional_ratio": None, "pair": [1, 2],
                                           "level": 2, "positive": 0.1, "window": 50, "either": "x", "copy": 3,
                                           "json": "j"}, "s.json")
    assert config == Strictness(4, True, 2.0, None, (1.0, 2.0), 2, 0.1, 50, "x", 3, "j")
    assert isinstance(config.ratio, float) and isinstance(config.pair[0], float)


def test_a_yaml_file_with_nan_is_rejected_with_the_file_and_field(tmp_path):
    from agent.runtime.config import AgentConfigError, load_agent_config

    for text, field_path in [("controller:\n  max_speed: .nan\n", "controller.max_speed"),
                             ("controller:\n  speed_pid: {kp: .inf}\n", "controller.speed_pid.kp"),
                             ("planner:\n  min_distance: -.inf\n", "planner.min_distance")]:
        path = tmp_path / "agent.yaml"
        path.write_text("checkpoint: model\n" + text, encoding="utf-8")
        with pytest.raises(AgentConfigError) as info:
            load_agent_config(path)
        assert str(info.value).startswith(f"agent config {path}: key {field_path!r} must be a finite number, got ")


def test_model_config_json_with_nan_or_a_wrong_type_names_the_field():
    from model.config import ModelConfig

    good = ModelConfig.preset("tiny-drivemoe")
    assert ModelConfig.from_dict(good.to_dict()) == good
    for section, key, value, expected in [
        ("flow", "final_action_clip", float("nan"), "must be a finite number, got nan"),
        ("flow", "final_action_clip", 0.0, "must be greater than 0, got 0.0"),
        ("vision", "hidden_size", "abc", "must be an integer, got 'abc'"),
        ("vision", "hidden_size", 32.7, "must be an integer, got 32.7"),
        ("vision", "hidden_size", True, "must be an integer, got True"),
    ]:
        data = good.to_dict()
        data[section][key] = value
        with pytest.raises(ValueError) as info:
            ModelConfig.from_dict(data, source="m/config.json")
        assert str(info.value) == f"m/config.json: key '{section}.{key}' {expected}"


@pytest.mark.parametrize("section, key, value, expected", [
    ("run", "save_every_steps", 0, "must be greater than or equal to 1, got 0"),
    ("run", "validate_every_steps", 0, "must be greater than or equal to 1, got 0"),
    ("optim", "vlm_lr", float("nan"), "must be a finite number, got nan"),
    ("optim", "warmup_steps", 1.5, "must be an integer, got 1.5"),
    ("data", "max_train_windows", 0, "must be greater than or equal to 1, got 0"),
])
def test_training_config_fields_that_would_crash_later_are_rejected_up_front(section, key, value, expected):
    from model.training.config import TrainConfigError, config_from_dict

    data = {"data": {"index": "prepared"}, section: {key: value}}
    if section == "data":
        data["data"][key] = value
    with pytest.raises(TrainConfigError) as info:
        config_from_dict(data, source="train.yaml")
    assert str(info.value) == f"train.yaml: key '{section}.{key}' {expected}"
