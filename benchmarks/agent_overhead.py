"""Benchmark: the agent's per-tick overhead outside the model, on six 1600x900 BGRA frames, one core.

A stand-in policy reads what DriveMoE reads (CAM_FRONT, CAM_FRONT_PREVIOUS, one router-selected
camera) and returns fixed waypoints, so everything measured is agent-side work: sensor reading,
BGRA -> RGB, JPEG q20 round trip, resize to the model input (agent.runtime FramePreparer), localisation, route planner, ego history,
controller, trace line and metric_info. Prints per-stage and per-tick figures (no assertions), wall
time and process CPU time (all threads), each camera path next to the issue's yardstick (one camera
prepared the naive way: OpenCV JPEG q20 encode + decode + PIL resize), measured in the same run.

    python benchmarks/agent_overhead.py [--ticks 200] [--image-size 224] [--sample-frame DIR] [--decode-scale 2]
                                        [--prepare-threads 1 2] [--repeats 20]
    taskset -c 0 python benchmarks/agent_overhead.py --prepare-threads 1     # the one-core figure
"""
from __future__ import annotations

import argparse
import io
import math
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from agent.runtime.config import AgentConfig
from agent.runtime.localization import GeoReference, world_to_gps
from agent.runtime.metric_info import MetricInfoRecorder
from agent.runtime.sensor_frames import GNSS_ID, IMU_ID, SPEED_ID, prepare_sensor_frame
from agent.runtime.stack import AgentStack
from agent.runtime.routing_trace import TraceWriter
from model.cameras import BENCH2DRIVE_CAMERAS, FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES
from model.image_preprocessing import FramePreparer, resize_like_torchvision_pil

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "drivemoe_reference" / "sample_frame"
SAMPLE_FILES = ("example_f.jpg", "example_fl.jpg", "example_fr.jpg", "example_b.jpg", "example_bl.jpg", "example_br.jpg")


def load_frames(folder: Path) -> dict[str, np.ndarray]:
    frames = {}
    for camera, name in zip(BENCH2DRIVE_CAMERAS, SAMPLE_FILES):
        bgr = cv2.imread(str(folder / name)) if folder.is_dir() else None
        if bgr is None:  # no sample frame here: random content (JPEG of noise is a pessimistic case)
            bgr = np.random.default_rng(0).integers(0, 256, (900, 1600, 3), dtype=np.uint8)
        frames[camera.name] = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    return frames


class RouterLikePolicy:
    """Reads the images DriveMoE reads, in its order; rotates the selected camera over the candidates."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, observation) -> SimpleNamespace:
        images = observation.images
        images[FRONT], images[FRONT_PREVIOUS]
        selected = ROUTER_CANDIDATES[self.calls % len(ROUTER_CANDIDATES)]
        images[selected]
        self.calls += 1
        return SimpleNamespace(
            waypoints=np.stack([np.arange(10) * 0.5, np.zeros(10)], axis=1),
            camera_logits=np.zeros(5), camera_probs=np.full(5, 0.2), selected_cameras=(selected,),
            action_router_logits=np.zeros((10, 7)), action_router_weights=np.full((10, 3), 1 / 3),
            action_router_experts=np.tile([0, 1, 2], (10, 1)), timings_ms={},
        )


def time_stage(fn, repeats: int) -> tuple[float, float]:
    """(median wall ms, median process CPU ms) of `fn`; the CPU time sums every thread of the process,
    so it is what the work would cost on one core; wall time is what the agent waits on this machine."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append((time.process_time() - cpu) * 1000.0)
        walls.append((time.perf_counter() - wall) * 1000.0)
    return statistics.median(walls), statistics.median(cpus)


def naive_camera(bgra: np.ndarray, size: int) -> np.ndarray:
    """The issue's yardstick: OpenCV JPEG q20 encode + decode + PIL resize of one frame."""
    bgr = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
    decoded = cv2.imdecode(cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 20])[1], cv2.IMREAD_COLOR)
    return resize_like_torchvision_pil(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), size)


def run_ticks(frames: dict[str, np.ndarray], args: argparse.Namespace, threads: int) -> dict[str, list[float]]:
    ref = GeoReference()
    route = np.stack([np.arange(0.0, 2000.0, 1.0), np.zeros(2000)], axis=1)
    samples: dict[str, list[float]] = {"inference_wall": [], "inference_cpu": [], "hold_wall": [], "tick_wall": [],
                                       "naive_wall": [], "naive_cpu": [], "ratio_wall": [], "ratio_cpu": []}
    with tempfile.TemporaryDirectory() as tmp:
        trace = TraceWriter(tmp)
        metric = MetricInfoRecorder(Path(tmp) / "metric_info.json", every=200)
        config = AgentConfig(checkpoint="none", jpeg_decode_scale=args.decode_scale, prepare_threads=threads)
        stack = AgentStack(config, RouterLikePolicy(), route, ref, args.image_size, trace=trace)
        info = {k: [0.0, 0.0, 0.0] for k in ("acceleration", "angular_velocity", "forward_vector", "right_vector", "location", "rotation")}
        for tick in tqdm(range(args.ticks), desc=f"ticks ({threads} prepare thread{'s' if threads > 1 else ''})", unit="tick"):
            gnss = world_to_gps(np.array([0.2 * tick, 0.0]), ref)
            data = {name: (tick, frame) for name, frame in frames.items()}
            data[GNSS_ID] = (tick, np.array([gnss[0], gnss[1], 0.0]))
            data[IMU_ID] = (tick, np.array([0.0, 0.0, 9.81, 0.0, 0.0, 0.0, math.pi / 2]))
            data[SPEED_ID] = (tick, {"speed": 4.0})
            wall, cpu = time.perf_counter(), time.process_time()
            out = stack.tick(data, tick * 0.05)
            metric.record(tick, info)
            cpu_ms = (time.process_time() - cpu) * 1000.0
            wall_ms = (time.perf_counter() - wall) * 1000.0
            samples["tick_wall"].append(wall_ms)
            if out.inferred:
                samples["inference_wall"].append(wall_ms)
                samples["inference_cpu"].append(cpu_ms)
                # the yardstick right after, so a shared machine's load drifts little between the two
                naive_wall, naive_cpu = time_stage(lambda: naive_camera(frames[FRONT], args.image_size), 1)
                samples["naive_wall"].append(naive_wall)
                samples["naive_cpu"].append(naive_cpu)
                samples["ratio_wall"].append(wall_ms / naive_wall)
                samples["ratio_cpu"].append(cpu_ms / naive_cpu)
            else:
                samples["hold_wall"].append(wall_ms)
        metric.close()
        trace.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sample-frame", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--decode-scale", type=int, default=1, choices=(1, 2), help="agent config jpeg_decode_scale")
    parser.add_argument("--prepare-threads", type=int, nargs="+", default=[1, 2], help="agent config prepare_threads values to run")
    parser.add_argument("--repeats", type=int, default=20, help="repeats per per-camera stage")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    frames = load_frames(args.sample_frame)

    front = frames[FRONT]
    bgr = cv2.cvtColor(front, cv2.COLOR_BGRA2BGR)
    encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 20])[1]
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    preparers = {n: FramePreparer(n) for n in sorted(set(args.prepare_threads) | {1, 2})}
    stages = {
        "BGRA -> BGR": lambda: cv2.cvtColor(front, cv2.COLOR_BGRA2BGR),
        "JPEG q20 encode": lambda: cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 20]),
        "JPEG decode (OpenCV)": lambda: cv2.imdecode(encoded, cv2.IMREAD_COLOR),
        "JPEG decode (Pillow)": lambda: Image.open(io.BytesIO(encoded.tobytes())).load(),
        "BGR -> RGB": lambda: cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB),
        f"resize to {args.image_size} (PIL)": lambda: resize_like_torchvision_pil(rgb, args.image_size),
        "naive camera (yardstick)": lambda: naive_camera(front, args.image_size),
        "camera, previous exact path": lambda: prepare_sensor_frame(front, args.image_size, 20, FRONT),
        **{f"camera, FramePreparer({n})": (lambda p=p: p.prepare(front, args.image_size, 20, FRONT)) for n, p in preparers.items()},
        "camera, decode scale 2": lambda: prepare_sensor_frame(front, args.image_size, 20, FRONT, 2),
    }
    print(f"per camera image (1600x900 -> {args.image_size}, median of {args.repeats}; CPU = all threads of the process):")
    figures = {}
    for name, fn in stages.items():
        figures[name] = time_stage(fn, args.repeats)
        print(f"  {name:<30} wall {figures[name][0]:7.2f} ms   CPU {figures[name][1]:7.2f} ms")
    for preparer in preparers.values():
        same = np.array_equal(preparer.prepare(front, args.image_size, 20, FRONT).chw, prepare_sensor_frame(front, args.image_size, 20, FRONT).chw)
        print(f"  FramePreparer({preparer.threads}) output bit-identical to the previous exact path: {same}")
        preparer.close()
    for threads in args.prepare_threads:
        samples = run_ticks(frames, args, threads)
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"agent stack, {args.ticks} ticks, inference every 2nd tick, front + selected camera, prepare_threads {threads}, decode scale {args.decode_scale}:")
        print(f"  inference tick  median wall {med['inference_wall']:7.2f} ms  CPU {med['inference_cpu']:7.2f} ms")
        print(f"  naive camera right after each inference tick: median wall {med['naive_wall']:7.2f} ms  CPU {med['naive_cpu']:7.2f} ms")
        print(f"  inference tick / naive camera, median of the per-tick ratios: wall {med['ratio_wall']:.2f}x  CPU {med['ratio_cpu']:.2f}x")
        print(f"  held tick       median wall {statistics.median(samples['hold_wall']):7.2f} ms  (localisation, planner, history, metric_info)")
        print(f"  per tick        mean   wall {statistics.mean(samples['tick_wall']):7.2f} ms")


if __name__ == "__main__":
    main()
