"""Benchmark: decode + preprocess time per training sample on one core, and what feeds 8 GPUs.

Builds a small clip of real-size (1600x900) quality-20 JPEGs — from a six-camera sample frame
folder when given (e.g. ../shared/drivemoe_reference/sample_frame), else from a smooth synthetic
scene — indexes it, and times WindowDataset.__getitem__ for each stage's image set, with and
without the pre-resized image cache. Prints numbers; asserts nothing.

    python benchmarks/data_loading.py [--sample-frame DIR] [--samples 40] [--gpu-samples-per-s 30]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.cameras import BENCH2DRIVE_CAMERAS
from model.dataset.b2d_clip import B2DClip, write_frame
from model.normalization import NormalizationStats
from model.training.dataset import SampleSpec, WindowDataset
from model.training.index import read_index
from model.training.prepare_data import PrepareSettings, prepare

SAMPLE_FILES = {"CAM_FRONT": "example_f.jpg", "CAM_FRONT_LEFT": "example_fl.jpg", "CAM_FRONT_RIGHT": "example_fr.jpg",
                "CAM_BACK": "example_b.jpg", "CAM_BACK_LEFT": "example_bl.jpg", "CAM_BACK_RIGHT": "example_br.jpg"}


def camera_images(sample_frame: Path | None, frame: int) -> dict[str, np.ndarray]:
    import cv2

    images = {}
    for k, camera in enumerate(BENCH2DRIVE_CAMERAS):
        if sample_frame is not None:
            bgr = cv2.imread(str(sample_frame / SAMPLE_FILES[camera.name]))
            image = np.ascontiguousarray(cv2.resize(bgr, (1600, 900))[:, :, ::-1])
            image = np.roll(image, 7 * frame, axis=1)  # every frame a little different
        else:
            y, x = np.mgrid[0:900, 0:1600]
            base = (np.sin(x / (37.0 + k) + frame) + np.cos(y / 23.0)) * 60 + 128
            image = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1).clip(0, 255).astype(np.uint8)
        images[camera.name] = image
    return images


def build_clip(root: Path, sample_frame: Path | None, frames: int) -> None:
    name = "Accident_Town03_Route101_Weather23"
    for i in range(frames):
        annotation = {"x": 0.5 * i, "y": 0.0, "theta": np.pi / 2, "speed": 5.0, "acceleration": [0.0, 0.0, 9.8],
                      "angular_velocity": [0.0, 0.0, 0.0], "x_command_far": 40.0, "y_command_far": 0.0}
        write_frame(root / name, i, annotation, camera_images(sample_frame, i))


def time_samples(dataset: WindowDataset, samples: int) -> float:
    started = time.perf_counter()
    for i in range(samples):
        dataset[i % len(dataset)]
    return (time.perf_counter() - started) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-frame", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--gpu-samples-per-s", type=float, default=30.0,
                        help="training throughput of one GPU to feed (estimate; measure yours with `drivemoe train`)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        build_clip(tmp_path / "root", args.sample_frame, 24)
        jpeg_bytes = np.mean([B2DClip(tmp_path / "root" / "Accident_Town03_Route101_Weather23").image_path(c.name, 0).stat().st_size
                              for c in BENCH2DRIVE_CAMERAS])
        prepare(tmp_path / "root", tmp_path / "index", PrepareSettings(str(tmp_path / "root"), None, None, 0.0))
        index = read_index(tmp_path / "index")
        rows = index.rows(0)
        stats = NormalizationStats()
        print(f"source: {'sample frame ' + str(args.sample_frame) if args.sample_frame else 'synthetic scene'}, "
              f"1600x900 JPEG q20, mean {jpeg_bytes / 1024:.0f} KiB per image; one core (torch threads = 1)")
        print(f"{'stage':<22} {'images':>6} {'ms/sample':>10} {'cores for 8 GPUs':>17}   cached ms/sample")
        for label, spec in (("Drive-pi0", SampleSpec(args.image_size, 2, "front_pair")),
                            ("DriveMoE stage 1", SampleSpec(args.image_size, 7, "labelled")),
                            ("DriveMoE stage 2", SampleSpec(args.image_size, 7, "all"))):
            plain = time_samples(WindowDataset(index, rows, spec, stats), args.samples)
            cached_set = WindowDataset(index, rows, spec, stats, image_cache=tmp_path / "cache")
            time_samples(cached_set, len(rows))  # fill the cache
            cached = time_samples(cached_set, args.samples)
            n_images = {"front_pair": 2, "labelled": 3, "all": 7}[spec.decode]
            cores = plain * args.gpu_samples_per_s * 8
            print(f"{label:<22} {n_images:>6} {plain * 1e3:>10.1f} {cores:>17.1f}   {cached * 1e3:.2f}")
        per_image = (3 * args.image_size * args.image_size) / 1024
        print(f"cache: {per_image:.0f} KiB per camera image (uint8 .npy, pixel-identical to decoding); "
              f"Bench2Drive-Base ~230k frames x 6 cameras = {230e3 * 6 * per_image / 1024**2:.0f} GiB")


if __name__ == "__main__":
    main()
