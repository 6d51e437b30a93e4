"""`drivemoe demo`: the whole routing-debug pipeline on a built-in scene; no CARLA, no GPU, no download.

Steps: render the procedural clip (agent/demo_scene.py) in the Bench2Drive layout with its camera
labels, build a model (trained demo weights from weights/demo/ when that folder holds a converted
model, else the tiny-drivemoe preset with seeded random weights, saved to OUT/model so that
`drivemoe replay --model OUT/model` works on it too), replay the clip through the agent stack
(agent/replay.py), then render the debug video and the routing report. Prints where everything is
and whether the model is trained.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.demo_scene import DemoSceneConfig, write_demo_clip

DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "demo"
TINY_PRESET = "tiny-drivemoe"
# The tiny preset's vocabulary is fake (192 ids; see the reference README, section 3): these are
# the reference fixtures' prompt ids, as no tokenizer exists for it.
TINY_PROMPT_IDS = (2, 17, 33, 108)


@dataclass(frozen=True)
class DemoConfig:
    scene: DemoSceneConfig = DemoSceneConfig()
    model_seed: int = 0
    torch_threads: int = 1  # the tiny model is bound by per-op overhead: one thread is fastest on 2 cores
    progress: bool = True
    weights: Path | None = DEMO_WEIGHTS  # None: always the untrained tiny model


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

    from agent.debug_video import render_trace_video
    from agent.replay import ReplayConfig, run_replay
    from agent.routing_report import build_report

    started = time.perf_counter()
    torch.set_num_threads(config.torch_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip = write_demo_clip(out / "clip", config.scene, progress=config.progress)
    policy, model_dir, trained = build_demo_policy(out, config.model_seed, config.weights)
    model_info = {"name": policy.config.name, "path": str(model_dir.resolve()), "trained": trained}
    replay = run_replay(clip.clip_dir, policy, out / "replay", clip.camera_labels_path,
                        ReplayConfig(progress=config.progress), model_info=model_info)
    video = render_trace_video(replay.trace_dir, out / "demo.mp4", progress=config.progress)
    report = build_report([replay.trace_dir], out / "report", progress=config.progress)
    return DemoResult(out, clip.clip_dir, model_dir, trained, replay.trace_dir, video.path, report.index,
                      replay.scores or {}, time.perf_counter() - started)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="drivemoe-demo", help="output folder (default ./drivemoe-demo)")
    parser.add_argument("--frames", type=int, default=DemoSceneConfig().num_frames, help="clip length at 10 Hz")
    parser.add_argument("--untrained", action="store_true",
                        help="use a randomly initialised tiny model instead of the trained demo weights in weights/demo/")


def main(args: argparse.Namespace) -> int:
    from agent.replay import format_scores

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    result = run_demo(args.out, DemoConfig(scene=DemoSceneConfig(num_frames=args.frames),
                                           weights=None if args.untrained else DEMO_WEIGHTS))
    print()
    if result.trained:
        print(f"model:  trained demo weights from {result.model_dir}")
    else:
        print(f"model:  {TINY_PRESET} with RANDOM, UNTRAINED weights ({result.model_dir}).")
        print("        Its waypoints and routing choices are noise: this demo shows the pipeline, not driving.")
    print(f"clip:   {result.clip_dir}  (procedural scene, Bench2Drive layout, camera labels beside it)")
    print(f"trace:  {result.trace_dir / 'trace.jsonl'}")
    print(f"video:  {result.video}")
    print(f"report: {result.report}")
    for line in format_scores(result.scores):
        print(f"score:  {line}")
    print(f"done in {result.seconds:.0f} s")
    return 0
