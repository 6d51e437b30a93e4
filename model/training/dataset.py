"""Training samples from a window index: decodes only the images a stage needs.

Images go through the agent's pipeline (model.image_preprocessing.prepare_camera_image): the
dataset JPEGs are already quality 20, so no second JPEG pass, then the torchvision-PIL-identical
resize to the model's input size. Which images are decoded:
  stage 1 (DriveMoE): front t, front t-1 and the labelled camera (teacher forcing);
  stage 2 (DriveMoE): all seven;
  Drive-pi0: front t and front t-1.
Slots that a stage does not use stay zero and are never read by the model in that stage.
An optional cache folder of pre-resized images (uint8 .npy per image) skips JPEG decoding.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model.cameras import FRONT, MODEL_IMAGE_ORDER, ROUTER_CANDIDATES
from model.dataset.b2d_clip import B2DClip
from model.image_preprocessing import prepare_camera_image
from model.normalization import NormalizationStats
from model.training.index import WindowIndex

STAGE_IMAGES = ("front_pair", "labelled", "all")


@dataclass(frozen=True)
class SampleSpec:
    """What the dataset produces for one training run."""

    image_size: int
    num_images: int  # 7 for DriveMoE, 2 for Drive-pi0
    decode: str  # "labelled" (stage 1), "all" (stage 2), "front_pair" (Drive-pi0)

    def __post_init__(self) -> None:
        if self.decode not in STAGE_IMAGES:
            raise ValueError(f"decode must be one of {STAGE_IMAGES}, got {self.decode!r}")
        if self.num_images not in (2, len(MODEL_IMAGE_ORDER)):
            raise ValueError(f"num_images must be 2 or {len(MODEL_IMAGE_ORDER)}, got {self.num_images}")
        if self.decode != "front_pair" and self.num_images != len(MODEL_IMAGE_ORDER):
            raise ValueError(f"decode={self.decode!r} needs all {len(MODEL_IMAGE_ORDER)} image slots")


def image_slots(spec: SampleSpec, camera_class: int) -> list[int]:
    """Indices into MODEL_IMAGE_ORDER to decode for a sample with this camera label."""
    if spec.decode == "front_pair":
        return [0, 1]
    if spec.decode == "labelled":
        return [0, 1, 2 + int(camera_class)]
    return list(range(len(MODEL_IMAGE_ORDER)))


def _source_of_slot(slot: int, frame: int, first_frame: int = 0) -> tuple[str, int]:
    """(camera, frame) read for an image slot: slot 1 is the front camera one 10 Hz frame earlier,
    the clip's first frame again for a window at the clip start (as the authors' dataset.py does)."""
    if slot == 0:
        return FRONT, frame
    if slot == 1:
        return FRONT, max(frame - 1, first_frame)
    return ROUTER_CANDIDATES[slot - 2], frame


class WindowDataset(Dataset):
    """Rows of one split of a WindowIndex as model-ready tensors (see `__getitem__`)."""

    def __init__(
        self,
        index: WindowIndex,
        rows: np.ndarray,
        spec: SampleSpec,
        stats: NormalizationStats,
        image_cache: Path | None = None,
    ) -> None:
        self.index = index
        self.rows = np.asarray(rows, dtype=np.int64)
        self.spec = spec
        self.stats = stats
        self.image_cache = Path(image_cache) if image_cache is not None else None
        self._clips: dict[int, B2DClip] = {}

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def _clip(self, clip_id: int) -> B2DClip:
        if clip_id not in self._clips:
            self._clips[clip_id] = B2DClip(self.index.root / self.index.clips[clip_id])
        return self._clips[clip_id]

    def cache_path(self, clip_id: int, camera: str, frame: int) -> Path:
        assert self.image_cache is not None
        return self.image_cache / str(self.spec.image_size) / self.index.clips[clip_id] / camera / f"{frame:05d}.npy"

    def load_image(self, clip_id: int, camera: str, frame: int) -> np.ndarray:
        """uint8 [3, S, S] of one camera frame, through the cache when one is configured."""
        if self.image_cache is not None:
            path = self.cache_path(clip_id, camera, frame)
            if path.exists():
                return np.load(path)
        rgb = self._clip(clip_id).read_image(camera, frame)
        chw = prepare_camera_image(rgb, self.spec.image_size, jpeg_quality=None, camera=camera).chw
        if self.image_cache is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a unique temporary name (no global RNG: it must not disturb exact resume)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp.npy")
            np.save(tmp, chw)
            tmp.replace(path)
        return chw

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        """A dict: images uint8 [n_img, 3, S, S]; image_mask bool [n_img] (decoded slots);
        proprio [5, 10], goal [2] and actions [10, 2] normalised float32; camera_id, scenario_id
        int64; row int64 (the index row, for tracing)."""
        row = int(self.rows[item])
        a = self.index.arrays
        clip_id = int(a["clip"][row])
        frame = int(a["frame"][row])
        camera_class = int(a["camera"][row])
        size = self.spec.image_size
        images = np.zeros((self.spec.num_images, 3, size, size), dtype=np.uint8)
        mask = np.zeros(self.spec.num_images, dtype=bool)
        first_frame = self._clip(clip_id).frame_indices[0]
        for slot in image_slots(self.spec, camera_class):
            camera, source_frame = _source_of_slot(slot, frame, first_frame)
            images[slot] = self.load_image(clip_id, camera, source_frame)
            mask[slot] = True
        ego = torch.from_numpy(np.asarray(a["ego_state"][row], dtype=np.float32))
        proprio = self.stats.normalize_ego_state(ego[:, 0], ego[:, 1:4], ego[:, 4:7], ego[:, 7], ego[:, 8], ego[:, 9])
        goal = self.stats.normalize_goal(ego[:, 8], ego[:, 9])
        actions = self.stats.normalize_trajectory(torch.from_numpy(np.asarray(a["actions"][row], dtype=np.float32)))
        return {
            "images": torch.from_numpy(images),
            "image_mask": torch.from_numpy(mask),
            "proprio": proprio.float(),
            "goal": goal.float(),
            "actions": actions.float(),
            "camera_id": torch.tensor(camera_class, dtype=torch.int64),
            "scenario_id": torch.tensor(int(a["skill"][row]), dtype=torch.int64),
            "row": torch.tensor(row, dtype=torch.int64),
        }
