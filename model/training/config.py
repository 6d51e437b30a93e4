"""Typed training configuration (frozen dataclasses) and its YAML file format.

A YAML file has the sections `model`, `data`, `optim`, `run` with the fields below; unknown
keys are errors naming the file and the key. `configs/train/*.yaml` hold the authors' settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping

import yaml
from pydantic import Field

from bench2drive_eval.jsonio import read_text_file
from model.dataclass_dicts import build_dataclass
from model.errors import DriveMoEError


class TrainConfigError(DriveMoEError):
    """A training config file or field is invalid."""


@dataclass(frozen=True)
class ModelSection:
    preset: str = "drivemoe-base"  # model.config preset (drivemoe-base, drivepi0-base, tiny-*)
    stage: int = 1  # DriveMoE stage 1 (ground-truth camera) or 2 (learned camera, all views)
    # Where the weights start: "paligemma" (an HF PaliGemma folder), "pretrained" (a folder written by
    # save_pretrained, e.g. the stage-1 export), or "random".
    init: str = "random"
    init_path: str | None = None
    # Route the action MoE to the scenario label's expert while training (the paper's stage 1 variant).
    ground_truth_expert_selection: bool = False
    activation_checkpointing: bool = False
    compile: bool = False
    # Token ids of "<bos>predict trajectory\n"; None: from the model config or the PaliGemma tokenizer.
    prompt_token_ids: list[int] | None = None
    camera_router_dropout: float | None = None  # None: the model config's (0.1)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise TrainConfigError(f"model.stage must be 1 or 2, got {self.stage!r}")
        if self.init not in ("paligemma", "pretrained", "random"):
            raise TrainConfigError(f"model.init must be paligemma, pretrained or random, got {self.init!r}")
        if self.init != "random" and not self.init_path:
            raise TrainConfigError(f"model.init = {self.init!r} needs model.init_path")


@dataclass(frozen=True)
class DataSection:
    index: str = ""  # folder written by `drivemoe prepare-data`
    root: str | None = None  # override of the dataset root recorded in the index
    # "index": the index's statistics.json; "model": the model config's (authors') statistics; or a file path.
    statistics: str = "index"
    image_cache: str | None = None  # folder of pre-resized uint8 images (filled on first use)
    num_workers: int = 8
    pin_memory: bool = True
    prefetch_factor: Annotated[int, Field(ge=1)] = 4
    max_train_windows: Annotated[int, Field(ge=1)] | None = None  # use only the first N training windows (debugging, tests)

    def __post_init__(self) -> None:
        if not self.index:
            raise TrainConfigError("data.index is required (the folder written by `drivemoe prepare-data`)")
        if self.num_workers < 0:
            raise TrainConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class OptimSection:
    epochs: float = 12.0
    max_steps: int | None = None  # optimiser steps; overrides epochs when set
    global_batch_size: int = 128
    per_device_batch_size: int = 8
    action_lr: Annotated[float, Field(gt=0)] = 5e-5
    vlm_lr: Annotated[float, Field(gt=0)] = 5e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 200
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0  # the cosine ends at min_lr_ratio * lr
    optimizer: str = "adamw"  # "adamw" or "adamw8bit" (bitsandbytes, CUDA only)
    precision: str = "bf16"  # autocast dtype on CUDA: "bf16" or "fp32"
    cpu_autocast: bool = False  # also autocast to bf16 on CPU (tests of the bf16 path; CPU bf16 is slow)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.global_batch_size < 1 or self.per_device_batch_size < 1:
            raise TrainConfigError("optim.global_batch_size and optim.per_device_batch_size must be >= 1")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise TrainConfigError(f"optim.optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.precision not in ("bf16", "fp32"):
            raise TrainConfigError(f"optim.precision must be bf16 or fp32, got {self.precision!r}")
        if self.max_steps is None and self.epochs <= 0:
            raise TrainConfigError(f"optim.epochs must be > 0, got {self.epochs}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise TrainConfigError("optim.warmup_steps and optim.grad_clip must be >= 0")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimiser step so that the global batch is exactly global_batch_size."""
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise TrainConfigError(
                f"optim.global_batch_size {self.global_batch_size} is not a multiple of "
                f"per_device_batch_size {self.per_device_batch_size} x {world_size} processes"
            )
        return self.global_batch_size // per_step


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/drivemoe"
    seed: int = 42
    save_every_steps: Annotated[int, Field(ge=1)] = 1000
    keep_last: int = 2
    validate_every_steps: Annotated[int, Field(ge=1)] = 1000
    validation_batches: Annotated[int, Field(ge=0)] | None = None  # None: the whole validation split
    log_every_steps: int = 10
    tensorboard: bool = True  # used only if the tensorboard package is installed
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    # DDP's gradient_as_bucket_view: .grad tensors are views into DDP's all-reduce buckets instead of a
    # second copy of every gradient (saves one fp32 gradient copy per device); off: DDP's default.
    ddp_bucket_view: bool = True


@dataclass(frozen=True)
class TrainConfig:
    data: DataSection
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["optim"]["betas"] = list(self.optim.betas)
        return out

    def replace(self, section: str, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig; errors name the source, the section and the key."""
    if isinstance(data, Mapping):  # a YAML section with every key commented out reads as null
        data = {name: {} if values is None else values for name, values in data.items()}
    return build_dataclass(TrainConfig, data, source, error=TrainConfigError)


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config; `overrides` maps 'section.key' to a value (from the CLI)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} not found")
    text = read_text_file(path, TrainConfigError, f"training config {path}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise TrainConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise TrainConfigError(f"override {dotted!r} must be section.key")
        if data.get(section) is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise TrainConfigError(f"{path}: section {section!r} must be a mapping")
        data[section][key] = value
    return config_from_dict(data, source=str(path))


def save_config(config: TrainConfig, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
