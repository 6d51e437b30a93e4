"""GPU preprocessing (agent gpu_preprocessing) against the exact path: grey-level difference per camera
and wall time per inference (front + one routed camera), next to FramePreparer. Prints, no assertions.

    python benchmarks/device_preprocessing_check.py [--device cuda] [--sample-frame DIR] [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_overhead import DEFAULT_SAMPLE, load_frames  # noqa: E402

from agent.runtime.sensor_frames import prepare_sensor_frame  # noqa: E402
from model.cameras import FRONT  # noqa: E402
from model.device_preprocessing import DevicePreparer  # noqa: E402
from model.image_preprocessing import FramePreparer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sample-frame", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    frames = load_frames(args.sample_frame)
    device = DevicePreparer(args.device)
    print(f"device {args.device}, JPEG on {device.jpeg_backend}, sample frames from {args.sample_frame} "
          f"({'found' if args.sample_frame.is_dir() else 'missing: random frames'})")
    for quality in (20, None):
        for camera, frame in frames.items():
            exact = prepare_sensor_frame(frame, args.image_size, quality, camera).chw.astype(int)
            difference = np.abs(device.prepare(frame, args.image_size, quality, camera).chw.astype(int) - exact)
            print(f"  quality {quality}: {camera:<16} mean {difference.mean():.3f}  max {difference.max()}  "
                  f"differing {100 * (difference > 0).mean():.1f}% of values")
    other = next(c for c in frames if c != FRONT)
    for name, preparer in (("DevicePreparer", device), ("FramePreparer(2)", FramePreparer(2))):
        samples = []
        for _ in range(args.repeats + 3):
            start = time.perf_counter()
            preparer.prepare(frames[FRONT], args.image_size, 20, FRONT)
            preparer.prepare(frames[other], args.image_size, 20, other)
            samples.append((time.perf_counter() - start) * 1000.0)
        print(f"  {name:<17} two cameras per inference: median {statistics.median(samples[3:]):.2f} ms wall")


if __name__ == "__main__":
    main()
