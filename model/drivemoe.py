"""The DriveMoE / Drive-pi0 network: assembly of the parts, inference phases and the training forward.

Inference is split into phases a caller (model/policy.py) can run separately, because camera images
are prepared lazily:
    front = model.encode_images(pixels[:, :2])                 # [B, 2, P, W_v], already / sqrt(W_v)
    logits = model.route_cameras(front[:, 0], goal)            # [B, 5]          (DriveMoE only)
    selected = model.select_views(logits)                      # [B, K], best first
    views = model.encode_views(candidate_pixels_of(selected), selected)   # + view embeddings
    cache = model.build_prefix_cache(input_ids, attention_mask, model.prefix_image_tokens(front, views), proprio)
    out = model.denoise(cache, noise=noise)                    # only the action stream runs per step
`infer_action` chains them from the fixture-style 7-image (DriveMoE) or 2-image (Drive-pi0) tensor;
`infer_action_uncached` recomputes the whole sequence at every step (reference path for tests).
The module does no file IO and no preprocessing: pixels in [-1, 1], normalised ego state and goal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.camera_router import CameraRouter, CameraRouterOutput
from model.config import ModelConfig
from model.flow_matching import ActionEncoder, flow_matching_loss, interpolate, sample_time, sinusoidal_time_embedding
from model.losses import focal_loss, inverse_frequency_weights
from model.action_moe import load_balancing_loss
from model.transformer import JointModel, JointOutput, KVCache, StreamInput, rope_cos_sin
from model.vision import MultiModalProjector, SiglipVisionTower


@dataclass
class PrefixCache:
    """Everything the denoising steps need: the filled KV cache and the action rows' mask/positions."""

    kv: KVCache  # columns [0, prefix_len) hold vlm + proprio keys/values; the rest is action scratch
    prefix_len: int  # max_seq_len + cond_steps
    action_mask: torch.Tensor  # [B, 1, H, T] additive
    action_cos: torch.Tensor
    action_sin: torch.Tensor


def build_attention_mask(attention_mask: torch.Tensor, cond_steps: int, horizon: int) -> torch.Tensor:
    """Boolean block mask [B, 1, T, T] (True = may attend), T = L + cond_steps + horizon.

    With c_b = sum(attention_mask_b): rows [0, c_b) see columns [0, c_b); proprio rows see the valid
    prefix and the proprio block; action rows see the valid prefix, proprio and all action tokens.
    Padding rows see nothing (they are never read) and padding columns are never seen.
    """
    b, seq = attention_mask.shape
    total = seq + cond_steps + horizon
    idx = torch.arange(total, device=attention_mask.device)
    valid = attention_mask.long().sum(dim=-1)
    valid_prefix = idx[None, :] < valid[:, None]  # [B, T]; c_b <= L so only prefix columns qualify
    is_proprio = (idx >= seq) & (idx < seq + cond_steps)
    is_action = idx >= seq + cond_steps
    suffix = idx >= seq
    vlm_rows = valid_prefix[:, :, None] & valid_prefix[:, None, :]
    proprio_rows = is_proprio[None, :, None] & (valid_prefix[:, None, :] | is_proprio[None, None, :])
    action_rows = is_action[None, :, None] & (valid_prefix[:, None, :] | suffix[None, None, :])
    return (vlm_rows | proprio_rows | action_rows).unsqueeze(1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, the dtype's most negative finite value where blocked."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class DriveMoE(nn.Module):
    """The network; module names equal the authors' state_dict keys (without `_orig_mod.`)."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        cfg = config
        kw = {"device": device, "dtype": dtype}
        w_v, w_a = cfg.joint.vlm.hidden_size, cfg.joint.action.hidden_size
        self.embed_tokens = nn.Embedding(cfg.sequence.vocab_size, w_v, **kw)
        self.vision_tower = SiglipVisionTower(cfg.vision, device, dtype)
        self.multi_modal_projector = MultiModalProjector(cfg.vision.hidden_size, w_v, device, dtype)
        self.joint_model = JointModel(cfg, device, dtype)
        self.action_encoder = ActionEncoder(cfg.flow.action_dim, w_a, device, dtype)
        self.proprio_encoder = nn.Linear(cfg.flow.proprio_dim, w_a, **kw)
        self.action_decoder = nn.Linear(w_a, cfg.flow.action_dim, **kw)
        if cfg.use_camera_router:
            self.camera_router: CameraRouter | None = CameraRouter(cfg.camera_router, w_v, device, dtype)
            self.view_embeddings: nn.Embedding | None = nn.Embedding(cfg.camera_router.num_candidates, w_v, **kw)
        else:
            self.camera_router = None
            self.view_embeddings = None

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    # ---- phase 1: images -------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, return_intermediates: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, n, 3, S, S] pixels in [-1, 1] -> [B, n, P, W_v] projected tokens divided by sqrt(W_v).

        One vision-tower call for all B*n images. With `return_intermediates`, also returns the
        tower output [B, n, P, W_s] and the projector output (before the scaling).
        """
        b, n = pixel_values.shape[:2]
        vision_out = self.vision_tower(pixel_values.reshape(b * n, *pixel_values.shape[2:]).to(self.dtype))
        projected = self.multi_modal_projector(vision_out)
        tokens = (projected / (self.config.joint.vlm.hidden_size ** 0.5)).view(b, n, *projected.shape[1:])
        if return_intermediates:
            return tokens, vision_out.view(b, n, *vision_out.shape[1:]), projected.view(b, n, *projected.shape[1:])
        return tokens

    # ---- phase 2: camera routing -----------------------------------------------------------------
    def _require_router(self) -> CameraRouter:
        if self.camera_router is None:
            raise ValueError(f"model {self.config.name!r} has no camera router (use_camera_router is off)")
        return self.camera_router

    def route_cameras_detailed(self, front_tokens: torch.Tensor, goal: torch.Tensor) -> CameraRouterOutput:
        return self._require_router()(front_tokens, goal)

    def route_cameras(self, front_tokens: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """front-t tokens [B, P, W_v] (from encode_images), normalised goal [B, 2] -> logits [B, 5]."""
        return self.route_cameras_detailed(front_tokens, goal).logits

    def select_views(self, logits: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """[B, C] logits -> [B, k] candidate indices, best first (k defaults to camera_router.top_k)."""
        k = self.config.camera_router.top_k if k is None else k
        return torch.topk(logits, k, dim=-1).indices

    @staticmethod
    def gather_candidates(candidate_pixels: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """[B, C, 3, S, S] candidate images, [B, k] indices -> [B, k, 3, S, S] (no host sync)."""
        index = selected.view(*selected.shape, 1, 1, 1).expand(-1, -1, *candidate_pixels.shape[2:])
        return torch.gather(candidate_pixels, 1, index)

    def add_view_embeddings(self, view_tokens: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """view tokens [B, k, P, W_v] + view_embeddings[view_ids] on every token of each block."""
        if self.view_embeddings is None:
            raise ValueError(f"model {self.config.name!r} has no view embeddings (use_camera_router is off)")
        return view_tokens + self.view_embeddings(view_ids).unsqueeze(2)

    def encode_views(self, selected_pixels: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Selected camera images [B, k, 3, S, S] and their candidate ids [B, k] -> prefix blocks."""
        return self.add_view_embeddings(self.encode_images(selected_pixels), selected)

    @staticmethod
    def prefix_image_tokens(front_tokens: torch.Tensor, view_tokens: torch.Tensor | None) -> torch.Tensor:
        """[B, 2, P, W] fronts (+ [B, K, P, W] views) -> [B, 2+K, P, W] in prefix order."""
        return front_tokens if view_tokens is None else torch.cat([front_tokens, view_tokens], dim=1)

    # ---- phase 3: prefix -------------------------------------------------------------------------
    def embed_prefix(self, input_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Merged VLM sequence [B, L, W_v]: image tokens in order at image-token ids, text embeddings
        (unscaled) at other non-pad ids, exact zeros at padding. image_tokens [B, n_blocks, P, W_v]."""
        seq = self.config.sequence
        b = input_ids.shape[0]
        flat_images = image_tokens.reshape(b, -1, image_tokens.shape[-1]).to(self.dtype)
        is_image = input_ids == seq.image_token_id
        is_text = ~is_image & (input_ids != seq.pad_token_id)
        text = self.embed_tokens(input_ids)
        order = (torch.cumsum(is_image.long(), dim=1) - 1).clamp(0, flat_images.shape[1] - 1)
        images = torch.gather(flat_images, 1, order.unsqueeze(-1).expand(-1, -1, flat_images.shape[-1]))
        zeros = torch.zeros((), dtype=text.dtype, device=text.device)
        return torch.where(is_image.unsqueeze(-1), images, torch.where(is_text.unsqueeze(-1), text, zeros))

    def embed_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """[B, cond_steps, proprio_dim] normalised ego state -> [B, cond_steps, W_a]."""
        return self.proprio_encoder(proprio.to(self.dtype))

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.config.joint
        return rope_cos_sin(positions, j.head_dim, j.rope_theta, self.dtype)

    def _positions(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VLM 1..L (padding included); proprio 1..cs; action cs+1..cs+H (not offset past the prefix)."""
        cs, h = self.config.flow.cond_steps, self.config.flow.horizon
        return (torch.arange(1, seq_len + 1, device=device), torch.arange(1, cs + 1, device=device),
                torch.arange(cs + 1, cs + h + 1, device=device))

    def build_prefix_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor,
                           proprio: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> PrefixCache:
        """Run the VLM and proprio streams once over image/text/ego-state and keep their keys/values."""
        cfg = self.config
        b, seq = input_ids.shape
        cs, h = cfg.flow.cond_steps, cfg.flow.horizon
        embeds = self.embed_prefix(input_ids, image_tokens) if inputs_embeds is None else inputs_embeds
        mask = additive_mask(build_attention_mask(attention_mask, cs, h), self.dtype)
        prefix_len = seq + cs
        kv = KVCache.allocate(cfg, b, prefix_len + h, input_ids.device, self.dtype)
        vlm_pos, proprio_pos, action_pos = self._positions(seq, input_ids.device)
        streams = {"vlm": StreamInput(embeds, *self._rope(vlm_pos)), "proprio": StreamInput(self.embed_proprio(proprio), *self._rope(proprio_pos))}
        self.joint_model(streams, mask[:, :, :prefix_len, :prefix_len], cache=kv, cache_offset=0)
        action_cos, action_sin = self._rope(action_pos)
        return PrefixCache(kv=kv, prefix_len=prefix_len, action_mask=mask[:, :, prefix_len:, :], action_cos=action_cos, action_sin=action_sin)

    # ---- phase 4: denoising ----------------------------------------------------------------------
    def action_step(self, cache: PrefixCache, x: torch.Tensor, t: torch.Tensor, forced_experts: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, JointOutput, dict[str, torch.Tensor]]:
        """One velocity evaluation of the action stream against the cached prefix (`forced_experts` [B]:
        each row driven by that one skill expert with weight 1 instead of the router's top-k; -1: the router's)."""
        time_emb = sinusoidal_time_embedding(t, self.config.joint.action.hidden_size, self.config.flow.time_max_period)
        action_embeds = self.action_encoder(x, time_emb)
        out = self.joint_model({"action": StreamInput(action_embeds, cache.action_cos, cache.action_sin)}, cache.action_mask,
                               cache=cache.kv, cache_offset=cache.prefix_len, forced_experts=forced_experts)
        decoder_input = out.hidden["action"]
        velocity = self.action_decoder(decoder_input).float()
        return velocity, out, {"time_embedding": time_emb, "action_embeds": action_embeds, "decoder_input": decoder_input}

    def _denoise_loop(self, step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, JointOutput, dict[str, torch.Tensor]]], batch: int, device: torch.device, noise: torch.Tensor | None,
                      generator: torch.Generator | None, return_intermediates: bool) -> dict[str, torch.Tensor]:
        f = self.config.flow
        n = f.num_inference_steps
        if noise is None:
            noise = torch.randn((batch, f.horizon, f.action_dim), generator=generator, device=device, dtype=torch.float32)
        x = noise.to(device=device, dtype=torch.float32)
        dt = 1.0 / n
        t = torch.zeros(batch, device=device, dtype=torch.float32)
        states = [x]
        records: dict[str, list[torch.Tensor]] = {}
        for _ in range(n):
            velocity, out, extras = step(x, t)
            if out.routing is not None:
                for key in ("logits", "probs", "topk_idx", "topk_weights"):
                    records.setdefault(f"action_router_{key}", []).append(getattr(out.routing, key))
            if return_intermediates:
                records.setdefault("velocity_per_step", []).append(velocity)
                records.setdefault("t_per_step", []).append(t.clone())
                for key, value in extras.items():
                    records.setdefault(f"{key}_per_step", []).append(value)
            x = x + dt * velocity
            t = t + dt
            states.append(x)
        result = {
            "final_action_preclamp": x,
            "final_action": x.clamp(-f.final_action_clip, f.final_action_clip),
            "euler_states": torch.stack(states, dim=1),
        }
        for key, values in records.items():
            stacked = torch.stack(values, dim=0)
            result[key] = stacked.transpose(0, 1) if key == "velocity_per_step" else stacked
        return result

    @torch.no_grad()
    def denoise(self, cache: PrefixCache, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                return_intermediates: bool = False, forced_experts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """N Euler steps x <- x + v/N from noise (given [B, H, A], or drawn with `generator`).
        `forced_experts` ([B] expert ids, -1 = the router's choice) overrides the action router (counterfactuals).

        Returns final_action (clamped), final_action_preclamp, euler_states [B, N+1, H, A] and, for
        DriveMoE, action_router_{logits,probs,topk_idx,topk_weights} [N, B, .]. The Euler state stays
        in fp32 whatever the weights' dtype.
        """
        batch = cache.action_mask.shape[0]
        return self._denoise_loop(lambda x, t: self.action_step(cache, x, t, forced_experts), batch, cache.action_mask.device,
                                  noise, generator, return_intermediates)

    def compile_for_inference(self, vision: bool = True) -> "DriveMoE":
        """torch.compile the joint transformer (and the vision tower) in place; state_dict keys are
        unchanged. Meant for CUDA: fuses the many small element-wise kernels of the denoising steps,
        and combines with `GraphedPrefixAndDenoise`. The first calls compile (minutes at paper scale)."""
        self.joint_model.compile()
        if vision:
            self.vision_tower.compile()
        return self

    # ---- convenience: the whole inference ------------------------------------------------------------
    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        expected = self.config.num_input_images
        if pixel_values.dim() != 5 or pixel_values.shape[1] != expected:
            raise ValueError(f"pixel_values must be [B, {expected}, 3, S, S] for {self.config.name!r}, got {tuple(pixel_values.shape)}")

    def prepare_image_tokens(self, pixel_values: torch.Tensor, goal: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Fronts + camera routing + selected views -> prefix image blocks (and the routing outputs)."""
        self._check_pixels(pixel_values)
        front = self.encode_images(pixel_values[:, :2])
        if self.camera_router is None:
            return {"image_tokens": front}
        if goal is None:
            raise ValueError("DriveMoE needs the normalised goal point (goal [B, 2]) for the camera router")
        logits = self.route_cameras(front[:, 0], goal)
        selected = self.select_views(logits)
        views = self.encode_views(self.gather_candidates(pixel_values[:, 2:], selected), selected)
        return {"image_tokens": self.prefix_image_tokens(front, views), "camera_logits": logits,
                "selected_views": selected, "selected_view": selected[:, 0]}

    @torch.no_grad()
    def infer_action(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     proprio: torch.Tensor, goal: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, return_intermediates: bool = False) -> dict[str, torch.Tensor]:
        """All phases with the KV cache, from the fixture-style image tensor (7 images / 2 images)."""
        routed = self.prepare_image_tokens(pixel_values, goal)
        cache = self.build_prefix_cache(input_ids, attention_mask, routed.pop("image_tokens"), proprio)
        result = self.denoise(cache, noise=noise, generator=generator, return_intermediates=return_intermediates)
        result.update(routed)
        return result

    @torch.no_grad()
    def infer_action_uncached(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              proprio: torch.Tensor, goal: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Reference path: every Euler step runs all three streams over the whole sequence."""
        routed = self.prepare_image_tokens(pixel_values, goal)
        embeds = self.embed_prefix(input_ids, routed.pop("image_tokens"))
        proprio_embeds = self.embed_proprio(proprio)
        f = self.config.flow
        mask = additive_mask(build_attention_mask(attention_mask, f.cond_steps, f.horizon), self.dtype)
        vlm_pos, proprio_pos, action_pos = self._positions(input_ids.shape[1], input_ids.device)
        rope = [self._rope(p) for p in (vlm_pos, proprio_pos, action_pos)]

        def step(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, JointOutput, dict[str, torch.Tensor]]:
            time_emb = sinusoidal_time_embedding(t, self.config.joint.action.hidden_size, f.time_max_period)
            streams = {"vlm": StreamInput(embeds, *rope[0]), "proprio": StreamInput(proprio_embeds, *rope[1]),
                       "action": StreamInput(self.action_encoder(x, time_emb), *rope[2])}
            out = self.joint_model(streams, mask)
            return self.action_decoder(out.hidden["action"]).float(), out, {}

        result = self._denoise_loop(step, input_ids.shape[0], input_ids.device, noise, generator, False)
        result.update(routed)
        return result

    # ---- training --------------------------------------------------------------------------------
    def forward_train(self, batch: dict[str, torch.Tensor], stage: int, gumbel_noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The authors' training forward + CombinedLoss (README 5.8).

        batch: pixel_values [B, n_img, 3, S, S], input_ids, attention_mask, proprio [B, cs, 10],
        actions [B, H, A] (normalised x1); DriveMoE also goal [B, 2] and, for the losses, camera_ids
        and scenario_ids [B]. Optional: t [B] and x0 [B, H, A] (else sampled, with `generator`).
        View selection: stage 1 in train mode = teacher forcing on camera_ids; stage 2 in train mode =
        straight-through Gumbel (tokens from the sampled view, view embedding from the clean argmax);
        eval mode = argmax. Returned losses are already weighted, as the authors return them.
        """
        cfg = self.config
        weights_cam, weights_rt = cfg.loss.router_weights(stage)
        pixel_values = batch["pixel_values"]
        self._check_pixels(pixel_values)
        b = pixel_values.shape[0]
        device = pixel_values.device
        out: dict[str, torch.Tensor] = {}
        front = self.encode_images(pixel_values[:, :2])
        blocks = front
        camera_logits = None
        if self.camera_router is not None:
            camera_logits = self.route_cameras(front[:, 0], batch["goal"])
            if self.training and cfg.camera_router.top_k != 1:
                raise ValueError("training with camera_router.top_k > 1 is not supported (the authors train K = 1)")
            if self.training and stage == 1:
                if "camera_ids" not in batch:
                    raise ValueError("stage-1 training needs batch['camera_ids'] (teacher forcing)")
                view = batch["camera_ids"].long().view(b, 1)
                tokens = self.encode_images(self.gather_candidates(pixel_values[:, 2:], view))
                embedding_index = view
                out["view_tokens_taken_from"] = view[:, 0]
            elif self.training:
                candidates = self.encode_images(pixel_values[:, 2:])
                if gumbel_noise is None:
                    gumbel_noise = -torch.empty_like(camera_logits, dtype=torch.float32).exponential_(generator=generator).log()
                soft = torch.softmax(camera_logits + gumbel_noise.to(camera_logits.dtype), dim=-1)
                taken = soft.argmax(dim=-1)
                hard = F.one_hot(taken, soft.shape[-1]).to(soft.dtype)
                straight_through = (hard - soft.detach()) + soft
                tokens = torch.einsum("bk,bkpw->bpw", straight_through.to(candidates.dtype), candidates).unsqueeze(1)
                embedding_index = camera_logits.argmax(dim=-1, keepdim=True)  # clean argmax (authors' quirk Q2)
                out.update(gumbel_soft=soft, gumbel_hard_straight_through=straight_through, view_tokens_taken_from=taken)
            else:
                view = self.select_views(camera_logits)
                tokens = self.encode_images(self.gather_candidates(pixel_values[:, 2:], view))
                embedding_index = view
                out["view_tokens_taken_from"] = view[:, 0]
            blocks = self.prefix_image_tokens(front, self.add_view_embeddings(tokens, embedding_index))
            out["view_embedding_index"] = embedding_index[:, 0]
        embeds = self.embed_prefix(batch["input_ids"], blocks)
        proprio_embeds = self.embed_proprio(batch["proprio"])
        x1 = batch["actions"].float()
        f = cfg.flow
        x0 = batch["x0"].float() if "x0" in batch else torch.randn(x1.shape, generator=generator, device=device)
        t = batch["t"].float() if "t" in batch else sample_time(b, f, device, generator)
        psi_t = interpolate(x0, x1, t, f.sig_min)
        time_emb = sinusoidal_time_embedding(t, cfg.joint.action.hidden_size, f.time_max_period)
        action_embeds = self.action_encoder(psi_t, time_emb)
        mask = additive_mask(build_attention_mask(batch["attention_mask"], f.cond_steps, f.horizon), self.dtype)
        vlm_pos, proprio_pos, action_pos = self._positions(batch["input_ids"].shape[1], device)
        forced = None
        if self.training and cfg.use_action_moe and cfg.action_moe.ground_truth_expert_selection:
            if "scenario_ids" not in batch:
                raise ValueError("ground-truth expert selection needs batch['scenario_ids']")
            forced = batch["scenario_ids"]
        joint = self.joint_model({"vlm": StreamInput(embeds, *self._rope(vlm_pos)),
                                  "proprio": StreamInput(proprio_embeds, *self._rope(proprio_pos)),
                                  "action": StreamInput(action_embeds, *self._rope(action_pos))}, mask, forced_experts=forced)
        v_psi = self.action_decoder(joint.hidden["action"]).float()
        flow = flow_matching_loss(v_psi, x0, x1, f.sig_min)
        total = cfg.loss.action_weight * flow
        out.update(flow_matching_loss=flow, v_psi=v_psi, psi_t=psi_t, t=t, x0=x0)
        if camera_logits is not None:
            out["camera_logits"] = camera_logits
            if "camera_ids" in batch:
                alpha = inverse_frequency_weights(cfg.loss.camera_class_counts)
                unweighted = focal_loss(camera_logits, batch["camera_ids"], alpha, cfg.loss.focal_gamma)
                out.update(camera_router_loss_unweighted=unweighted, camera_router_loss=weights_cam * unweighted)
                total = total + out["camera_router_loss"]
        if joint.routing is not None:
            out["action_router_logits"] = joint.routing.logits
            if "scenario_ids" in batch:
                alpha = inverse_frequency_weights(cfg.loss.scenario_class_counts)
                unweighted = focal_loss(joint.routing.logits, batch["scenario_ids"], alpha, cfg.loss.focal_gamma)
                out.update(action_router_loss_unweighted=unweighted, action_router_loss=weights_rt * unweighted)
                total = total + out["action_router_loss"]
            if cfg.action_moe.load_balancing_loss_weight > 0:
                out["load_balancing_loss"] = load_balancing_loss(joint.routing)
                total = total + cfg.action_moe.load_balancing_loss_weight * out["load_balancing_loss"]
        out["total_loss"] = total
        return out


class GraphedPrefixAndDenoise:
    """`build_prefix_cache` + `denoise` captured once into a CUDA graph for a fixed batch size.

    The inputs are copied into static buffers and the graph is replayed: one launch instead of
    thousands. The noise must be supplied (the graph holds no generator).
    """

    def __init__(self, model: DriveMoE, batch: int, warmup: int = 2) -> None:
        if model.device.type != "cuda":
            raise ValueError("GraphedPrefixAndDenoise needs the model on a CUDA device")
        cfg = model.config
        dev = model.device
        self.model = model
        self.input_ids = torch.full((batch, cfg.max_seq_len), cfg.sequence.pad_token_id, dtype=torch.long, device=dev)
        self.input_ids[:, : cfg.num_image_tokens] = cfg.sequence.image_token_id
        self.attention_mask = torch.zeros((batch, cfg.max_seq_len), dtype=torch.long, device=dev)
        self.attention_mask[:, : cfg.num_image_tokens + 1] = 1
        self.image_tokens = torch.zeros((batch, cfg.num_prefix_images, cfg.vision.num_patches, cfg.joint.vlm.hidden_size), dtype=model.dtype, device=dev)
        self.proprio = torch.zeros((batch, cfg.flow.cond_steps, cfg.flow.proprio_dim), dtype=torch.float32, device=dev)
        self.noise = torch.zeros((batch, cfg.flow.horizon, cfg.flow.action_dim), dtype=torch.float32, device=dev)
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._run()

    @torch.no_grad()
    def _run(self) -> dict[str, torch.Tensor]:
        cache = self.model.build_prefix_cache(self.input_ids, self.attention_mask, self.image_tokens, self.proprio)
        return self.model.denoise(cache, noise=self.noise)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor,
                 proprio: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Same arguments and result as build_prefix_cache + denoise (outputs are fresh copies)."""
        for static, value in ((self.input_ids, input_ids), (self.attention_mask, attention_mask),
                              (self.image_tokens, image_tokens), (self.proprio, proprio), (self.noise, noise)):
            if tuple(value.shape) != tuple(static.shape):
                raise ValueError(f"graphed inference was captured for shape {tuple(static.shape)}, got {tuple(value.shape)}")
            static.copy_(value)
        self.graph.replay()
        return {k: v.clone() for k, v in self.outputs.items()}

