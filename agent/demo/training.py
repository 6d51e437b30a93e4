"""Train the demo weights: `python -m agent.demo.training --out weights/demo` (minutes on a CPU).

Pipeline: render seeded procedural scenario clips (agent/demo/scenarios.py; training seeds and
disjoint held-out seeds) -> `drivemoe prepare-data`'s index -> `drivemoe train`'s loop for DriveMoE
stage 1 (ground-truth camera), stage 2 (learned camera, all views) and a Drive-pi0 with the same
backbone -> replay every held-out clip through the agent stack with each model (agent/debugger/replay.py)
and pool ADE/FDE, camera- and skill-router accuracy -> write the DriveMoE model (safetensors +
config.json) and RESULTS.md with the measured table into the output folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.errors import DriveMoEError
from agent.demo.scenarios import KINDS, ScenarioFamilyConfig, held_out_seeds, sample_scenario, training_seeds, write_scenario_clip

PROMPT_IDS = [2, 17, 33, 108]  # the tiny presets' fake vocabulary (same ids as agent/demo/command.py)
COMMAND = "python -m agent.demo.training --out weights/demo"
# Both router focal losses get this weight in both stages (the authors: 10 in stage 1, 5 in stage 2). In the
# tiny model the routers share a 32-wide action stream and a small SigLIP with the flow-matching head, and
# at 10 the router gradients crowd out the flow loss (validation flow loss 0.067 vs Drive-pi0's 0.045 in a
# run with the authors' weights).
ROUTER_LOSS_WEIGHT = 1.0


@dataclass(frozen=True)
class DemoTrainingConfig:
    """Sizes of the whole run; the defaults are what weights/demo/ was made with."""

    train_clips: int = 80
    held_out_clips: int = 16  # four of each kind; two lane changes of each variant
    family: ScenarioFamilyConfig = ScenarioFamilyConfig()
    stage1_steps: int = 1000
    stage2_steps: int = 200
    drivepi0_steps: int = 1200  # as many steps as both DriveMoE stages together
    batch_size: int = 16
    lr: float = 1e-3
    stage2_lr: float = 1e-4
    seed: int = 0
    workers: int = 2
    torch_threads: int = 1  # the tiny models are bound by per-op overhead; a second thread slows them down on 2 cores
    keep_work: bool = False

    def __post_init__(self) -> None:
        for name in ("train_clips", "held_out_clips", "stage1_steps", "stage2_steps", "drivepi0_steps", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelScores:
    name: str
    parameters: int
    ade_m: float | None
    fde_m: float | None
    camera_accuracy: float | None
    camera_confusion: list[list[int]] | None
    skill_accuracy: float | None
    frames: int


# ---- data ----------------------------------------------------------------------------------------
def _render(job: tuple[str, int, ScenarioFamilyConfig]) -> str:
    root, seed, family = job
    return write_scenario_clip(root, sample_scenario(seed, family)).clip_dir.name


def generate_clips(root: Path, seeds: list[int], family: ScenarioFamilyConfig, workers: int, desc: str) -> list[str]:
    """Render the clips of `seeds` under `root` (labels in root/camera_labels); returns clip names."""
    root.mkdir(parents=True, exist_ok=True)
    return _map_with_progress(_render, [(str(root), seed, family) for seed in seeds], workers, desc, "clip")


def _map_with_progress(function, jobs: list, workers: int, desc: str, unit: str, threads: int | None = None) -> list:
    """[function(job) for job in jobs] with a progress bar; in `workers` spawned processes (each with
    `threads` torch threads) when workers > 1, in order."""
    results = []
    with tqdm(total=len(jobs), desc=desc, unit=unit) as progress:
        if workers > 1 and len(jobs) > 1:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_set_threads if threads else None, initargs=(threads,) if threads else ())
            with pool:
                for result in pool.map(function, jobs, chunksize=1):
                    results.append(result)
                    progress.update(1)
        else:
            for job in jobs:
                results.append(function(job))
                progress.update(1)
    return results


def prepare_index(root: Path, index_dir: Path, workers: int) -> dict:
    from model.training.prepare_data import PrepareSettings, prepare

    settings = PrepareSettings(root=str(root.resolve()), camera_labels=str((root / "camera_labels").resolve()),
                               scenario_labels=None, val_fraction=0.1)
    report = prepare(root, index_dir, settings, workers=workers, restart=True)
    if report["skipped"]:
        raise ValueError(f"prepare-data skipped generated clips: {report['skipped']}")
    return report


# ---- training ------------------------------------------------------------------------------------
def _train_config(index_dir: Path, out_dir: Path, image_cache: Path, model: dict[str, Any], steps: int, lr: float,
                  config: DemoTrainingConfig, statistics: str = "index"):
    from model.training.config import config_from_dict

    return config_from_dict({
        "model": model,
        "data": {"index": str(index_dir), "statistics": statistics, "image_cache": str(image_cache),
                 "num_workers": 0, "pin_memory": False},
        "optim": {"max_steps": steps, "global_batch_size": config.batch_size, "per_device_batch_size": config.batch_size,
                  "action_lr": lr, "vlm_lr": lr, "warmup_steps": max(1, steps // 20), "min_lr_ratio": 0.05,
                  "optimizer": "adamw", "precision": "fp32"},
        "run": {"out_dir": str(out_dir), "seed": config.seed, "save_every_steps": steps, "keep_last": 1,
                "validate_every_steps": steps, "tensorboard": False, "device": "cpu", "log_every_steps": 10},
    }, source="demo training")


def initial_model(preset: str, index_dir: Path, out_dir: Path, seed: int) -> Path:
    """A randomly initialised `preset` saved with the index's statistics, the demo prompt ids and equal
    router class weights, as the starting point of training (model.init = pretrained).

    The presets carry the authors' label counts, whose inverse-frequency focal weights favour the
    side cameras up to 27:1 over CAM_BACK; on the demo's roughly balanced labels that only pushes the
    router away from its most frequent class, so both focal losses get equal weights here."""
    import torch

    from model.checkpoints import save_pretrained
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE
    from model.normalization import NormalizationStats
    from model.training.statistics import read_statistics

    config = ModelConfig.preset(preset)
    stats_path = index_dir / "statistics.json"
    loss = dataclasses.replace(config.loss, camera_class_counts=(1,) * len(config.loss.camera_class_counts),
                               scenario_class_counts=(1,) * len(config.loss.scenario_class_counts),
                               **{name: ROUTER_LOSS_WEIGHT for name in ("camera_router_weight_stage1", "action_router_weight_stage1",
                                                                       "camera_router_weight_stage2", "action_router_weight_stage2")})
    config = dataclasses.replace(
        config,
        stats=NormalizationStats.from_dict(read_statistics(stats_path), source=str(stats_path)),
        sequence=dataclasses.replace(config.sequence, prompt_token_ids=tuple(PROMPT_IDS)),
        loss=loss,
    )
    torch.manual_seed(seed)
    return save_pretrained(DriveMoE(config), config, out_dir, dtype=torch.float32,
                           extra={"demo": f"random initialisation of {preset} for agent.demo.training"})


def _train_drivemoe(job: tuple[Path, Path, DemoTrainingConfig]) -> tuple[Path, Path]:
    """DriveMoE stage 1 -> stage 2 from a random initialisation; (stage 1 dir, stage 2 dir)."""
    from model.training.train import run_training

    index_dir, work, config = job
    _set_threads(config.torch_threads)
    cache, runs = work / "image_cache", work / "runs"
    init = initial_model("tiny-drivemoe", index_dir, work / "init" / "drivemoe", config.seed)
    stage1 = _train_config(index_dir, runs / "drivemoe_stage1", cache,
                           {"preset": "tiny-drivemoe", "stage": 1, "init": "pretrained", "init_path": str(init)},
                           config.stage1_steps, config.lr, config, statistics="model")
    stage1_dir = run_training(stage1).final_dir
    stage2 = _train_config(index_dir, runs / "drivemoe_stage2", cache,
                           {"preset": "tiny-drivemoe", "stage": 2, "init": "pretrained", "init_path": str(stage1_dir)},
                           config.stage2_steps, config.stage2_lr, config, statistics="model")
    return stage1_dir, run_training(stage2).final_dir


def _train_drivepi0(job: tuple[Path, Path, DemoTrainingConfig]) -> Path:
    from model.training.train import run_training

    index_dir, work, config = job
    _set_threads(config.torch_threads)
    init = initial_model("tiny-drivepi0", index_dir, work / "init" / "drivepi0", config.seed)
    pi0 = _train_config(index_dir, work / "runs" / "drivepi0", work / "image_cache_pi0",
                        {"preset": "tiny-drivepi0", "stage": 1, "init": "pretrained", "init_path": str(init)},
                        config.drivepi0_steps, config.lr, config, statistics="model")
    return run_training(pi0).final_dir


def _set_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def _second_bar_process() -> None:
    # tqdm (>= 4.66) reads TQDM_* defaults from the environment: the second process draws its bar on line 2
    import os

    os.environ["TQDM_POSITION"] = "1"


def train_models(index_dir: Path, work: Path, config: DemoTrainingConfig) -> dict[str, Path]:
    """DriveMoE stage 1 -> stage 2, and Drive-pi0; returns the final model folders. With two or more
    workers the two models train side by side in two processes (each with `torch_threads` threads)."""
    job = (index_dir, work, config)
    if config.workers < 2:
        stage1_dir, stage2_dir = _train_drivemoe(job)
        return {"drivemoe_stage1": stage1_dir, "drivemoe": stage2_dir, "drivepi0": _train_drivepi0(job)}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as first, \
            ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_second_bar_process) as second:
        drivemoe = first.submit(_train_drivemoe, job)
        drivepi0 = second.submit(_train_drivepi0, job)
        stage1_dir, stage2_dir = drivemoe.result()
        pi0_dir = drivepi0.result()
    return {"drivemoe_stage1": stage1_dir, "drivemoe": stage2_dir, "drivepi0": pi0_dir}


# ---- evaluation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipScores:
    """One held-out clip replayed with one model: sums so that clips pool into groups."""

    clip: str
    group: str  # the scenario kind, and the variant for lane changes ("lane_change/wait")
    ade_sum: float
    fde_sum: float
    frames: int
    camera_confusion: list[list[int]] | None
    skill_right: int
    skill_total: int


def _replay_clip(job: tuple[Path, str, Path, str, str, Path]) -> ClipScores:
    from agent.debugger.replay import ReplayConfig, run_replay

    model_dir, name, root, clip, group, out_dir = job
    policy = _cached_policy(model_dir)
    result = run_replay(root / clip, policy, out_dir / name / clip, root / "camera_labels" / f"{clip}.json",
                        ReplayConfig(progress=False), model_info={"name": name, "path": str(model_dir)})
    scores = result.scores or {}
    waypoints = scores.get("waypoints", {})
    n = waypoints.get("scored_frames") or 0
    camera = scores.get("camera_router", {})
    skill = scores.get("skill_router", {})
    skill_total = (skill.get("scored_frames") or 0) if skill.get("accuracy") is not None else 0
    return ClipScores(
        clip=clip, group=group,
        ade_sum=waypoints["ade_m"] * n if n else 0.0, fde_sum=waypoints["fde_m"] * n if n else 0.0, frames=n,
        camera_confusion=camera.get("confusion") if camera.get("scored_frames") else None,
        skill_right=round(skill["accuracy"] * skill_total) if skill_total else 0, skill_total=skill_total,
    )


_POLICIES: dict[Path, Any] = {}


def _cached_policy(model_dir: Path):
    from model.policy import DrivePolicy

    if model_dir not in _POLICIES:
        _POLICIES[model_dir] = DrivePolicy.from_pretrained(model_dir)
    return _POLICIES[model_dir]


def _pool(name: str, parameters: int, clips: list[ClipScores]) -> ModelScores:
    frames = sum(c.frames for c in clips)
    matrices = [np.asarray(c.camera_confusion, dtype=np.int64) for c in clips if c.camera_confusion is not None]
    confusion = sum(matrices[1:], matrices[0]) if matrices else None
    skill_total = sum(c.skill_total for c in clips)
    return ModelScores(
        name=name,
        parameters=parameters,
        ade_m=sum(c.ade_sum for c in clips) / frames if frames else None,
        fde_m=sum(c.fde_sum for c in clips) / frames if frames else None,
        camera_accuracy=float(np.trace(confusion) / confusion.sum()) if confusion is not None and confusion.sum() else None,
        camera_confusion=confusion.tolist() if confusion is not None else None,
        skill_accuracy=sum(c.skill_right for c in clips) / skill_total if skill_total else None,
        frames=frames,
    )


def evaluate_models(models: dict[str, Path], root: Path, clips: dict[str, str], out_dir: Path,
                    workers: int, threads: int) -> tuple[list[ModelScores], dict[str, list[ModelScores]]]:
    """Replay every held-out clip (name -> group) with every model (display name -> folder); returns the
    pooled scores per model and, per group, the scores of each model on that group's clips."""
    from model.checkpoints import load_pretrained

    jobs = [(model_dir, name, root, clip, group, out_dir) for name, model_dir in models.items() for clip, group in clips.items()]
    results: list[ClipScores] = _map_with_progress(_replay_clip, jobs, workers, "evaluate held-out clips", "replay", threads)
    by_model = {name: [r for r, job in zip(results, jobs) if job[1] == name] for name in models}
    parameters = {name: sum(p.numel() for p in load_pretrained(path, dtype=None)[0].parameters()) for name, path in models.items()}
    overall = [_pool(name, parameters[name], by_model[name]) for name in models]
    groups = sorted(set(clips.values()), key=_group_order)
    per_group = {group: [_pool(name, parameters[name], [c for c in by_model[name] if c.group == group]) for name in models]
                 for group in groups}
    return overall, per_group


def _group_order(group: str) -> tuple[int, str]:
    kind = group.split("/")[0]
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), group)


def clip_group(seed: int, family: ScenarioFamilyConfig) -> str:
    spec = sample_scenario(seed, family)
    return f"{spec.kind}/{spec.variant}" if spec.variant else spec.kind


# ---- output --------------------------------------------------------------------------------------
def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _score_row(label: str, s: ModelScores, with_parameters: bool) -> str:
    cells = [label] + ([f"{s.parameters:,}"] if with_parameters else []) + [
        _fmt(s.ade_m, "{:.3f}"), _fmt(s.fde_m, "{:.3f}"), _fmt(s.camera_accuracy, "{:.1%}"),
        _fmt(s.skill_accuracy, "{:.1%}"), str(s.frames)]
    return "| " + " | ".join(cells) + " |"


def results_markdown(scores: list[ModelScores], per_group: dict[str, list[ModelScores]], config: DemoTrainingConfig,
                     train_report: dict, seconds: float, held_out: dict[str, str]) -> str:
    from model.cameras import ROUTER_CANDIDATES

    lines = [
        "# Demo weights: measured results",
        "",
        f"Made by `{COMMAND}` in {seconds / 60:.1f} min on this machine's CPU ({config.workers} worker processes, "
        f"torch threads per process: {config.torch_threads}).",
        f"Training: {config.train_clips} procedural clips of {config.family.num_frames} frames (seeds 0..{config.train_clips - 1}, "
        f"{train_report['train_windows']} training windows); DriveMoE stage 1 {config.stage1_steps} steps, "
        f"stage 2 {config.stage2_steps} steps, Drive-pi0 {config.drivepi0_steps} steps, batch {config.batch_size}.",
        f"Evaluation: {len(held_out)} held-out clips (seeds from {held_out_seeds(1)[0]}, never trained on), replayed "
        "through the agent stack (agent/debugger/replay.py); errors pooled over all scored frames.",
        "",
        "| model | parameters | ADE (m) | FDE (m) | camera-router accuracy | skill-router accuracy | scored frames |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_score_row(s.name, s, True) for s in scores]
    lines += ["", "Per scenario kind (lane changes split by variant: \"wait\" = a car close behind in the target lane, "
              "seen only by the back-side camera; \"go\" = the target lane is free):", "",
              "| kind | model | ADE (m) | FDE (m) | camera-router accuracy | skill-router accuracy | scored frames |",
              "|---|---|---|---|---|---|---|"]
    for group, group_scores in per_group.items():
        lines += [_score_row(f"{group} | {s.name}", s, False) for s in group_scores]
    for s in scores:
        if s.camera_confusion is None:
            continue
        lines += ["", f"Camera-router confusion of {s.name} (rows: label, NULL counted as CAM_BACK; columns: choice):", "",
                  "| label \\ choice | " + " | ".join(ROUTER_CANDIDATES) + " |", "|---" * (len(ROUTER_CANDIDATES) + 1) + "|"]
        for name, row in zip(ROUTER_CANDIDATES, s.camera_confusion):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "Held-out clips: " + ", ".join(f"{clip} ({group})" for clip, group in held_out.items()), ""]
    return "\n".join(lines)


def run(out_dir: Path, work: Path, config: DemoTrainingConfig) -> list[ModelScores]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        return _run(out_dir, work, config)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, work: Path, config: DemoTrainingConfig) -> list[ModelScores]:
    import torch

    from model.checkpoints import load_pretrained, save_pretrained

    started = time.perf_counter()
    train_root, held_root = work / "clips_train", work / "clips_held_out"
    for folder in (train_root, held_root, work / "index", work / "init", work / "runs", work / "replays"):
        if folder.exists():
            shutil.rmtree(folder)
    generate_clips(train_root, training_seeds(config.train_clips), config.family, config.workers, "training clips")
    held_out = generate_clips(held_root, held_out_seeds(config.held_out_clips), config.family, config.workers,
                              "held-out clips")
    report = prepare_index(train_root, work / "index", config.workers)
    models = train_models(work / "index", work, config)
    groups = {clip: clip_group(seed, config.family) for clip, seed in zip(held_out, held_out_seeds(config.held_out_clips))}
    scores, per_group = evaluate_models({"DriveMoE (stage 2)": models["drivemoe"], "Drive-pi0": models["drivepi0"]},
                                        held_root, groups, work / "replays", config.workers, config.torch_threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, model_config = load_pretrained(models["drivemoe"], dtype=torch.float32)
    save_pretrained(model, model_config, out_dir, dtype=torch.float32,
                    extra={"demo": f"trained by `{COMMAND}` on procedural scenarios (agent/demo/scenarios.py)",
                           "held_out_scores": {s.name: dataclasses.asdict(s) for s in scores}})
    seconds = time.perf_counter() - started
    (out_dir / "RESULTS.md").write_text(results_markdown(scores, per_group, config, report, seconds, groups), encoding="utf-8")
    results = {"overall": [dataclasses.asdict(s) for s in scores],
               "per_kind": {group: [dataclasses.asdict(s) for s in group_scores] for group, group_scores in per_group.items()},
               "seconds": seconds}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.demo.training", description=__doc__.splitlines()[0])
    defaults = DemoTrainingConfig()
    parser.add_argument("--out", type=Path, default=Path("weights/demo"), help="model folder to write (default weights/demo)")
    parser.add_argument("--work", type=Path, default=Path("runs/demo_training"), help="scratch folder (clips, index, runs)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder afterwards")
    for name in ("train_clips", "held_out_clips", "stage1_steps", "stage2_steps", "drivepi0_steps", "batch_size", "workers"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--frames", type=int, default=defaults.family.num_frames, help="frames per clip (10 Hz)")
    args = parser.parse_args(argv)
    try:
        config = DemoTrainingConfig(
            train_clips=args.train_clips, held_out_clips=args.held_out_clips,
            family=dataclasses.replace(defaults.family, num_frames=args.frames),
            stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, drivepi0_steps=args.drivepi0_steps,
            batch_size=args.batch_size, workers=args.workers, keep_work=args.keep_work,
        )
        scores = run(args.out, args.work, config)
    except (ValueError, FileNotFoundError, DriveMoEError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for s in scores:
        print(f"{s.name}: ADE {_fmt(s.ade_m, '{:.3f}')} m, FDE {_fmt(s.fde_m, '{:.3f}')} m, "
              f"camera router {_fmt(s.camera_accuracy, '{:.1%}')}, skill router {_fmt(s.skill_accuracy, '{:.1%}')}")
    print(f"model and RESULTS.md written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
