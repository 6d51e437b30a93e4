"""Benchmark: the agent's per-tick overhead outside the model, on six 1600x900 BGRA frames, one core.

A stand-in policy reads what DriveMoE reads (CAM_FRONT, CAM_FRONT_PREVIOUS, one router-selected
camera) and returns fixed waypoints, so everything measured is agent-side work: sensor reading,
BGRA -> RGB, JPEG q20 round trip, resize to the model input, localisation, route planner, ego history,
controller, trace line and metric_info. Prints per-stage and per-tick figures (no assertions).

    python benchmarks/agent_overhead.py [--ticks 200] [--image-size 224] [--sample-frame DIR] [--decode-scale 2]
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from tqdm import tqdm

from agent.runtime.config import AgentConfig
from agent.runtime.localization import GeoReference, world_to_gps
from agent.runtime.metric_info import MetricInfoRecorder
from agent.runtime.sensor_frames import GNSS_ID, IMU_ID, SPEED_ID, prepare_sensor_frame
from agent.runtime.stack import AgentStack
from agent.runtime.routing_trace import TraceWriter
from model.cameras import BENCH2DRIVE_CAMERAS, FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES
from model.image_preprocessing import resize_like_torchvision_pil

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


# CPU time of this thread: on a shared, loaded machine wall time mostly measures the other processes.
clock = time.thread_time


def time_stage(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append((clock() - start) * 1000.0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sample-frame", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--decode-scale", type=int, default=1, choices=(1, 2), help="agent config jpeg_decode_scale")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    frames = load_frames(args.sample_frame)

    front = frames[FRONT]
    bgr = cv2.cvtColor(front, cv2.COLOR_BGRA2BGR)
    encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 20])[1]
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    stages = {
        "BGRA -> BGR": lambda: cv2.cvtColor(front, cv2.COLOR_BGRA2BGR),
        "JPEG q20 encode": lambda: cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 20]),
        "JPEG decode": lambda: cv2.imdecode(encoded, cv2.IMREAD_COLOR),
        "BGR -> RGB": lambda: cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB),
        f"resize to {args.image_size} (PIL)": lambda: resize_like_torchvision_pil(rgb, args.image_size),
        "whole camera (exact)": lambda: prepare_sensor_frame(front, args.image_size, 20, FRONT),
        "whole camera (scale 2)": lambda: prepare_sensor_frame(front, args.image_size, 20, FRONT, 2),
    }
    print("per camera image (1600x900, one thread, CPU ms, median of 20):")
    for name, fn in stages.items():
        print(f"  {name:<22} {time_stage(fn, 20):7.2f} ms")

    ref = GeoReference()
    route = np.stack([np.arange(0.0, 2000.0, 1.0), np.zeros(2000)], axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        trace = TraceWriter(tmp)
        metric = MetricInfoRecorder(Path(tmp) / "metric_info.json", every=200)
        stack = AgentStack(AgentConfig(checkpoint="none", jpeg_decode_scale=args.decode_scale), RouterLikePolicy(), route, ref, args.image_size, trace=trace)
        info = {k: [0.0, 0.0, 0.0] for k in ("acceleration", "angular_velocity", "forward_vector", "right_vector", "location", "rotation")}
        tick_ms, inference_ms, hold_ms = [], [], []
        for tick in tqdm(range(args.ticks), desc="ticks", unit="tick"):
            gnss = world_to_gps(np.array([0.2 * tick, 0.0]), ref)
            data = {name: (tick, frame) for name, frame in frames.items()}
            data[GNSS_ID] = (tick, np.array([gnss[0], gnss[1], 0.0]))
            data[IMU_ID] = (tick, np.array([0.0, 0.0, 9.81, 0.0, 0.0, 0.0, math.pi / 2]))
            data[SPEED_ID] = (tick, {"speed": 4.0})
            start = clock()
            out = stack.tick(data, tick * 0.05)
            metric.record(tick, info)
            elapsed = (clock() - start) * 1000.0
            tick_ms.append(elapsed)
            (inference_ms if out.inferred else hold_ms).append(elapsed)
        metric.close()
        trace.close()
    print(f"agent stack, {args.ticks} ticks, inference every 2nd tick, 2 cameras prepared per inference, decode scale {args.decode_scale}:")
    print(f"  inference tick  median {statistics.median(inference_ms):7.2f} ms  (front + selected camera prepared)")
    print(f"  held tick       median {statistics.median(hold_ms):7.2f} ms  (localisation, planner, history, metric_info)")
    print(f"  per tick        mean   {statistics.mean(tick_ms):7.2f} ms  (target <= 5 ms)")
    all_six = sum(time_stage(lambda c=c: prepare_sensor_frame(frames[c], args.image_size, 20, c, args.decode_scale), 3) for c in frames)
    print(f"  for comparison: preparing all six cameras would cost ~{all_six:.1f} ms per inference")


if __name__ == "__main__":
    main()
