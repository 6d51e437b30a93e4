"""Measure the per-device memory of one full-size training step without a GPU.

    python benchmarks/training_memory.py [--batch 8] [--only TEXT] [--ddp-bucket-view on|off] [--json OUT]
    python benchmarks/training_memory.py --compile-check   # inductor vs eager, tiny preset (minutes)

Method. The model, the optimiser and a batch are built under `FakeTensorMode`: every tensor has its real
shape, dtype and storage size but no data, so a 3.7B-parameter step runs on a CPU in under a minute. A
`TorchDispatchMode` sees every tensor any op returns and keeps, per storage, its size until Python frees
the storage (weak references), which gives the live tensor bytes after every op and their peak, as the
CUDA caching allocator's `max_memory_allocated` would count them. A warm-up micro-batch and optimiser
step create the gradients and the optimiser state; the measured micro-batch then runs with the previous
gradients still held (every micro-batch after the first of an accumulated step is like that), followed by
gradient clipping and the optimiser step. Forward and backward run under bf16 autocast, the backward
inside the autocast region as in the loop.

What is measured: fp32 master weights, fp32 gradients, fp32 AdamW state (torch's foreach implementation,
the CUDA default, whose step makes one temporary the size of a parameter group), the bf16 weight copies
autocast makes and keeps until the autocast region ends, everything autograd keeps for backward, and
the temporaries alive at the peak.
What is counted, not measured: bitsandbytes' 8-bit AdamW state (not installed here), from its layout (two
uint8 moments + one fp32 absmax per 256 elements per moment, 32-bit moments below 4096 elements),
substituted for the fp32 state in the measured peaks (the state is persistent, so this is exact); its
step is one fused in-place kernel, assumed to need no temporary. DDP's flattened gradient buckets (DDP
itself is not run here): one fp32 slot per trainable parameter, parameters that never get a gradient
included. With `run.ddp_bucket_view` on (the loop's default, DDP's `gradient_as_bucket_view=True`) the
.grad tensors are views into the buckets and are zeroed in place, never freed, so the buckets replace the
measured gradients (+ the slots of gradient-less parameters); off, they come on top of them. Both follow
from how DDP's reducer allocates, not from a measurement.
What is not in the figures: the CUDA context and cuBLAS/NCCL workspaces (outside the PyTorch allocator),
caching-allocator fragmentation (reserved > allocated), kernel-internal scratch (e.g. attention
workspaces). `MARGIN_FRACTION` and `MARGIN_FIXED_GIB` add a stated allowance for them; the rows show the
figure with and without it. CPU autocast is used for the bf16 casts: its lower-precision op list covers
the ops of this model (linear, matmul, conv, scaled_dot_product_attention) like CUDA's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ModelConfig  # noqa: E402
from model.drivemoe import DriveMoE  # noqa: E402
from model.image_preprocessing import to_pixel_values  # noqa: E402
from model.training.config import RunSection  # noqa: E402
from model.training.train import TrainForward, enable_activation_checkpointing, split_parameters  # noqa: E402

GIB = 1024 ** 3
MARGIN_FRACTION = 0.10  # allocator fragmentation and kernel scratch, as a share of the measured peak
MARGIN_FIXED_GIB = 2.0  # CUDA context + cuBLAS workspaces + NCCL buffers, per process
GPU_USABLE_GIB = 79.0  # an "80 GB" H100/A100 reports 79.1-79.3 GiB to PyTorch
BNB_BLOCK = 256  # bitsandbytes blockwise 8-bit state: one fp32 absmax per 256 elements
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit state in bitsandbytes


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    stage: int
    batch: int
    accumulation: int


class LiveBytes(TorchDispatchMode):
    """Live tensor bytes (per storage, freed when Python frees the storage) and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.now = 0
        self.peak = 0
        self.weight_casts: WeakIdKeyDictionary = WeakIdKeyDictionary()  # bf16 copies of parameters
        self._param_storages: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def watch_parameters(self, params: list[torch.Tensor]) -> None:
        for p in params:
            self.track(p)
            self._param_storages[p.untyped_storage()] = True

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.now -= size

    def reset_peak(self) -> None:
        self.peak = self.now

    def weight_cast_bytes(self) -> int:
        return sum(s.nbytes() for s in self.weight_casts.keys())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.track(tensor)
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor) \
                and args[0].untyped_storage() in self._param_storages:
            self.weight_casts[out.untyped_storage()] = True
        return out


def fake_batch(config: ModelConfig, batch: int) -> dict[str, torch.Tensor]:
    """The loop's model batch (to_model_batch) for `batch` samples; values are irrelevant."""
    s, f = config.sequence, config.flow
    size = config.vision.image_size
    images = torch.zeros((batch, config.num_input_images, 3, size, size), dtype=torch.uint8)
    input_ids = torch.full((batch, config.max_seq_len), s.image_token_id, dtype=torch.long)
    return {
        "pixel_values": to_pixel_values(images),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "proprio": torch.zeros((batch, f.cond_steps, f.proprio_dim)),
        "goal": torch.zeros((batch, 2)),
        "actions": torch.zeros((batch, f.horizon, f.action_dim)),
        "camera_ids": torch.zeros(batch, dtype=torch.long),
        "scenario_ids": torch.zeros(batch, dtype=torch.long),
        "x0": torch.zeros((batch, f.horizon, f.action_dim)),
        "t": torch.full((batch,), 0.5),
    }


def bnb_adamw8bit_state_bytes(params: list[torch.Tensor]) -> int:
    """Bytes of the state bitsandbytes' AdamW8bit allocates for these parameters (blockwise layout)."""
    total = 0
    for p in params:
        n = p.numel()
        if n < BNB_MIN_8BIT_SIZE:
            total += 2 * n * p.element_size()
        else:
            total += 2 * n + 2 * 4 * -(-n // BNB_BLOCK)
    return total


def measure(case: Case, checkpointing: bool, bucket_view: bool = True) -> dict[str, dict[str, float]]:
    """One run with fp32 AdamW (measured) and the 8-bit AdamW figures derived from it; sizes in GiB.

    Sequence: warm-up micro-batch, clip, optimiser step (creates the state), then the measured
    micro-batch with the gradients of the previous one still held (as every micro-batch after the first
    of an accumulated step; with accumulation 1 and no DDP bucket view the gradients are dropped first:
    bucket views are zeroed in place and stay allocated), clip and step.
    """
    started = time.perf_counter()
    base = ModelConfig.preset(case.preset)
    config = dataclasses.replace(base, sequence=dataclasses.replace(base.sequence, prompt_token_ids=(2, 3, 4, 5)))
    with FakeTensorMode():
        live = LiveBytes()
        with live:
            model = DriveMoE(config).train()  # fp32 master weights (the default dtype)
            params = list(model.parameters())
            live.watch_parameters(params)
            weights = live.now
            if checkpointing:
                enable_activation_checkpointing(model)
            action, vlm = split_parameters(model)
            forward = TrainForward(model, case.stage)
            # foreach: what torch.optim.AdamW picks by default for CUDA parameters
            optimizers = [torch.optim.AdamW(group, lr=1e-5, foreach=True) for group in (action, vlm)]

            def micro_step() -> tuple[int, int]:
                batch = fake_batch(config, case.batch)
                before = live.now
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = forward(batch, None)
                    held = live.now - before
                    casts = live.weight_cast_bytes()
                    (out["total_loss"] / case.accumulation).backward()
                return held, casts

            def clip_and_step() -> tuple[int, int]:
                live.reset_peak()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                clip_peak = live.peak
                live.reset_peak()
                for opt in optimizers:
                    opt.step()
                return clip_peak, live.peak

            micro_step()
            clip_and_step()
            with_grads = [p for p in params if p.grad is not None]
            grads = sum(p.grad.untyped_storage().nbytes() for p in with_grads)
            state = sum(t.untyped_storage().nbytes() for opt in optimizers for s in opt.state.values()
                        for t in s.values() if isinstance(t, torch.Tensor))
            if case.accumulation == 1 and not bucket_view:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
            live.reset_peak()
            held, casts = micro_step()
            backward_peak = live.peak
            clip_peak, step_peak = clip_and_step()
    # DDP buckets every parameter that requires a gradient (shared parameters once), fp32 like the weights
    buckets = sum(p.numel() * p.element_size() for p in {id(p): p for p in params}.values() if p.requires_grad)
    state8 = bnb_adamw8bit_state_bytes(with_grads)  # bitsandbytes skips parameters without gradients too
    rows = {}
    for optimizer, state_bytes in (("adamw", state), ("adamw8bit", state8)):
        # the state is persistent: swapping its size shifts the forward/backward peak by the difference;
        # the 8-bit step is fused and in place, so its peak is the clip peak with the smaller state
        fb = backward_peak - state + state_bytes
        st = step_peak if optimizer == "adamw" else clip_peak - state + state_bytes
        peak = max(fb, st)
        # every peak above holds the gradients; with bucket views the buckets are their storage
        with_ddp = peak + buckets - (grads if bucket_view else 0)
        planned = with_ddp * (1 + MARGIN_FRACTION) + MARGIN_FIXED_GIB * GIB
        rows[optimizer] = {
            "weights_gib": weights / GIB,
            "optimizer_state_gib": state_bytes / GIB,
            "gradients_gib": grads / GIB,
            "autocast_weight_copies_gib": casts / GIB,
            "held_for_backward_gib": (held - casts) / GIB,
            "peak_forward_backward_gib": fb / GIB,
            "peak_optimizer_step_gib": st / GIB,
            "peak_gib": peak / GIB,
            "ddp_bucket_view": bucket_view,
            "ddp_buckets_gib": buckets / GIB,
            "ddp_added_gib": (with_ddp - peak) / GIB,
            "peak_with_ddp_gib": with_ddp / GIB,
            "planned_gib": planned / GIB,
            "fits_80gb": planned / GIB <= GPU_USABLE_GIB,
            "seconds": time.perf_counter() - started,
        }
    return rows


def default_cases(batch: int) -> list[Case]:
    # accumulation: micro-batches per optimiser step at 8 GPUs for the configs' global batches (128, 128, 1024)
    return [
        Case("DriveMoE stage 1", "drivemoe-base", 1, batch, max(1, 128 // (8 * batch))),
        Case("DriveMoE stage 2", "drivemoe-base", 2, batch, max(1, 128 // (8 * batch))),
        Case("Drive-pi0", "drivepi0-base", 1, batch, max(1, 1024 // (8 * batch))),
    ]


def compile_check(steps: int = 2) -> None:
    """torch.compile (inductor, the loop's `model.compile`) of the tiny DriveMoE training forward against
    eager: `steps` optimiser steps from the same weights, losses printed side by side. CPU inductor
    compiles C++ kernels: minutes, not seconds (tests/test_training_precision.py checks the graph capture
    quickly and runs this comparison only with DRIVEMOE_INDUCTOR_TEST=1)."""
    import copy

    torch.manual_seed(0)
    base = ModelConfig.preset("tiny-drivemoe")
    config = dataclasses.replace(base, sequence=dataclasses.replace(base.sequence, prompt_token_ids=(2, 17, 33, 108)),
                                 camera_router=dataclasses.replace(base.camera_router, dropout=0.0))
    model = DriveMoE(config).train()
    twin = copy.deepcopy(model)
    compiled, eager = torch.compile(TrainForward(model, 1)), TrainForward(twin, 1)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (model, twin)]
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = {k: (v.uniform_(-1, 1, generator=g) if v.is_floating_point() else v)
                 for k, v in fake_batch(config, 4).items()}
        batch["t"] = torch.rand(4, generator=g) * 0.999
        batch["camera_ids"] = torch.arange(4) % 5
        batch["scenario_ids"] = torch.arange(4) % 7
        losses, seconds = [], []
        for forward, opt in ((compiled, opts[0]), (eager, opts[1])):
            started = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = forward(batch, None)["total_loss"]
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            seconds.append(time.perf_counter() - started)
        print(f"step {step + 1}: compiled loss {losses[0]:.7f} ({seconds[0]:.1f} s), eager {losses[1]:.7f} "
              f"({seconds[1]:.2f} s), relative difference {abs(losses[0] - losses[1]) / abs(losses[1]):.1e}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="samples per device (default 8)")
    parser.add_argument("--only", default="", help="measure only the runs whose name contains this text")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    default_view = "on" if RunSection().ddp_bucket_view else "off"
    parser.add_argument("--ddp-bucket-view", choices=("on", "off"), default=default_view,
                        help=f"DDP gradient buckets as in run.ddp_bucket_view (default {default_view}, the loop's)")
    parser.add_argument("--compile-check", action="store_true",
                        help="instead: compare inductor-compiled and eager training steps of the tiny preset (minutes)")
    args = parser.parse_args()
    if args.compile_check:
        compile_check()
        return 0
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    bucket_view = args.ddp_bucket_view == "on"
    rows = []
    header = (f"{'run':<17} {'ckpt':<4} {'optim':<9} {'weights':>7} {'opt st':>6} {'grads':>6} {'bf16 w':>6} "
              f"{'act':>6} {'peak f/b':>8} {'peak st':>7} {'+DDP':>6} {'planned':>7}  fits 80GB")
    ddp_rule = "buckets - gradients (bucket view)" if bucket_view else "buckets (no bucket view)"
    print(f"GiB per device, {args.batch} samples per device, bf16 autocast; planned = (peak + DDP {ddp_rule}) "
          f"x {1 + MARGIN_FRACTION:.2f} + {MARGIN_FIXED_GIB} GiB, compared with {GPU_USABLE_GIB} GiB usable")
    print(header)
    for case in default_cases(args.batch):
        if args.only not in case.name:
            continue
        for checkpointing in (False, True):
            for optimizer, r in measure(case, checkpointing, bucket_view).items():
                rows.append({"run": case.name, "preset": case.preset, "stage": case.stage, "batch": case.batch,
                             "accumulation": case.accumulation, "activation_checkpointing": checkpointing,
                             "optimizer": optimizer, **r})
                print(f"{case.name:<17} {'on' if checkpointing else 'off':<4} {optimizer:<9} {r['weights_gib']:7.1f} "
                      f"{r['optimizer_state_gib']:6.1f} {r['gradients_gib']:6.1f} {r['autocast_weight_copies_gib']:6.1f} "
                      f"{r['held_for_backward_gib']:6.1f} {r['peak_forward_backward_gib']:8.1f} "
                      f"{r['peak_optimizer_step_gib']:7.1f} {r['peak_with_ddp_gib']:6.1f} {r['planned_gib']:7.1f}  "
                      f"{'yes' if r['fits_80gb'] else 'NO'}", flush=True)
    print("columns: opt st = optimiser state (8-bit: bitsandbytes layout, counted); bf16 w = autocast's bf16 weight "
          "copies; act = bytes kept for backward by one micro-batch (beyond the weight copies); peak f/b, peak st = "
          "live-tensor peaks during forward+backward and during clip + optimiser step; +DDP = the peak with DDP's "
          "fp32 gradient buckets (counted): "
          + ("they replace the gradients (run.ddp_bucket_view on)" if bucket_view else
             "a second copy of all gradients (run.ddp_bucket_view off)"))
    if args.json:
        args.json.write_text(json.dumps({"margin_fraction": MARGIN_FRACTION, "margin_fixed_gib": MARGIN_FIXED_GIB,
                                         "gpu_usable_gib": GPU_USABLE_GIB, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
