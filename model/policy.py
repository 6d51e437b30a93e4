"""The inference entry point (docs/policy-api.md): raw observation in, waypoints in metres and routing out.

`DrivePolicy` owns everything between the sensors' numbers and the network's normalised tensors:
image preprocessing (JPEG round trip, resize, pixel scaling), ego-state and goal normalisation, the
prompt tokens (ids stored in the config, no tokenizer), the flow noise (seeded or given) and the
un-normalisation of the trajectory. Camera images are read lazily: the two front images first, then
the camera router, then only the selected camera(s).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from model.cameras import FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES
from model.config import ModelConfig
from model.drivemoe import DriveMoE, GraphedPrefixAndDenoise
from model.ego_state import EgoStateHistory
from model.errors import CheckpointError, ObservationError
from model.fusion import fuse_projections
from model.graphs import CapturedGraph
from model.image_preprocessing import (
    PreparedImage,
    prepare_camera_image,
    to_pixel_values,
    validate_prepared_image,
)
from model.normalization import NormalizationStats
from model.prompt import build_prompt_tokens

TIMING_KEYS: tuple[str, ...] = ("preprocess", "vision", "router", "prefix", "denoise", "total")


@dataclass(frozen=True)
class Observation:
    """One model step's input, in raw units (see docs/policy-api.md)."""

    images: Mapping[str, "np.ndarray | PreparedImage"]  # keys from model.cameras.MODEL_IMAGE_ORDER, read lazily
    ego_history: EgoStateHistory  # config.flow.cond_steps steps, oldest first
    jpeg_quality: int | None = 20  # JPEG round trip for raw frames; None: frames are dataset JPEGs already
    seed: int | None = None  # seeded flow noise; with neither seed nor noise the draw is unseeded
    noise: np.ndarray | None = None  # explicit initial noise [H, A]


@dataclass(frozen=True)
class Prediction:
    """The policy's output for one observation (numpy, no batch dimension)."""

    waypoints: np.ndarray  # [H, 2] metres, ego frame (x forward, y right)
    normalized_actions: np.ndarray  # [H, 2] in [-1, 1]
    camera_logits: np.ndarray | None  # [5] over ROUTER_CANDIDATES (None for Drive-pi0)
    camera_probs: np.ndarray | None  # [5]
    selected_cameras: tuple[str, ...]  # top-K camera names, best first; () for Drive-pi0
    action_router_logits: np.ndarray | None  # [N_steps, E]
    action_router_weights: np.ndarray | None  # [N_steps, k]
    action_router_experts: np.ndarray | None  # [N_steps, k] expert ids, by descending weight
    prepared_images: dict[str, PreparedImage] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)  # per call (shared by a batch's predictions)


def normalize_ego_history(history: EgoStateHistory, stats: NormalizationStats, cond_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ego-state history -> (normalised proprio [T, 10], normalised goal point [2]), float32.

    The goal point is the normalised far command of the newest step. Errors name the bad field.
    """
    if not isinstance(history, EgoStateHistory):
        raise ObservationError(f"ego_history must be an EgoStateHistory, got {type(history).__name__}")
    try:
        raw = torch.from_numpy(history.as_array())  # validates shapes and finiteness per field
    except ValueError as error:
        raise ObservationError(f"ego_history: {error}") from None
    if raw.shape[0] != cond_steps:
        raise ObservationError(f"ego_history has {raw.shape[0]} steps, the model expects cond_steps = {cond_steps}")
    proprio = stats.normalize_ego_state(raw[:, 0], raw[:, 1:4], raw[:, 4:7], raw[:, 7], raw[:, 8], raw[:, 9])
    goal = stats.normalize_goal(raw[:, 8], raw[:, 9])
    return proprio, goal


def _read_image(images: Mapping[str, object], camera: str) -> object:
    if not isinstance(images, Mapping):
        raise ObservationError(f"observation.images must be a Mapping camera name -> image, got {type(images).__name__}")
    try:
        return images[camera]
    except KeyError:
        try:
            available = sorted(images.keys())
        except Exception:  # a lazy mapping may not list its keys cheaply
            available = "unknown"
        raise ObservationError(f"camera {camera!r} missing from observation.images (available: {available})") from None


class DrivePolicy:
    """Inference wrapper around a DriveMoE / Drive-pi0 network (see docs/policy-api.md)."""

    def __init__(self, model: DriveMoE, config: ModelConfig | None = None, prompt_token_ids: Sequence[int] | None = None,
                 cuda_graphs: bool = False, reuse_previous_front: bool = True, graph_vision: bool = False) -> None:
        """`cuda_graphs`: on a CUDA device, run prefix + denoising as one captured CUDA graph per batch
        size (one launch instead of thousands; replay is exact). Ignored on other devices.
        `reuse_previous_front`: batch 1, when CAM_FRONT_PREVIOUS is the very image (same PreparedImage
        pixels object) that was CAM_FRONT of the previous call, as the agent passes it when augmentation
        is off, its vision tokens from that call are reused: one image through the tower instead of two.
        `graph_vision` (with `cuda_graphs`, CUDA only): two graphs per batch size instead of one, fronts +
        camera router, then the routed views + prefix + denoising, so the vision tower replays too; the
        host reads only the chosen camera ids in between (the lazy image read needs them)."""
        config = model.config if config is None else config
        if prompt_token_ids is not None:
            config = replace(config, sequence=replace(config.sequence, prompt_token_ids=tuple(int(i) for i in prompt_token_ids)))
        ids = config.sequence.prompt_token_ids
        if ids is None:
            raise CheckpointError(
                f"model config {config.name!r} has no sequence.prompt_token_ids: convert the checkpoint with "
                "--tokenizer PALIGEMMA_DIR, or pass prompt_token_ids"
            )
        self.model = model.eval()
        self.config = config
        input_ids, attention_mask = build_prompt_tokens(
            ids, config.num_image_tokens, config.max_seq_len, config.sequence.image_token_id, config.sequence.pad_token_id
        )
        self._input_ids = torch.from_numpy(input_ids).to(model.device)
        self._attention_mask = torch.from_numpy(attention_mask).to(model.device)
        self.cuda_graphs = bool(cuda_graphs) and model.device.type == "cuda"
        self._graphs: dict[int, GraphedPrefixAndDenoise] = {}
        self.graph_vision = bool(graph_vision)
        self._stage_graphs: dict[tuple, CapturedGraph] = {}
        self.reuse_previous_front = bool(reuse_previous_front)
        # (CAM_FRONT pixels, its tokens [1, P, W], the vision weights' versions then)
        self._last_front: tuple[np.ndarray, torch.Tensor, tuple[int, ...] | None] | None = None

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, cuda_graphs: bool = False,
                        fused_projections: bool = True) -> "DrivePolicy":
        """Load a converted folder (model.safetensors + config.json); dtype None keeps the stored one.
        `fused_projections`: fuse Q/K/V and gate/up once here (model/fusion.py; same weights, no copy)."""
        from model.checkpoints import load_pretrained

        model, config = load_pretrained(model_dir, device=device, dtype=dtype)
        if fused_projections:
            fuse_projections(model)
        return cls(model, config, cuda_graphs=cuda_graphs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def uses_camera_router(self) -> bool:
        return self.config.use_camera_router

    def predict(self, observation: Observation) -> Prediction:
        return self.predict_batch([observation])[0]

    # ---- helpers ---------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _prepare(self, observation: Observation, camera: str, prepared: dict[str, PreparedImage]) -> np.ndarray:
        value = _read_image(observation.images, camera)
        if isinstance(value, PreparedImage):
            validate_prepared_image(value, self.image_size, camera)
            image = value
        else:
            image = prepare_camera_image(value, self.image_size, observation.jpeg_quality, camera=camera)  # type: ignore[arg-type]
        prepared[camera] = image
        return image.chw

    def _noise(self, observations: Sequence[Observation]) -> torch.Tensor:
        """[B, H, A] float32; drawn on the CPU so a seed gives the same noise on every device."""
        f = self.config.flow
        shape = (f.horizon, f.action_dim)
        rows = []
        for i, obs in enumerate(observations):
            if obs.noise is not None and obs.seed is not None:
                raise ObservationError(f"observation {i}: give either seed or noise, not both")
            if obs.noise is not None:
                noise = np.asarray(obs.noise)
                if noise.shape != shape:
                    raise ObservationError(f"observation {i}: noise has shape {noise.shape}, expected {shape}")
                if not np.all(np.isfinite(noise)):
                    raise ObservationError(f"observation {i}: noise contains NaN or inf")
                rows.append(torch.from_numpy(noise.astype(np.float32)))
            elif obs.seed is not None:
                generator = torch.Generator().manual_seed(int(obs.seed))
                rows.append(torch.randn(shape, generator=generator, dtype=torch.float32))
            else:
                rows.append(torch.randn(shape, dtype=torch.float32))
        return torch.stack(rows).to(self.device)

    def _vision_weights_version(self) -> tuple[int, ...] | None:
        """Changes whenever a vision-tower or projector weight is updated in place (training, loads);
        None for weights made under inference_mode (no version counter), which then disables reuse."""
        model = self.model
        try:
            return tuple(p._version for m in (model.vision_tower, model.multi_modal_projector) for p in m.parameters())
        except (RuntimeError, AttributeError):  # AttributeError: a network without these parts (test doubles)
            return None

    def _reusable_front(self, prepared: list[dict[str, PreparedImage]]) -> torch.Tensor | None:
        """Tokens [1, P, W] of the previous call's CAM_FRONT when it is this call's CAM_FRONT_PREVIOUS."""
        last = self._last_front
        if (self.reuse_previous_front and last is not None and len(prepared) == 1
                and prepared[0][FRONT_PREVIOUS].chw is last[0] and last[2] is not None
                and last[2] == self._vision_weights_version()):
            return last[1]
        return None

    def _remember_front(self, prepared: list[dict[str, PreparedImage]], tokens: torch.Tensor) -> None:
        if self.reuse_previous_front and len(prepared) == 1:
            self._last_front = (prepared[0][FRONT].chw, tokens[:, 0].clone(), self._vision_weights_version())

    def _encode_fronts(self, front_pixels: torch.Tensor, prepared: list[dict[str, PreparedImage]]) -> torch.Tensor:
        """[B, 2, P, W] tokens of CAM_FRONT and CAM_FRONT_PREVIOUS (the latter reused when possible)."""
        previous = self._reusable_front(prepared)
        if previous is not None:
            tokens = torch.cat([self.model.encode_images(front_pixels[:, :1]), previous.unsqueeze(1)], dim=1)
        else:
            tokens = self.model.encode_images(front_pixels)
        self._remember_front(prepared, tokens)
        return tokens

    # ---- the whole step --------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_batch(self, observations: Sequence[Observation]) -> list[Prediction]:
        """One forward pass for a batch of observations; one Prediction per observation."""
        if len(observations) == 0:
            raise ObservationError("predict_batch needs at least one observation")
        cfg = self.config
        model = self.model
        device = self.device
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        self._sync()
        start = time.perf_counter()

        # Host-side inputs: ego state, goal, noise, fronts.
        clock = time.perf_counter()
        ego = [normalize_ego_history(obs.ego_history, cfg.stats, cfg.flow.cond_steps) for obs in observations]
        proprio = torch.stack([p for p, _ in ego]).to(device)
        goal = torch.stack([g for _, g in ego]).to(device)
        noise = self._noise(observations)
        prepared: list[dict[str, PreparedImage]] = [{} for _ in observations]
        fronts = np.stack([
            np.stack([self._prepare(obs, FRONT, prepared[i]), self._prepare(obs, FRONT_PREVIOUS, prepared[i])])
            for i, obs in enumerate(observations)
        ])
        front_pixels = to_pixel_values(torch.from_numpy(fronts)).to(device)
        timings["preprocess"] += time.perf_counter() - clock

        if self.cuda_graphs and self.graph_vision:
            out, camera_logits, selected = self._graphed_stages(observations, prepared, front_pixels, goal, proprio, noise, timings)
            return self._predictions(out, camera_logits, selected, prepared, timings, start)

        clock = time.perf_counter()
        front_tokens = self._encode_fronts(front_pixels, prepared)
        self._sync()
        timings["vision"] += time.perf_counter() - clock

        camera_logits = selected = view_tokens = None
        if model.camera_router is not None:
            clock = time.perf_counter()
            camera_logits = model.route_cameras(front_tokens[:, 0], goal)
            selected = model.select_views(camera_logits).cpu()  # the host must know which cameras to read
            timings["router"] += time.perf_counter() - clock

            clock = time.perf_counter()
            views = np.stack([
                np.stack([self._prepare(obs, ROUTER_CANDIDATES[int(k)], prepared[i]) for k in selected[i]])
                for i, obs in enumerate(observations)
            ])
            view_pixels = to_pixel_values(torch.from_numpy(views)).to(device)
            timings["preprocess"] += time.perf_counter() - clock

            clock = time.perf_counter()
            view_tokens = model.encode_views(view_pixels, selected.to(device))
            self._sync()
            timings["vision"] += time.perf_counter() - clock

        batch = len(observations)
        input_ids = self._input_ids.expand(batch, -1)
        attention_mask = self._attention_mask.expand(batch, -1)
        image_tokens = model.prefix_image_tokens(front_tokens, view_tokens)
        if self.cuda_graphs:
            # One replay covers both stages; its time is reported under "denoise" and "prefix" stays 0.
            clock = time.perf_counter()
            if batch not in self._graphs:
                self._graphs[batch] = GraphedPrefixAndDenoise(model, batch)
            out = self._graphs[batch](input_ids, attention_mask, image_tokens, proprio, noise.to(device))
            self._sync()
            timings["denoise"] += time.perf_counter() - clock
        else:
            clock = time.perf_counter()
            cache = model.build_prefix_cache(input_ids, attention_mask, image_tokens, proprio)
            self._sync()
            timings["prefix"] += time.perf_counter() - clock

            clock = time.perf_counter()
            out = model.denoise(cache, noise=noise)
            self._sync()
            timings["denoise"] += time.perf_counter() - clock
        return self._predictions(out, camera_logits, selected, prepared, timings, start)

    def _stage(self, key: tuple, fn, inputs: Sequence[torch.Tensor]):
        if key not in self._stage_graphs:
            self._stage_graphs[key] = CapturedGraph(fn, inputs)
        return self._stage_graphs[key](*inputs)

    def _graphed_stages(self, observations, prepared, front_pixels, goal, proprio, noise, timings):
        """Graph 1: fronts (+ reused previous front) and the camera router; the host reads the chosen
        ids and prepares those views; graph 2: views + prefix + denoising. Timed as vision / router /
        preprocess / denoise."""
        model = self.model
        batch = len(observations)
        previous = self._reusable_front(prepared)
        reuse = previous is not None
        routed = model.camera_router is not None

        def fronts_and_router(pixels, goal_in, *previous):
            tokens = model.encode_images(pixels)
            if previous:
                tokens = torch.cat([tokens, previous[0].unsqueeze(1)], dim=1)
            if not routed:
                return (tokens,)
            logits = model.route_cameras(tokens[:, 0], goal_in)
            return tokens, logits, model.select_views(logits)

        clock = time.perf_counter()
        inputs = [front_pixels[:, :1], goal, previous] if reuse else [front_pixels, goal]
        first = self._stage(("fronts", batch, reuse), fronts_and_router, inputs)
        front_tokens = first[0]
        camera_logits = selected = None
        if routed:
            camera_logits, selected = first[1], first[2].cpu()  # the one device -> host read
        self._sync()
        timings["vision"] += time.perf_counter() - clock
        self._remember_front(prepared, front_tokens)

        stage_inputs = [front_tokens, self._input_ids.expand(batch, -1), self._attention_mask.expand(batch, -1), proprio, noise]
        if routed:
            clock = time.perf_counter()
            views = np.stack([
                np.stack([self._prepare(obs, ROUTER_CANDIDATES[int(k)], prepared[i]) for k in selected[i]])
                for i, obs in enumerate(observations)
            ])
            stage_inputs += [to_pixel_values(torch.from_numpy(views)).to(self.device), selected.to(self.device)]
            timings["preprocess"] += time.perf_counter() - clock

        def views_prefix_denoise(fronts, input_ids, attention_mask, proprio_in, noise_in, *view_inputs):
            view_tokens = model.encode_views(*view_inputs) if view_inputs else None
            cache = model.build_prefix_cache(input_ids, attention_mask, model.prefix_image_tokens(fronts, view_tokens), proprio_in)
            return model.denoise(cache, noise=noise_in)

        clock = time.perf_counter()
        out = self._stage(("rest", batch), views_prefix_denoise, stage_inputs)
        self._sync()
        timings["denoise"] += time.perf_counter() - clock
        return out, camera_logits, selected

    def _predictions(self, out, camera_logits, selected, prepared, timings, start) -> list[Prediction]:
        cfg = self.config
        batch = len(prepared)
        actions = out["final_action"].float()
        waypoints = cfg.stats.denormalize_trajectory(actions).cpu().numpy()
        actions_np = actions.cpu().numpy()
        router = {k: out[f"action_router_{k}"].float().cpu().numpy() for k in ("logits", "topk_weights")} if "action_router_logits" in out else None
        experts = out["action_router_topk_idx"].cpu().numpy() if "action_router_topk_idx" in out else None
        logits_np = camera_logits.float().cpu().numpy() if camera_logits is not None else None
        probs_np = torch.softmax(camera_logits.float(), dim=-1).cpu().numpy() if camera_logits is not None else None
        timings["total"] = time.perf_counter() - start
        timings_ms = {k: v * 1000.0 for k, v in timings.items()}

        predictions = []
        for i in range(batch):
            predictions.append(Prediction(
                waypoints=waypoints[i],
                normalized_actions=actions_np[i],
                camera_logits=None if logits_np is None else logits_np[i],
                camera_probs=None if probs_np is None else probs_np[i],
                selected_cameras=() if selected is None else tuple(ROUTER_CANDIDATES[int(k)] for k in selected[i]),
                action_router_logits=None if router is None else router["logits"][:, i],
                action_router_weights=None if router is None else router["topk_weights"][:, i],
                action_router_experts=None if experts is None else experts[:, i],
                prepared_images=prepared[i],
                timings_ms=dict(timings_ms),
            ))
        return predictions
