"""`drivemoe demo`: the whole routing-debug pipeline on a built-in scene; no CARLA, no GPU, no download.

Steps: render a held-out clip of the demo scenario family (agent/demo/scenarios.py; by default a lane
change that must wait for a car seen only by the back-side camera) in the Bench2Drive layout with its camera
labels, build a model (trained demo weights from weights/demo/ when that folder holds a converted
model, else the tiny-drivemoe preset with seeded random weights, saved to OUT/model so that
`drivemoe replay --model OUT/model` works on it too), replay the clip through the agent stack
(agent/debugger/replay.py), then render the debug video and the routing report. Prints where everything is
and whether the model is trained.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.demo.scenarios import KINDS, ScenarioFamilyConfig, sample_scenario, showcase_seed, write_scenario_clip

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "demo"
TINY_PRESET = "tiny-drivemoe"
# The tiny preset's vocabulary is fake (192 ids; see the reference README, section 3): these are
# the reference fixtures' prompt ids, as no tokenizer exists for it.
TINY_PROMPT_IDS = (2, 17, 33, 108)


@dataclass(frozen=True)
class DemoConfig:
    kind: str = "lane_change"  # scenario kind of agent/demo/scenarios.py
    seed: int | None = None  # None: the kind's showcase seed (held out from the demo weights' training)
    frames: int = 60  # clip length at 10 Hz; the demo weights were trained on 60-frame clips
    image_size: tuple[int, int] = (400, 225)  # rendered camera images (the model sees 32 x 32)
    model_seed: int = 0
    torch_threads: int = 1  # the tiny model is bound by per-op overhead: one thread is fastest on 2 cores
    progress: bool = True
    weights: Path | None = DEMO_WEIGHTS  # None: always the untrained tiny model
    counterfactual_every: int = 1  # counterfactual routing on every inference (the video and report show it)


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    clip_dir: Path
    model_dir: Path
    trained: bool
    trace_dir: Path
    video: Path
    report: Path
    scores: dict
    seconds: float


def build_demo_policy(out_dir: Path, seed: int, weights: Path | None = DEMO_WEIGHTS) -> tuple[Any, Path, bool]:
    """(policy, model folder, trained?): `weights` if it holds a model, else seeded tiny random weights."""
    import torch

    from model.checkpoints import save_pretrained
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE
    from model.policy import DrivePolicy

    if weights is not None and (weights / "config.json").is_file() and (weights / "model.safetensors").is_file():
        return DrivePolicy.from_pretrained(weights), weights, True
    config = ModelConfig.preset(TINY_PRESET)
    config = dataclasses.replace(config, sequence=dataclasses.replace(config.sequence, prompt_token_ids=TINY_PROMPT_IDS))
    torch.manual_seed(seed)
    model = DriveMoE(config)
    model_dir = save_pretrained(model, config, out_dir / "model", extra={"demo": f"untrained {TINY_PRESET}, torch seed {seed}"})
    return DrivePolicy(model, config), model_dir, False


def run_demo(out_dir: str | Path, config: DemoConfig = DemoConfig()) -> DemoResult:
    import torch

    from agent.debugger.debug_video import render_trace_video
    from agent.debugger.replay import ReplayConfig, run_replay
    from agent.debugger.routing_report import build_report

    started = time.perf_counter()
    torch.set_num_threads(config.torch_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = ScenarioFamilyConfig(num_frames=config.frames, image_width=config.image_size[0], image_height=config.image_size[1])
    seed = showcase_seed(config.kind, family) if config.seed is None else config.seed
    clip = write_scenario_clip(out / "clip", sample_scenario(seed, family), progress=config.progress)
    policy, model_dir, trained = build_demo_policy(out, config.model_seed, config.weights)
    model_info = {"name": policy.config.name, "path": str(model_dir.resolve()), "trained": trained}
    replay = run_replay(clip.clip_dir, policy, out / "replay", clip.camera_labels_path,
                        ReplayConfig(progress=config.progress, counterfactual_every=config.counterfactual_every),
                        model_info=model_info)
    video = render_trace_video(replay.trace_dir, out / "demo.mp4", progress=config.progress)
    report = build_report([replay.trace_dir], out / "report", progress=config.progress, videos=[video.path])
    return DemoResult(out, clip.clip_dir, model_dir, trained, replay.trace_dir, video.path, report.index,
                      replay.scores or {}, time.perf_counter() - started)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="drivemoe-demo", help="output folder (default ./drivemoe-demo)")
    defaults = DemoConfig()
    parser.add_argument("--kind", choices=KINDS, default=defaults.kind,
                        help=f"scenario kind of the clip (default {defaults.kind}: must wait for a car only the back-side camera sees)")
    parser.add_argument("--seed", type=int, default=None,
                        help="scenario seed (default: a held-out seed of --kind; seeds below 1000000 are training clips)")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="clip length at 10 Hz (at least 15)")
    parser.add_argument("--untrained", action="store_true",
                        help="use a randomly initialised tiny model instead of the trained demo weights in weights/demo/")


def main(args: argparse.Namespace) -> int:
    from agent.debugger.replay import format_scores

    if args.frames < 15:
        raise ValueError(f"--frames must be >= 15 (a scored frame needs ten future frames and the ego history), got {args.frames}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    try:
        result = run_demo(args.out, DemoConfig(kind=args.kind, seed=args.seed, frames=args.frames,
                                               weights=None if args.untrained else DEMO_WEIGHTS))
    except OSError as error:  # read-only or full output folder
        from agent.debugger.outputs import output_error

        raise output_error(error) from None
    print()
    if result.trained:
        print(f"model:  trained demo weights from {result.model_dir}")
    else:
        print(f"model:  {TINY_PRESET} with RANDOM, UNTRAINED weights ({result.model_dir}).")
        print("        Its waypoints and routing choices are noise: this demo shows the pipeline, not driving.")
    print(f"clip:   {result.clip_dir}  (procedural scenario, Bench2Drive layout, camera labels beside it)")
    print(f"trace:  {result.trace_dir / 'trace.jsonl'}")
    print(f"video:  {result.video}")
    print(f"report: {result.report}  (and {result.report.with_name('report.html')}: one page with every plot)")
    for line in format_scores(result.scores):
        print(f"score:  {line}")
    print(f"done in {result.seconds:.0f} s")
    return 0
