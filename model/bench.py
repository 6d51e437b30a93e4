"""`drivemoe bench`: per-stage inference latency and peak memory of the policy, with random weights.

    drivemoe bench [--preset drivemoe-base drivepi0-base | tiny-drivemoe ...] [--device cuda|cpu]
                   [--dtypes float32 bfloat16] [--iters N] [--warmup N] [--all-views] [--batch B]
                   [--raw-frames] [--paths eager agent fast] [--grouped-experts] [--compile] [--attention flex] [--graph-vision]
                   [--fp32-reference] [--json FILE]

Models are built on the target device directly (meta-device construction, `to_empty`, then a cheap
in-place random init), so the 3.9B-parameter models never touch host memory. Each configuration
(preset x dtype x view mode) is timed through `DrivePolicy.predict_batch` along each --paths entry
(eager, the agent's fused + graphed path, the fast path), on one model, each checked against the
first path (max |actions difference|, identical routing) and optionally against fp32 of the same weights; whose per-stage timings
synchronise the GPU; with `--all-views` DriveMoE is also timed encoding all 7 images in one vision
call (what a non-lazy implementation does) instead of 2 + the selected one. A configuration that
fails (out of memory, ...) is reported in the table and the others still run. Not a test: it prints
numbers.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.cameras import FRONT, FRONT_PREVIOUS, MODEL_IMAGE_ORDER
from model.checkpoints import build_model, parse_dtype
from model.config import ModelConfig
from model.drivemoe import DriveMoE
from model.ego_state import EgoStateHistory
from model.image_preprocessing import PreparedImage, to_pixel_values
from model.policy import TIMING_KEYS, DrivePolicy, Observation, normalize_ego_history

PAPER_PRESETS = ("drivemoe-base", "drivepi0-base")
TINY_PRESETS = ("tiny-drivemoe", "tiny-drivepi0")
STAGES = ("preprocess", "vision", "router", "prefix", "denoise", "total")


@dataclass(frozen=True)
class BenchConfig:
    presets: tuple[str, ...]
    device: str
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    iters: int = 20
    warmup: int = 3
    all_views: bool = False
    batch: int = 1
    raw_frames: bool = False  # time the JPEG round trip + resize of 1600x900 frames as well
    cuda_graphs: bool = True  # as the agent runs: prefix + denoising replayed as one CUDA graph (CUDA only)
    seed: int = 0
    paths: tuple[str, ...] = ("agent",)  # see PATHS; every path of a configuration shares one model
    grouped_experts: bool = False  # fast path: chosen experts as grouped GEMMs (torch._grouped_mm)
    compile: bool = False  # fast path: torch.compile the joint transformer and the vision tower
    attention: str = "eager"  # fast path: joint attention kernel, "eager" or "flex" (FlexAttention)
    graph_vision: bool = False  # fast path: vision + router and views + prefix + denoising as two CUDA graphs
    fp32_reference: bool = False  # reduced-precision configurations: also compare with fp32 of the same weights


# eager: separate projections, no CUDA graph; agent: what the agent runs (fused at load, CUDA graph when
# cuda_graphs; previous front's tokens reused); fast: agent + grouped experts / FlexAttention /
# vision graphs / torch.compile as configured.
PATHS = ("eager", "agent", "fast")


@dataclass
class BenchResult:
    preset: str
    dtype: str
    views: str  # "lazy (2+K)" or "all 7"
    path: str = "agent"
    status: str = "ok"
    error: str = ""
    parameters: int = 0
    weight_bytes: int = 0
    build_s: float = 0.0
    median_ms: dict[str, float] = field(default_factory=dict)
    p90_ms: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    # agreement of this path's seeded prediction with the first path of the configuration / with fp32
    max_abs_diff_vs_first: float | None = None
    routing_equal_vs_first: bool | None = None
    max_abs_diff_vs_fp32: float | None = None
    routing_equal_vs_fp32: bool | None = None


def init_random_weights(model: nn.Module, seed: int) -> None:
    """Cheap in-place random init on the model's device: N(0, 0.02) matrices, unit LayerNorm scales,
    zero biases and Gemma RMSNorm offsets, unit router temperature. Only finiteness matters here."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
                continue
            for name, param in module.named_parameters(recurse=False):
                if name == "temperature":
                    param.fill_(1.0)
                elif param.dim() >= 2:
                    param.normal_(0.0, 0.02)
                else:
                    param.zero_()


def build_random_model(config: ModelConfig, device: str, dtype: torch.dtype, seed: int) -> DriveMoE:
    model = build_model(config, device=device, dtype=dtype)
    init_random_weights(model, seed)
    return model.eval()


def synthetic_observations(config: ModelConfig, batch: int, raw_frames: bool, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    steps = config.flow.cond_steps
    history = EgoStateHistory(
        speed=np.full(steps, 5.0), acceleration=np.zeros((steps, 3)), angular_velocity=np.zeros((steps, 3)),
        theta=np.zeros(steps), command_far=np.tile([20.0, 2.0], (steps, 1)),
    )
    size = config.vision.image_size
    observations = []
    for i in range(batch):
        if raw_frames:
            images: dict = {c: rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8) for c in MODEL_IMAGE_ORDER}
        else:
            images = {c: PreparedImage(rng.integers(0, 256, (3, size, size), dtype=np.uint8), c) for c in MODEL_IMAGE_ORDER}
        if not raw_frames:
            images[FRONT_PREVIOUS] = images[FRONT]  # as the agent passes the last front (reusable tokens)
        observations.append(Observation(images=images, ego_history=history, jpeg_quality=20 if raw_frames else None, seed=i))
    return observations


def _all_views_step(policy: DrivePolicy, observations: list[Observation]) -> dict[str, float]:
    """DriveMoE inference that encodes all 7 images in one vision call, then routes (non-lazy)."""
    model, cfg, device = policy.model, policy.config, policy.device
    sync = policy._sync
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    sync()
    start = clock = time.perf_counter()
    ego = [normalize_ego_history(o.ego_history, cfg.stats, cfg.flow.cond_steps) for o in observations]
    proprio = torch.stack([p for p, _ in ego]).to(device)
    goal = torch.stack([g for _, g in ego]).to(device)
    chw = np.stack([np.stack([o.images[c].chw for c in MODEL_IMAGE_ORDER]) for o in observations])
    pixels = to_pixel_values(torch.from_numpy(chw)).to(device)
    noise = torch.stack([torch.randn((cfg.flow.horizon, cfg.flow.action_dim), generator=torch.Generator().manual_seed(i))
                         for i in range(len(observations))]).to(device)
    timings["preprocess"] = time.perf_counter() - clock
    with torch.inference_mode():
        clock = time.perf_counter()
        tokens = model.encode_images(pixels)
        sync()
        timings["vision"] = time.perf_counter() - clock
        clock = time.perf_counter()
        logits = model.route_cameras(tokens[:, 0], goal)
        selected = model.select_views(logits)
        index = selected.view(*selected.shape, 1, 1).expand(-1, -1, *tokens.shape[2:])
        views = model.add_view_embeddings(torch.gather(tokens[:, 2:], 1, index), selected)
        sync()
        timings["router"] = time.perf_counter() - clock
        clock = time.perf_counter()
        b = len(observations)
        cache = model.build_prefix_cache(policy._input_ids.expand(b, -1), policy._attention_mask.expand(b, -1),
                                         model.prefix_image_tokens(tokens[:, :2], views), proprio)
        sync()
        timings["prefix"] = time.perf_counter() - clock
        clock = time.perf_counter()
        model.denoise(cache, noise=noise)
        sync()
        timings["denoise"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - start
    return {k: v * 1000.0 for k, v in timings.items()}


def _time(step: Callable[[], dict[str, float]], iters: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    for _ in range(warmup):
        step()
    samples = [step() for _ in range(iters)]
    median = {k: float(np.median([s[k] for s in samples])) for k in STAGES}
    p90 = {k: float(np.percentile([s[k] for s in samples], 90)) for k in STAGES}
    return median, p90


def _fake_prompt(config: ModelConfig) -> tuple[int, ...]:
    """Four ids that are neither pad nor image token: the prompt's length, not its content, sets the cost."""
    seq = config.sequence
    ids = [i for i in range(1, seq.vocab_size) if i not in (seq.pad_token_id, seq.image_token_id)][:4]
    return tuple(ids)


def _routing(prediction) -> tuple:
    experts = None if prediction.action_router_experts is None else prediction.action_router_experts.tolist()
    return tuple(prediction.selected_cameras), experts


def _agreement(prediction, reference) -> tuple[float, bool]:
    diff = float(np.max(np.abs(prediction.normalized_actions - reference.normalized_actions)))
    return diff, _routing(prediction) == _routing(reference)


def _prepare_path(model: DriveMoE, path: str, cfg: BenchConfig) -> None:
    """Put the (shared) model into the state `path` runs in; paths run in PATHS order."""
    from model.fusion import fuse_projections, set_grouped_experts

    if path in ("agent", "fast"):
        fuse_projections(model)  # what DrivePolicy.from_pretrained does
    if path == "fast":
        set_grouped_experts(model, cfg.grouped_experts)
        model.joint_model.attention_kernel = cfg.attention
        if cfg.compile:
            model.compile_for_inference()


def _run_path(model: DriveMoE, config: ModelConfig, path: str, all_views: bool, cfg: BenchConfig,
              observations: list[Observation], result: BenchResult):
    cuda = cfg.device.startswith("cuda")
    _prepare_path(model, path, cfg)
    if cuda:
        torch.cuda.synchronize(cfg.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(cfg.device)
    graphs = cfg.cuda_graphs and path != "eager"
    # agent and fast reuse the previous front's tokens as the agent does (the synthetic CAM_FRONT_PREVIOUS
    # is the CAM_FRONT image object), eager encodes both fronts
    policy = DrivePolicy(model, config, prompt_token_ids=_fake_prompt(config), cuda_graphs=graphs,
                         reuse_previous_front=path != "eager", graph_vision=cfg.graph_vision and path == "fast")
    if all_views:
        step = lambda: _all_views_step(policy, observations)  # noqa: E731
    else:
        step = lambda: policy.predict_batch(observations)[0].timings_ms  # noqa: E731
    result.median_ms, result.p90_ms = _time(step, cfg.iters, cfg.warmup)
    if cuda:
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(cfg.device))
    return None if all_views else policy.predict_batch(observations)[0]


def run_configuration(preset: str, dtype_name: str, all_views: bool, cfg: BenchConfig) -> list[BenchResult]:
    """One model per (preset, dtype, views), timed through each of cfg.paths in order."""
    paths = ("eager",) if all_views else tuple(p for p in PATHS if p in cfg.paths)
    results = [BenchResult(preset=preset, dtype=dtype_name, views="all 7" if all_views else "lazy (2+K)", path=p) for p in paths]
    cuda = cfg.device.startswith("cuda")
    model = None
    current = results[0]
    try:
        config = ModelConfig.preset(preset)
        if all_views and not config.use_camera_router:
            raise ValueError("--all-views applies to DriveMoE presets only")
        if cuda:
            torch.cuda.empty_cache()
        dtype = parse_dtype(dtype_name)
        want_fp32 = cfg.fp32_reference and dtype != torch.float32 and not all_views
        clock = time.perf_counter()
        model = build_random_model(config, cfg.device, torch.float32 if want_fp32 else dtype, cfg.seed)
        if cuda:
            torch.cuda.synchronize(cfg.device)
        build_s = time.perf_counter() - clock
        observations = synthetic_observations(config, cfg.batch, cfg.raw_frames and not all_views, cfg.seed)
        fp32_prediction = None
        if want_fp32:  # the same random weights in fp32, eager: the precision reference
            with torch.inference_mode():
                fp32_prediction = DrivePolicy(model, config, prompt_token_ids=_fake_prompt(config)).predict_batch(observations)[0]
            model = model.to(dtype)
        first = None
        for result in results:
            current = result
            result.build_s = build_s
            result.parameters = sum(p.numel() for p in model.parameters())
            result.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            prediction = _run_path(model, config, result.path, all_views, cfg, observations, result)
            if prediction is None:
                continue
            if first is None:
                first = prediction
            result.max_abs_diff_vs_first, result.routing_equal_vs_first = _agreement(prediction, first)
            if fp32_prediction is not None:
                result.max_abs_diff_vs_fp32, result.routing_equal_vs_fp32 = _agreement(prediction, fp32_prediction)
    except Exception as error:  # one failing configuration must not stop the others
        failed = False
        for result in results:
            if result is current or failed:
                failed = True
                result.status = "failed"
                result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        traceback.print_exc()
    finally:
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return results


def format_table(results: list[BenchResult]) -> str:
    header = (f"{'preset':<15} {'dtype':<9} {'views':<11} {'path':<6} " + " ".join(f"{s:>17}" for s in STAGES)
              + f" {'peak GiB':>9} {'weights GiB':>11} {'|d| 1st':>8} {'route=':>6} {'|d| fp32':>8} {'route=':>6}")
    lines = [header, " " * 44 + " ".join(f"{'median / p90 ms':>17}" for _ in STAGES), "-" * len(header)]

    def cell(value, width: int) -> str:
        if value is None:
            return f"{'-':>{width}}"
        return f"{str(value):>{width}}" if isinstance(value, bool) else f"{value:>{width}.1e}"

    for r in results:
        row = f"{r.preset:<15} {r.dtype:<9} {r.views:<11} {r.path:<6} "
        if r.status != "ok":
            lines.append(row + f"FAILED: {r.error}")
            continue
        row += " ".join(f"{r.median_ms[s]:>8.2f} /{r.p90_ms[s]:>7.2f}" for s in STAGES)
        peak = f"{r.peak_memory_bytes / 2**30:>9.2f}" if r.peak_memory_bytes is not None else f"{'n/a':>9}"
        agreement = " ".join(cell(v, w) for v, w in ((r.max_abs_diff_vs_first, 8), (r.routing_equal_vs_first, 6),
                                                       (r.max_abs_diff_vs_fp32, 8), (r.routing_equal_vs_fp32, 6)))
        lines.append(row + f" {peak} {r.weight_bytes / 2**30:>11.3f} {agreement}")
    return "\n".join(lines)


def environment(device: str) -> dict[str, str | int]:
    env: dict[str, str | int] = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
                                 "cpu_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run_bench(cfg: BenchConfig) -> list[BenchResult]:
    jobs = []
    for preset in cfg.presets:
        for dtype_name in cfg.dtypes:
            jobs.append((preset, dtype_name, False))
            if cfg.all_views and ModelConfig.preset(preset).use_camera_router:
                jobs.append((preset, dtype_name, True))
    results = []
    for preset, dtype_name, all_views in tqdm(jobs, desc="bench configurations"):
        results.extend(run_configuration(preset, dtype_name, all_views, cfg))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", nargs="+", help=f"presets to time (default: {' '.join(PAPER_PRESETS)} on CUDA, "
                                                   f"{' '.join(TINY_PRESETS)} on CPU)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--all-views", action="store_true", help="also time DriveMoE encoding all 7 images")
    parser.add_argument("--batch", type=int, default=1, help="observations per forward pass")
    parser.add_argument("--raw-frames", action="store_true", help="feed raw 1600x900 frames (JPEG q20 + resize timed)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="time the un-graphed eager path on CUDA")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                        help="eager (separate projections, no graph), agent (fused at load + CUDA graph), fast (agent + "
                             "--grouped-experts / --compile); one model per configuration, timed in this order and "
                             "checked against the first (default: all three on CUDA, eager agent on CPU)")
    parser.add_argument("--grouped-experts", action="store_true", help="fast path: chosen experts as grouped GEMMs")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile (minutes at paper scale)")
    parser.add_argument("--graph-vision", action="store_true", help="fast path: vision + router inside CUDA graphs too")
    parser.add_argument("--attention", choices=["eager", "flex"], default="eager", help="fast path: joint attention kernel")
    parser.add_argument("--fp32-reference", action="store_true",
                        help="bfloat16 configurations: also run the same random weights in fp32 and report the difference")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    parser.add_argument("--json", help="also write the results to this JSON file")


def main(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        raise ValueError("--iters and --batch must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = tuple(args.preset) if args.preset else (PAPER_PRESETS if device.startswith("cuda") else TINY_PRESETS)
    for preset in presets:
        ModelConfig.preset(preset)  # unknown names fail before anything is built
    cfg = BenchConfig(presets=presets, device=device, dtypes=tuple(args.dtypes), iters=args.iters, warmup=args.warmup,
                      all_views=args.all_views, batch=args.batch, raw_frames=args.raw_frames,
                      cuda_graphs=not args.no_cuda_graphs,
                      paths=tuple(args.paths) if args.paths else (PATHS if device.startswith("cuda") else ("eager", "agent")),
                      grouped_experts=args.grouped_experts, compile=args.compile, attention=args.attention, graph_vision=args.graph_vision, fp32_reference=args.fp32_reference)
    results = run_bench(cfg)
    env = environment(device)
    print(f"\ndrivemoe bench: {env}; batch {cfg.batch}; {cfg.iters} iterations after {cfg.warmup} warm-up")
    print(format_table(results))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"environment": env, "config": asdict(cfg), "results": [asdict(r) for r in results]}, indent=1))
        tmp.replace(path)
        print(f"results written to {args.json}")
    return 0 if all(r.status == "ok" for r in results) else 1
