"""Counterfactual routing: what the trajectory would have been under another camera or skill-expert choice.

For one observation the network runs once more per alternative, batched:
  - one vision-tower call encodes the two fronts and all five candidate cameras together;
  - camera alternatives: one prefix call with one row per candidate forced as the first
    chosen view (the other top-K slots keep the router's next choices); the front tokens, the text
    embeddings and the ego-state input are computed once and shared by every row (the transformer's
    keys/values depend on the view, so they are not shared);
  - expert alternatives: the chosen camera's prefix keys/values are reused (the action router acts
    on the action stream only), one row per skill expert, each forced with weight 1 (as ground-truth
    expert selection does in training);
  - both kinds of rows run in one denoising call (camera rows keep the router's expert choice).
All rows start from the observation's own flow noise, so the row of the router's own camera choice
reproduces the actual prediction and the differences come from the routing alone. Sensitivity = the
largest ADE (mean over the waypoints) between the chosen trajectory and an alternative, in metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.cameras import FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES
from model.drivemoe import PrefixCache
from model.image_preprocessing import PreparedImage, to_pixel_values
from model.policy import DrivePolicy, Observation, normalize_ego_history
from model.skills import expert_names
from model.transformer import KVCache


@dataclass(frozen=True)
class Alternative:
    kind: str  # "camera" or "expert"
    name: str  # the forced camera, or the forced expert's skill name
    index: int  # candidate index, or expert id
    waypoints: np.ndarray  # [H, 2] metres, ego frame
    ade_m: float  # mean distance to the chosen trajectory over the waypoints
    fde_m: float  # distance at the last waypoint

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "index": self.index, "ade_m": self.ade_m, "fde_m": self.fde_m,
                "waypoints": [[float(x), float(y)] for x, y in self.waypoints]}


@dataclass(frozen=True)
class Counterfactual:
    chosen_cameras: tuple[str, ...]
    chosen_waypoints: np.ndarray  # [H, 2]: the row of the router's own choice
    cameras: tuple[Alternative, ...]  # one per candidate (the chosen one has ADE 0)
    experts: tuple[Alternative, ...]  # one per skill expert; () without an action MoE

    @property
    def most_different(self) -> Alternative:
        return max((*self.cameras, *self.experts), key=lambda a: a.ade_m)

    @property
    def sensitivity_m(self) -> float:
        return self.most_different.ade_m

    def group_sensitivity(self, kind: str) -> float | None:
        values = [a.ade_m for a in (self.cameras if kind == "camera" else self.experts)]
        return max(values) if values else None

    def as_record(self) -> dict:
        """The `counterfactual` object of a trace line (docs/trace-format.md, version 2)."""
        best = self.most_different
        return {
            "chosen_cameras": list(self.chosen_cameras),
            "sensitivity_m": self.sensitivity_m,
            "camera_sensitivity_m": self.group_sensitivity("camera"),
            "expert_sensitivity_m": self.group_sensitivity("expert"),
            "most_different": {"kind": best.kind, "name": best.name},
            "cameras": [a.as_dict() for a in self.cameras],
            "experts": [a.as_dict() for a in self.experts],
        }


def forced_view_sets(selected: list[int], num_candidates: int) -> list[list[int]]:
    """Per candidate c: c first, then the router's other choices in order (K views per row)."""
    rows = []
    for c in range(num_candidates):
        rest = [k for k in selected if k != c]
        rows.append([c, *rest][: len(selected)])
    return rows


def _distances(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    gap = np.linalg.norm(a - b, axis=-1)
    return float(gap.mean()), float(gap[-1])


def _rows_of(cache: PrefixCache, rows: list[int]) -> PrefixCache:
    """A prefix cache of the given rows, repeats allowed (own memory: denoising writes the action columns)."""
    index = torch.tensor(rows, dtype=torch.long, device=cache.kv.keys.device)
    kv = KVCache(cache.kv.keys.index_select(1, index), cache.kv.values.index_select(1, index))
    return PrefixCache(kv=kv, prefix_len=cache.prefix_len, action_mask=cache.action_mask.index_select(0, index.to(cache.action_mask.device)),
                       action_cos=cache.action_cos, action_sin=cache.action_sin)


@torch.inference_mode()
def counterfactual_routing(policy: DrivePolicy, observation: Observation) -> Counterfactual:
    """Trajectories under every camera choice and every forced skill expert (see the module docstring)."""
    cfg = policy.config
    model = policy.model
    if model.camera_router is None:
        raise ValueError(f"model {cfg.name!r} has no camera router: there is no routing to vary")
    device = policy.device
    prepared: dict[str, PreparedImage] = {}
    proprio, goal = normalize_ego_history(observation.ego_history, cfg.stats, cfg.flow.cond_steps)
    proprio, goal = proprio[None].to(device), goal[None].to(device)
    noise = policy._noise([observation])
    order = (FRONT, FRONT_PREVIOUS, *ROUTER_CANDIDATES)
    pixels = np.stack([policy._prepare(observation, camera, prepared) for camera in order])[None]
    tokens = model.encode_images(to_pixel_values(torch.from_numpy(pixels)).to(device))  # [1, 7, P, W]
    front, candidates = tokens[:, :2], tokens[0, 2:]
    logits = model.route_cameras(front[:, 0], goal)
    selected = [int(k) for k in model.select_views(logits)[0].cpu()]
    n = len(ROUTER_CANDIDATES)
    view_ids = torch.tensor(forced_view_sets(selected, n), dtype=torch.long, device=device)  # [n, K]
    views = model.add_view_embeddings(candidates[view_ids], view_ids)
    image_tokens = model.prefix_image_tokens(front.expand(n, -1, -1, -1), views)
    input_ids = policy._input_ids.expand(n, -1)
    attention_mask = policy._attention_mask.expand(n, -1)
    cache = model.build_prefix_cache(input_ids, attention_mask, image_tokens, proprio.expand(n, -1, -1))
    count = cfg.action_moe.num_experts if cfg.use_action_moe else 0
    if count:  # one denoising call: the n camera rows (router's experts), then count rows on the chosen camera's prefix
        cache = _rows_of(cache, [*range(n), *[selected[0]] * count])
        forced = torch.tensor([-1] * n + list(range(count)), dtype=torch.long, device=device)
        out = model.denoise(cache, noise=noise.expand(n + count, -1, -1), forced_experts=forced)
    else:
        out = model.denoise(cache, noise=noise.expand(n, -1, -1))
    paths = cfg.stats.denormalize_trajectory(out["final_action"].float()).cpu().numpy()
    camera_paths, expert_paths = paths[:n], paths[n:]
    chosen = camera_paths[selected[0]]
    cameras = tuple(Alternative("camera", ROUTER_CANDIDATES[c], c, camera_paths[c], *_distances(camera_paths[c], chosen))
                    for c in range(n))
    names = expert_names(count) if count else []
    experts = tuple(Alternative("expert", names[e], e, expert_paths[e], *_distances(expert_paths[e], chosen))
                    for e in range(count))
    return Counterfactual(tuple(ROUTER_CANDIDATES[k] for k in selected), chosen, cameras, experts)
