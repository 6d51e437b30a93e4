"""`drivemoe train --config CFG.yaml`: DriveMoE stage 1 / stage 2 and Drive-pi0 from one loop.

Also runs under `torchrun` (one process per GPU; gloo on CPU): the global batch is fixed by the
config, each process takes its share of every micro-batch, gradients are averaged by DDP and
accumulated to reach the global batch. Everything random per sample (flow noise x0, flow time t,
Gumbel noise of stage 2) is drawn from a generator seeded by (seed, epoch, window), so the result
does not depend on how many processes share the batch, and a resumed run replays the same draws.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.action_moe import GemmaMLP
from model.config import ModelConfig
from model.drivemoe import DriveMoE
from model.image_preprocessing import to_pixel_values
from model.normalization import NormalizationStats
from model.prompt import build_prompt_tokens
from model.training.checkpointing import (
    LoopPosition,
    apply_training_checkpoint,
    capture_rng_state,
    export_final,
    list_checkpoints,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from model.training.config import TrainConfig, TrainConfigError, load_config, save_config
from model.training.dataset import SampleSpec, WindowDataset
from model.training.index import TRAIN, VALIDATION, read_index
from model.training.statistics import read_statistics
from model.training.validation import camera_report, displacement_errors, skill_report
from model.vision import SiglipEncoderLayer

# Parameters of these modules form the "VLM side" optimiser; everything else is the "action side"
# (action/proprio streams, action encoder/decoder, action router).
VLM_PREFIXES = ("embed_tokens.", "vision_tower.", "multi_modal_projector.", "joint_model.mixtures.vlm.",
                "camera_router.", "view_embeddings.")
METRICS_FILE = "metrics.jsonl"


# ---- distributed ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_choice: str) -> Distributed:
    """Use an initialised process group, or start one from torchrun's variables, or run alone."""
    cuda = torch.cuda.is_available() and device_choice in ("auto", "cuda")
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("run.device = cuda but no CUDA device is available")
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world, local = 0, 1, 0
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Distributed(rank=rank, world_size=world, device=device)


def _all_reduce(tensor: torch.Tensor, ddp: Distributed) -> torch.Tensor:
    """Sum over processes, in place. NCCL only reduces device tensors: a CPU tensor goes through the device."""
    if ddp.active:
        if tensor.device != ddp.device:
            on_device = tensor.to(ddp.device)
            dist.all_reduce(on_device)
            tensor.copy_(on_device)
        else:
            dist.all_reduce(tensor)
    return tensor


class GradientSync:
    """DDP's wrapper and the gradient bookkeeping of one optimiser step.

    With `bucket_view` (DDP's gradient_as_bucket_view) every .grad is a view into DDP's all-reduce buckets,
    so gradients take no memory beside the buckets. That holds only while they exist before the first step
    and are zeroed in place (zero_grad(set_to_none=False)): a None gradient is allocated afresh by the next
    backward, and DDP leaves it alone until the last micro-batch of the step (no_sync). Zeroed in place, a
    parameter that no process used in a step would keep a zero gradient that AdamW still steps (momentum);
    drop_unused sets those to None, as set_to_none=True would. Such a parameter, used again later, has a
    tensor of its own until DDP copies it into its bucket at the end of that step. Without DDP, or with
    `bucket_view` off, gradients are simply set to None after each step.
    """

    def __init__(self, ddp: Distributed, params: list[nn.Parameter], bucket_view: bool) -> None:
        self.ddp = ddp
        self.params = params
        self.bucket_view = bucket_view and ddp.active
        self.module: nn.parallel.DistributedDataParallel | None = None
        self._used = bytearray(len(params))
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        if self.bucket_view:
            self._hooks = [p.register_post_accumulate_grad_hook(functools.partial(self._mark_used, i))
                           for i, p in enumerate(params)]

    def _mark_used(self, index: int, _parameter: torch.Tensor) -> None:
        self._used[index] = 1

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.ddp.active:
            return module
        if self.bucket_view:
            # DDP turns gradients that exist when it builds its buckets into views; left None, the first
            # step would allocate them all next to the buckets (a step's peak without the bucket view).
            # The zeros are freed as soon as DDP has copied them, before any activation exists.
            for parameter in self.params:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
        device = self.ddp.device
        self.module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # unrouted experts and unselected views get no gradient
            gradient_as_bucket_view=self.bucket_view)
        return self.module

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are all-reduced only on the last micro-batch of an optimiser step."""
        return self.module.no_sync() if self.module is not None and not last else contextlib.nullcontext()

    def drop_unused(self) -> None:
        """After the last micro-batch: no gradient for parameters that no process used in this step."""
        if not self.bucket_view:
            return
        used = _all_reduce(torch.tensor(list(self._used), dtype=torch.int32), self.ddp)
        for parameter, count in zip(self.params, used.tolist()):
            if count == 0:
                parameter.grad = None
        self._used[:] = bytes(len(self._used))

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=not self.bucket_view)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


# ---- model -------------------------------------------------------------------------------------------
def _statistics(config: TrainConfig, index_dir: Path, model_config: ModelConfig) -> NormalizationStats:
    choice = config.data.statistics
    if choice == "model":
        return model_config.stats
    path = index_dir / "statistics.json" if choice == "index" else Path(choice)
    return NormalizationStats.from_dict(read_statistics(path), source=str(path))


def build_model(config: TrainConfig, index_dir: Path) -> DriveMoE:
    """The network with its starting weights, its config carrying the statistics it is trained with."""
    m = config.model
    if m.init == "pretrained":
        from model.checkpoints import load_pretrained  # model-core's reader of the exported format

        model, model_config = load_pretrained(m.init_path, dtype=torch.float32)
        if config.data.statistics != "model":
            stats = _statistics(config, index_dir, model_config)
            if stats != model_config.stats:
                raise TrainConfigError(
                    f"data.statistics {config.data.statistics!r} differ from those stored with {m.init_path}; "
                    "set data.statistics: model to continue with the stored ones"
                )
    else:
        model_config = ModelConfig.preset(m.preset)
    changes: dict[str, Any] = {"stats": _statistics(config, index_dir, model_config)}
    if model_config.use_action_moe and m.ground_truth_expert_selection != model_config.action_moe.ground_truth_expert_selection:
        changes["action_moe"] = dataclasses.replace(model_config.action_moe, ground_truth_expert_selection=m.ground_truth_expert_selection)
    if m.camera_router_dropout is not None:
        changes["camera_router"] = dataclasses.replace(model_config.camera_router, dropout=m.camera_router_dropout)
    prompt_ids = tuple(m.prompt_token_ids) if m.prompt_token_ids else None
    if prompt_ids is None and m.init == "paligemma":
        from model.prompt import read_tokenizer_prompt

        prompt_ids = read_tokenizer_prompt(m.init_path).prompt_ids
    if prompt_ids is not None:
        changes["sequence"] = dataclasses.replace(model_config.sequence, prompt_token_ids=prompt_ids)
    model_config = dataclasses.replace(model_config, **changes)
    if model_config.sequence.prompt_token_ids is None:
        raise TrainConfigError(
            "no prompt token ids: set model.prompt_token_ids, or start from a PaliGemma folder with its tokenizer"
        )
    if m.init == "pretrained":
        state = model.state_dict()
        model = DriveMoE(model_config)
        model.load_state_dict(state, strict=True)
    else:
        model = DriveMoE(model_config)
        if m.init == "paligemma":
            from model.paligemma_import import load_paligemma_weights

            print(load_paligemma_weights(model, m.init_path).summary())
    if model_config.use_camera_router and m.stage not in (1, 2):
        raise TrainConfigError(f"model.stage must be 1 or 2, got {m.stage}")
    return model.float()


CHECKPOINTED_MODULES: tuple[type[nn.Module], ...] = (SiglipEncoderLayer, GemmaMLP)


def _checkpointed_call(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Make every SigLIP encoder layer and every Gemma MLP (dense and expert) recompute its
    activations in the backward pass instead of storing them: these hold most of the activation
    memory (the 16384-wide Gemma MLP, 27 SigLIP layers per image). Costs about one extra forward
    of those modules. Works on the module instances; the weights and state_dict are unchanged.
    Returns the number of modules wrapped."""
    count = 0
    for module in model.modules():
        if isinstance(module, CHECKPOINTED_MODULES) and "_forward_without_checkpoint" not in module.__dict__:
            module.__dict__["_forward_without_checkpoint"] = module.forward
            module.forward = functools.partial(_checkpointed_call, module.__dict__["_forward_without_checkpoint"])
            count += 1
    return count


class TrainForward(nn.Module):
    """Makes forward_train the module's forward, so that DDP's gradient hooks see it."""

    def __init__(self, model: DriveMoE, stage: int) -> None:
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch: dict[str, torch.Tensor], gumbel_noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return self.model.forward_train(batch, self.stage, gumbel_noise=gumbel_noise)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(action side, VLM side) trainable parameters; tied parameters appear once."""
    action, vlm, seen = [], [], set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        (vlm if name.startswith(VLM_PREFIXES) else action).append(parameter)
    return action, vlm


def make_optimizer(params: list[nn.Parameter], lr: float, config: TrainConfig) -> torch.optim.Optimizer:
    o = config.optim
    if o.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainConfigError("optim.optimizer = adamw8bit needs the bitsandbytes package (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR factor: linear warm-up from 0 to 1 over warmup_steps, then cosine down to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ---- data -------------------------------------------------------------------------------------------
def sample_spec(model_config: ModelConfig, stage: int, validation: bool) -> SampleSpec:
    if not model_config.use_camera_router:
        return SampleSpec(model_config.vision.image_size, 2, "front_pair")
    decode = "all" if validation or stage == 2 else "labelled"
    return SampleSpec(model_config.vision.image_size, model_config.num_input_images, decode)


@dataclass(frozen=True)
class BatchPlan:
    """Which dataset positions each process reads at each micro-batch of each optimiser step."""

    num_samples: int
    global_batch: int
    micro_batch: int
    accumulation: int
    world_size: int
    rank: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def micro_batches(self, epoch: int, first_step: int) -> Iterator[list[int]]:
        """Micro-batches of this rank from optimiser step `first_step` of the epoch to its end.
        Chunk c of a global batch goes to micro-batch c // world_size of rank c % world_size."""
        order = self.epoch_order(epoch)
        for step in range(first_step, self.steps_per_epoch):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            for micro in range(self.accumulation):
                chunk = micro * self.world_size + self.rank
                yield batch[chunk * self.micro_batch : (chunk + 1) * self.micro_batch].tolist()


def sample_seed(seed: int, epoch: int, row: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{row}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def per_sample_noise(rows: torch.Tensor, epoch: int, seed: int, model_config: ModelConfig) -> dict[str, torch.Tensor]:
    """x0 [B, H, A], t [B] (the authors' Beta time law) and Gumbel noise [B, 5], one generator per window."""
    f = model_config.flow
    x0, t, gumbel = [], [], []
    for row in rows.tolist():
        g = torch.Generator().manual_seed(sample_seed(seed, epoch, int(row)))
        x0.append(torch.randn((f.horizon, f.action_dim), generator=g))
        z = torch.rand((), generator=g).pow(1.0 / f.time_beta_alpha)  # Beta(a, 1) by inversion
        if f.time_beta_beta != 1.0:
            raise TrainConfigError("flow.time_beta_beta must be 1 (the authors' Beta(1.5, 1)) for seeded time sampling")
        t.append(f.time_max * (1.0 - z))
        u = torch.rand(model_config.camera_router.num_candidates, generator=g).clamp_min(1e-20)
        gumbel.append(-torch.log(-torch.log(u)))
    return {"x0": torch.stack(x0), "t": torch.stack(t).float(), "gumbel": torch.stack(gumbel)}


def to_model_batch(batch: dict[str, torch.Tensor], prompt: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                   noise: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    b = batch["images"].shape[0]
    input_ids, attention_mask = prompt
    out = {
        "pixel_values": to_pixel_values(batch["images"].to(device, non_blocking=True)),
        "input_ids": input_ids.to(device).expand(b, -1),
        "attention_mask": attention_mask.to(device).expand(b, -1),
        "proprio": batch["proprio"].to(device, non_blocking=True),
        "goal": batch["goal"].to(device, non_blocking=True),
        "actions": batch["actions"].to(device, non_blocking=True),
        "camera_ids": batch["camera_id"].to(device, non_blocking=True),
        "scenario_ids": batch["scenario_id"].to(device, non_blocking=True),
    }
    if noise is not None:
        out["x0"] = noise["x0"].to(device)
        out["t"] = noise["t"].to(device)
    return out


def prompt_tensors(model_config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    s = model_config.sequence
    ids, mask = build_prompt_tokens(s.prompt_token_ids, model_config.num_image_tokens, model_config.max_seq_len,
                                    s.image_token_id, s.pad_token_id)
    return torch.from_numpy(ids).unsqueeze(0), torch.from_numpy(mask).unsqueeze(0)


def make_loader(dataset: WindowDataset, batches: Iterator[list[int]] | list[list[int]], config: TrainConfig,
                device: torch.device) -> DataLoader:
    d = config.data
    return DataLoader(
        dataset,
        batch_sampler=list(batches),
        num_workers=d.num_workers,
        pin_memory=d.pin_memory and device.type == "cuda",
        prefetch_factor=d.prefetch_factor if d.num_workers > 0 else None,
        # its own generator: creating loader iterators must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(config.run.seed),
    )


# ---- validation -------------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: DriveMoE, dataset: WindowDataset, config: TrainConfig, ddp: Distributed,
             prompt: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Flow loss (fixed noise per window), ADE/FDE of sampled trajectories (metres), router reports."""
    was_training = model.training
    model.eval()
    mc = model.config
    positions = list(range(ddp.rank, len(dataset), ddp.world_size))
    size = config.optim.per_device_batch_size
    batches = [positions[i : i + size] for i in range(0, len(positions), size)]
    if config.run.validation_batches is not None:
        batches = batches[: config.run.validation_batches]
    sums = torch.zeros(4, dtype=torch.float64)  # flow loss sum, ADE sum, FDE sum, count
    cam_truth, cam_pred, skill_truth, skill_pred = [], [], [], []
    loader = make_loader(dataset, batches, config, ddp.device) if batches else []
    for batch in loader:
        noise = per_sample_noise(batch["row"], -1, config.run.seed, mc)
        inputs = to_model_batch(batch, prompt, ddp.device, noise)
        with _autocast(config, ddp.device):
            out = model.forward_train(inputs, config.model.stage)
            sampled = model.infer_action(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
                                         inputs["proprio"], goal=inputs["goal"] if mc.use_camera_router else None,
                                         noise=inputs["x0"])
        n = inputs["actions"].shape[0]
        predicted = mc.stats.denormalize_trajectory(sampled["final_action"].float()).cpu().numpy()
        truth = mc.stats.denormalize_trajectory(inputs["actions"].float()).cpu().numpy()
        ade, fde = displacement_errors(predicted, truth)
        sums += torch.tensor([float(out["flow_matching_loss"]) * n, ade * n, fde * n, n], dtype=torch.float64)
        if "camera_logits" in out:
            cam_truth.append(batch["camera_id"].numpy())
            cam_pred.append(sampled["selected_view"].cpu().numpy())
        if "action_router_probs" in sampled:
            # the routing the policy uses while driving: mean router probability over the denoising steps
            skill_truth.append(batch["scenario_id"].numpy())
            skill_pred.append(sampled["action_router_probs"].float().mean(0).argmax(-1).cpu().numpy())
    _all_reduce(sums, ddp)
    count = max(1.0, float(sums[3]))
    result: dict[str, Any] = {"val_flow_loss": float(sums[0]) / count, "val_ade_m": float(sums[1]) / count,
                              "val_fde_m": float(sums[2]) / count, "val_samples": int(sums[3])}
    for name, truth, pred, report in (("camera_router", cam_truth, cam_pred, camera_report),
                                      ("action_router", skill_truth, skill_pred, skill_report)):
        if not truth and not (mc.use_camera_router if name == "camera_router" else mc.use_action_moe):
            continue
        rep = report(np.concatenate(truth) if truth else np.zeros(0), np.concatenate(pred) if pred else np.zeros(0))
        confusion = torch.from_numpy(rep.confusion)
        _all_reduce(confusion, ddp)
        rep = dataclasses.replace(rep, confusion=confusion.numpy())
        result[name] = rep.to_dict()
        result[f"{name}_table"] = rep.table()
    model.train(was_training)
    return result


def _autocast(config: TrainConfig, device: torch.device):
    o = config.optim
    enabled = o.precision == "bf16" and (device.type == "cuda" or (device.type == "cpu" and o.cpu_autocast))
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# ---- the loop ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    losses: list[dict[str, float]] = field(default_factory=list)  # per optimiser step done in this call
    final_dir: Path | None = None
    validation: dict[str, Any] | None = None
    last_step: int = 0


def _open_tensorboard(config: TrainConfig, ddp: Distributed):
    if not (config.run.tensorboard and ddp.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(Path(config.run.out_dir) / "tensorboard"))


def _resume_payload(out_dir: Path, resume: bool | str | Path) -> tuple[dict | None, str]:
    if resume is False or resume is None:
        return None, ""
    if resume is True or resume == "latest":
        found = list_checkpoints(out_dir)
        if not found:
            return None, ""
        path = found[-1]
    else:
        path = Path(resume)
    return load_training_checkpoint(path), str(path)


def _trim_metrics(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def run_training(config: TrainConfig, resume: bool | str | Path = False, stop_after_steps: int | None = None) -> TrainResult:
    """Train as configured. `resume`: False, True/"latest" (newest checkpoint in run.out_dir, if any)
    or a checkpoint path. `stop_after_steps`: stop once this many optimiser steps are done in total
    (as if interrupted; the final export is then skipped)."""
    ddp = setup_distributed(config.run.device)
    out_dir = Path(config.run.out_dir)
    index_dir = Path(config.data.index)
    index = read_index(index_dir, Path(config.data.root) if config.data.root else None)
    torch.manual_seed(config.run.seed)
    model = build_model(config, index_dir).to(ddp.device)
    mc = model.config
    stage = config.model.stage
    if mc.use_camera_router and not index.has_camera_labels:
        raise TrainConfigError(
            f"index {index_dir} was prepared without --camera-labels; DriveMoE's camera router needs them"
        )
    if config.model.activation_checkpointing:
        wrapped = enable_activation_checkpointing(model)
        if ddp.is_main:
            print(f"activation checkpointing: {wrapped} modules recompute their activations in the backward pass")
    model.train()

    train_rows = index.rows(TRAIN)
    if config.data.max_train_windows is not None:
        train_rows = train_rows[: config.data.max_train_windows]
    train_set = WindowDataset(index, train_rows, sample_spec(mc, stage, False), mc.stats,
                              Path(config.data.image_cache) if config.data.image_cache else None)
    val_set = WindowDataset(index, index.rows(VALIDATION), sample_spec(mc, stage, True), mc.stats,
                            Path(config.data.image_cache) if config.data.image_cache else None)
    accumulation = config.optim.accumulation_steps(ddp.world_size)
    plan = BatchPlan(len(train_set), config.optim.global_batch_size, config.optim.per_device_batch_size, accumulation,
                     ddp.world_size, ddp.rank, config.run.seed)
    if plan.steps_per_epoch == 0:
        raise TrainConfigError(
            f"{len(train_set)} training windows are fewer than one global batch ({config.optim.global_batch_size})"
        )
    total_steps = config.optim.max_steps or int(math.ceil(config.optim.epochs * plan.steps_per_epoch))

    action_params, vlm_params = split_parameters(model)
    optimizers = {"action": make_optimizer(action_params, config.optim.action_lr, config)}
    if vlm_params:
        optimizers["vlm"] = make_optimizer(vlm_params, config.optim.vlm_lr, config)
    schedule = warmup_cosine(config.optim.warmup_steps, total_steps, config.optim.min_lr_ratio)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()}

    payload, source = _resume_payload(out_dir, resume)
    position = LoopPosition()
    if payload is not None:
        position = apply_training_checkpoint(payload, model, optimizers, schedulers, source)
        restore_rng_state(payload["rng"])
        if ddp.is_main:
            print(f"resumed from {source} at step {position.step}")
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "train_config.yaml")
        _trim_metrics(out_dir / METRICS_FILE, position.step)

    params = action_params + vlm_params
    sync = GradientSync(ddp, params, config.run.ddp_bucket_view)
    forward_module = sync.wrap(TrainForward(model, stage))
    if config.model.compile:
        forward_module = torch.compile(forward_module)

    prompt = prompt_tensors(mc)
    writer = _open_tensorboard(config, ddp)
    result = TrainResult(last_step=position.step)
    end_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    progress = tqdm(total=total_steps, initial=position.step, desc=f"train {mc.name} stage {stage}", unit="step",
                    disable=not ddp.is_main)
    step = position.step
    while step < end_step:
        epoch, first = divmod(step, plan.steps_per_epoch)
        loader = make_loader(train_set, plan.micro_batches(epoch, first), config, ddp.device)
        micro = 0
        sums = torch.zeros(4, dtype=torch.float64)
        started = time.perf_counter()
        for batch in loader:
            noise = per_sample_noise(batch["row"], epoch, config.run.seed, mc)
            inputs = to_model_batch(batch, prompt, ddp.device, noise)
            gumbel = noise["gumbel"].to(ddp.device) if mc.use_camera_router and stage == 2 else None
            last_micro = micro == accumulation - 1
            with sync.micro_batch(last_micro), _autocast(config, ddp.device):
                out = forward_module(inputs, gumbel)
                (out["total_loss"] / accumulation).backward()
            sums += torch.tensor([float(out[key].detach()) if key in out else 0.0 for key in
                                  ("total_loss", "flow_matching_loss", "camera_router_loss", "action_router_loss")],
                                 dtype=torch.float64) / accumulation
            micro += 1
            if not last_micro:
                continue
            micro = 0
            sync.drop_unused()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip) if config.optim.grad_clip > 0 else None
            for name, optimizer in optimizers.items():
                optimizer.step()
                schedulers[name].step()
                sync.zero_grad(optimizer)
            step += 1
            _all_reduce(sums, ddp)
            sums /= ddp.world_size
            elapsed = time.perf_counter() - started
            record = {"step": step, "loss": float(sums[0]), "flow_loss": float(sums[1]), "camera_loss": float(sums[2]),
                      "router_loss": float(sums[3]), "lr": schedulers["action"].get_last_lr()[0],
                      "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                      "samples_per_s": config.optim.global_batch_size / max(elapsed, 1e-9)}
            result.losses.append(record)
            if ddp.is_main:
                with (out_dir / METRICS_FILE).open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if writer is not None:
                    for key in ("loss", "flow_loss", "camera_loss", "router_loss", "lr", "grad_norm", "samples_per_s"):
                        writer.add_scalar(f"train/{key}", record[key], step)
                progress.update(1)
                if step % max(1, config.run.log_every_steps) == 0:
                    progress.set_postfix(loss=f"{record['loss']:.4f}", flow=f"{record['flow_loss']:.4f}",
                                         samples_s=f"{record['samples_per_s']:.1f}")
            if step % config.run.save_every_steps == 0 or step == end_step:
                if ddp.is_main:
                    save_training_checkpoint(out_dir, LoopPosition(step, *divmod(step, plan.steps_per_epoch)), model,
                                             optimizers, schedulers, capture_rng_state(), {"config": config.to_dict()},
                                             keep_last=config.run.keep_last)
                if ddp.active:
                    dist.barrier()
            if len(val_set) and step % config.run.validate_every_steps == 0 and step != total_steps:
                _log_validation(validate(model, val_set, config, ddp, prompt), step, writer, out_dir, ddp)
            sums.zero_()
            started = time.perf_counter()
            if step >= end_step:
                break
    progress.close()
    sync.close()
    result.last_step = step
    if step >= total_steps:
        if len(val_set):
            result.validation = validate(model, val_set, config, ddp, prompt)
            _log_validation(result.validation, step, writer, out_dir, ddp)
        if ddp.is_main:
            result.final_dir = export_final(model, out_dir, {"trained_by": "drivemoe train", "stage": stage,
                                                              "steps": step, "index": str(index_dir)})
            print(f"final model written to {result.final_dir}")
        if ddp.active:
            dist.barrier()
    if writer is not None:
        writer.close()
    return result


def _log_validation(metrics: dict[str, Any], step: int, writer, out_dir: Path, ddp: Distributed) -> None:
    if not ddp.is_main:
        return
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    for name in ("camera_router", "action_router"):
        if name in metrics:
            scalars[f"{name}_accuracy"] = metrics[name]["accuracy"]
            scalars[f"{name}_macro_f1"] = metrics[name]["macro_f1"]
    with (out_dir / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps({"step": step, "validation": scalars}) + "\n")
    if writer is not None:
        for key, value in scalars.items():
            writer.add_scalar(f"val/{key}", value, step)
    tqdm.write(f"validation at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
    for name in ("camera_router", "action_router"):
        if f"{name}_table" in metrics:
            tqdm.write(f"{name}:\n{metrics[f'{name}_table']}")


# ---- command line -----------------------------------------------------------------------------------
def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise TrainConfigError(f"--set {text!r}: expected section.key=value")
    import yaml

    return key.strip(), yaml.safe_load(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="training YAML (see configs/train/)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the newest checkpoint in run.out_dir, or from the given file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set data.index=/data/b2d_index")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, dict(_parse_override(s) for s in args.set))
    result = run_training(config, resume=args.resume if args.resume else False)
    if result.validation is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        scalars = {k: v for k, v in result.validation.items() if isinstance(v, (int, float))}
        print("final validation: " + json.dumps(scalars))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
