"""`drivemoe predict`: run a converted model on a fixture-format inputs.safetensors.

Reads raw_images_uint8, input_ids, attention_mask, the raw ego-state history (raw_his_*,
raw_{x,y}_command_far) and init_noise; normalises pixels ((u/255 - 0.5)/0.5) and the ego state with the
model's own statistics; writes final_action, unnormalised_trajectory, euler_states and, for DriveMoE,
camera_logits, selected_view, action_router_logits/topk_idx/topk_weights (fixture names and shapes).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from model.checkpoints import load_pretrained, parse_dtype
from model.config import ModelConfig
from model.drivemoe import DriveMoE

REQUIRED_INPUTS = ("raw_images_uint8", "input_ids", "attention_mask", "raw_his_speed", "raw_his_acceleration",
                   "raw_his_angular_velocity", "raw_his_theta", "raw_x_command_far", "raw_y_command_far")


def pixels_from_uint8(raw: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [..., 3, S, S] -> float32 in [-1, 1], as the authors' processor: (u * (1/255) - 0.5) / 0.5."""
    if raw.dtype != torch.uint8:
        raise ValueError(f"raw_images_uint8 must be uint8, got {raw.dtype}")
    return (raw.float() * (1.0 / 255.0) - 0.5) / 0.5


EGO_SHAPES = {"raw_his_speed": (), "raw_his_acceleration": (3,), "raw_his_angular_velocity": (3,), "raw_his_theta": (),
              "raw_x_command_far": (), "raw_y_command_far": ()}  # each [B, T, *this]


def check_inputs(inputs: dict[str, torch.Tensor], config: ModelConfig, source: str = "inputs") -> None:
    """Reject what would otherwise give a torch error or a silent NaN output: the message names the tensor."""
    missing = [k for k in REQUIRED_INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing}")
    images = inputs["raw_images_uint8"]
    if images.dim() == 0 or images.shape[0] == 0:
        raise ValueError(f"{source}: raw_images_uint8 holds no sample (shape {tuple(images.shape)})")
    batch = images.shape[0]
    time_steps = None
    for key, tail in EGO_SHAPES.items():
        tensor = inputs[key]
        if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{source}: {key} must hold numbers, got dtype {tensor.dtype}")
        if tensor.dim() != 2 + len(tail) or tuple(tensor.shape[2:]) != tail or tensor.shape[0] != batch:
            raise ValueError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected ({batch}, T{''.join(f', {d}' for d in tail)}) "
                             f"(batch {batch} from raw_images_uint8)")
        if time_steps is None:
            time_steps = tensor.shape[1]
        elif tensor.shape[1] != time_steps:
            raise ValueError(f"{source}: {key} has {tensor.shape[1]} time steps, raw_his_speed has {time_steps}")
    for key in (*EGO_SHAPES, "init_noise"):
        if key in inputs and inputs[key].is_floating_point():
            bad = int((~torch.isfinite(inputs[key])).sum())
            if bad:
                raise ValueError(f"{source}: {key} holds {bad} NaN/inf value(s)")
    for key in ("input_ids", "attention_mask"):
        if inputs[key].is_floating_point() or inputs[key].dtype == torch.bool:
            raise ValueError(f"{source}: {key} must be an integer tensor, got {inputs[key].dtype}")
    ids = inputs["input_ids"]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.sequence.vocab_size):
        raise ValueError(f"{source}: input_ids range over [{int(ids.min())}, {int(ids.max())}], outside the vocabulary "
                         f"[0, {config.sequence.vocab_size - 1}] of model {config.name!r}")


def model_inputs(inputs: dict[str, torch.Tensor], config: ModelConfig, source: str = "inputs") -> dict[str, torch.Tensor]:
    """Fixture tensors -> the normalised arguments of DriveMoE.infer_action."""
    check_inputs(inputs, config, source)
    pixels = pixels_from_uint8(inputs["raw_images_uint8"])
    s = config.stats
    proprio = s.normalize_ego_state(inputs["raw_his_speed"].float(), inputs["raw_his_acceleration"].float(),
                                    inputs["raw_his_angular_velocity"].float(), inputs["raw_his_theta"].float(),
                                    inputs["raw_x_command_far"].float(), inputs["raw_y_command_far"].float())
    goal = s.normalize_goal(inputs["raw_x_command_far"].float(), inputs["raw_y_command_far"].float())
    b = pixels.shape[0]
    expect = {"raw_images_uint8": (b, config.num_input_images, config.vision.num_channels, config.vision.image_size, config.vision.image_size),
              "input_ids": (b, config.max_seq_len), "attention_mask": (b, config.max_seq_len),
              "proprio": (b, config.flow.cond_steps, config.flow.proprio_dim)}
    found = {"raw_images_uint8": tuple(pixels.shape), "input_ids": tuple(inputs["input_ids"].shape),
             "attention_mask": tuple(inputs["attention_mask"].shape), "proprio": tuple(proprio.shape)}
    for key, shape in expect.items():
        if found[key] != shape:
            raise ValueError(f"{source}: {key} has shape {found[key]}, model {config.name!r} expects {shape}")
    n_image = int((inputs["input_ids"] == config.sequence.image_token_id).sum(dim=1).min())
    if n_image != config.num_image_tokens or not bool(((inputs["input_ids"] == config.sequence.image_token_id).sum(dim=1) == n_image).all()):
        raise ValueError(f"{source}: input_ids must hold exactly {config.num_image_tokens} image tokens per sample")
    out = {"pixel_values": pixels, "input_ids": inputs["input_ids"].long(), "attention_mask": inputs["attention_mask"].long(),
           "proprio": proprio, "goal": goal}
    if "init_noise" in inputs:
        noise = inputs["init_noise"].float()
        if tuple(noise.shape) != (b, config.flow.horizon, config.flow.action_dim):
            raise ValueError(f"{source}: init_noise has shape {tuple(noise.shape)}, expected {(b, config.flow.horizon, config.flow.action_dim)}")
        out["noise"] = noise
    return out


def predict(model: DriveMoE, inputs: dict[str, torch.Tensor], seed: int | None = None) -> dict[str, torch.Tensor]:
    """Outputs with the fixture names (float32 / int64, on the CPU)."""
    config = model.config
    args = {k: v.to(model.device) for k, v in model_inputs(inputs, config).items()}
    generator = None
    if "noise" not in args:
        generator = torch.Generator(device=model.device).manual_seed(0 if seed is None else seed)
    result = model.infer_action(args["pixel_values"], args["input_ids"], args["attention_mask"], args["proprio"],
                                goal=args["goal"], noise=args.get("noise"), generator=generator)
    final = result["final_action"].float().cpu()
    out = {"final_action": final, "unnormalised_trajectory": config.stats.denormalize_trajectory(final),
           "euler_states": result["euler_states"].float().cpu()}
    if config.use_camera_router:
        out["camera_logits"] = result["camera_logits"].float().cpu()
        out["selected_view"] = result["selected_view"].long().cpu()
        if config.camera_router.top_k > 1:
            out["selected_views"] = result["selected_views"].long().cpu()
    if config.use_action_moe:
        out["action_router_logits"] = result["action_router_logits"].float().cpu()
        out["action_router_topk_idx"] = result["action_router_topk_idx"].long().cpu()
        out["action_router_topk_weights"] = result["action_router_topk_weights"].float().cpu()
    return {k: v.contiguous() for k, v in out.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="converted model folder (model.safetensors + config.json)")
    parser.add_argument("--inputs", required=True, help="fixture-format inputs.safetensors")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=None, help="noise seed when the inputs hold no init_noise")


def write_outputs(out: dict[str, torch.Tensor], path: Path) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written output."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(tmp))
        os.replace(tmp, path)
    except (OSError, SafetensorError) as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
        raise ValueError(f"cannot write {path}: {reason}") from None


def main(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    inputs_path = Path(args.inputs)
    if not inputs_path.is_file():
        raise FileNotFoundError(f"inputs not found: {inputs_path}")
    try:
        inputs = load_file(str(inputs_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"cannot read {inputs_path}: {error}") from None
    model, config = load_pretrained(args.model, device=args.device, dtype=parse_dtype(args.dtype))
    check_inputs(inputs, config, source=str(inputs_path))
    out = predict(model, inputs, seed=args.seed)
    write_outputs(out, Path(args.out))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))
    if "selected_view" in out:
        print(f"  selected camera per sample: {out['selected_view'].tolist()}")
    return 0
