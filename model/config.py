"""Typed, frozen configuration of the DriveMoE / Drive-pi0 network, with named presets.

One `ModelConfig` describes both models: Drive-pi0 is DriveMoE with `use_camera_router` and
`use_action_moe` off. `ModelConfig.preset(name)` gives the released architectures ("drivemoe-base",
"drivepi0-base") and the reference fixtures' tiny ones; `ModelConfig.from_official(cfg)` reads the
authors' resolved Hydra/OmegaConf config; `to_dict`/`from_dict` round-trip through config.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping

from pydantic import Field

from model.dataclass_dicts import build_dataclass
from model.normalization import NormalizationStats


# range constraints the config reader (model/dataclass_dicts.py) enforces on config.json
Positive = Annotated[float, Field(gt=0)]
UnitOpen = Annotated[float, Field(gt=0, lt=1)]
NonNegative = Annotated[float, Field(ge=0)]


def _require(condition: bool, name: str, value: Any, expectation: str) -> None:
    if not condition:
        raise ValueError(f"model config: {name} = {value!r}: {expectation}")


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (PaliGemma layout)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: Positive = 1e-6

    def __post_init__(self) -> None:
        _require(self.hidden_size % self.num_heads == 0, "vision.hidden_size", self.hidden_size, "must be divisible by vision.num_heads")
        _require(self.image_size % self.patch_size == 0, "vision.image_size", self.image_size, f"must be a multiple of patch_size {self.patch_size}")
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size", "num_channels"):
            _require(getattr(self, name) > 0, f"vision.{name}", getattr(self, name), "must be positive")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class MixtureConfig:
    """Width of one weight group ("mixture") of the joint transformer."""

    hidden_size: int
    intermediate_size: int

    def __post_init__(self) -> None:
        _require(self.hidden_size > 0 and self.intermediate_size > 0, "mixture", (self.hidden_size, self.intermediate_size), "widths must be positive")


@dataclass(frozen=True)
class JointConfig:
    """The mixture-of-transformers: VLM (Gemma), proprio (ego state) and action streams, one attention."""

    num_layers: int = 18
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    rope_theta: Positive = 10000.0
    rms_norm_eps: Positive = 1e-6
    attn_softcap: float = 50.0
    vlm: MixtureConfig = MixtureConfig(2048, 16384)
    proprio: MixtureConfig = MixtureConfig(1024, 4096)
    action: MixtureConfig = MixtureConfig(1024, 4096)

    def __post_init__(self) -> None:
        _require(self.num_layers > 0, "joint.num_layers", self.num_layers, "must be positive")
        _require(self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0, "joint.num_kv_heads", self.num_kv_heads, f"must divide joint.num_heads {self.num_heads}")
        _require(self.head_dim > 0 and self.head_dim % 2 == 0, "joint.head_dim", self.head_dim, "must be positive and even (RoPE)")
        _require(self.proprio.hidden_size == self.action.hidden_size, "joint.proprio.hidden_size", self.proprio.hidden_size, f"must equal joint.action.hidden_size {self.action.hidden_size} (weights are tied)")


@dataclass(frozen=True)
class CameraRouterConfig:
    """Scene-specialised vision MoE: picks `top_k` of the `num_candidates` side/rear cameras."""

    num_candidates: int = 5
    num_heads: int = 8
    waypoint_hidden: int = 128
    top_k: int = 1
    dropout: float = 0.1
    layer_norm_eps: Positive = 1e-5  # the torch default the authors use (SigLIP uses 1e-6)

    def __post_init__(self) -> None:
        _require(1 <= self.top_k <= self.num_candidates, "camera_router.top_k", self.top_k, f"must be in 1..{self.num_candidates}")
        _require(0.0 <= self.dropout < 1.0, "camera_router.dropout", self.dropout, "must be in [0, 1)")


@dataclass(frozen=True)
class ActionMoEConfig:
    """Skill-specialised action MoE in the last `num_moe_layers` layers of the action stream."""

    num_moe_layers: int = 4
    num_experts: int = 7
    top_k: int = 3
    num_shared_experts: int = 1
    router_layer: int | None = None  # None: the last dense layer, num_layers - num_moe_layers - 1
    load_balancing_loss_weight: float = 0.0  # switch-style auxiliary loss; the authors use none
    ground_truth_expert_selection: bool = False  # training only: route to the scenario label's expert

    def __post_init__(self) -> None:
        _require(self.num_moe_layers >= 1, "action_moe.num_moe_layers", self.num_moe_layers, "must be >= 1")
        _require(1 <= self.top_k <= self.num_experts, "action_moe.top_k", self.top_k, f"must be in 1..num_experts ({self.num_experts})")
        _require(self.num_shared_experts >= 0, "action_moe.num_shared_experts", self.num_shared_experts, "must be >= 0")
        _require(self.load_balancing_loss_weight >= 0.0, "action_moe.load_balancing_loss_weight", self.load_balancing_loss_weight, "must be >= 0")


@dataclass(frozen=True)
class FlowConfig:
    """Action chunk, ego-state history and the flow-matching schedule."""

    horizon: int = 10
    action_dim: int = 2
    cond_steps: int = 5
    proprio_dim: int = 10
    sig_min: UnitOpen = 0.001
    num_inference_steps: int = 10
    final_action_clip: Positive = 1.0
    time_max_period: Positive = 10000.0
    time_beta_alpha: Positive = 1.5
    time_beta_beta: Positive = 1.0
    time_max: Annotated[float, Field(gt=0, le=1)] = 0.999

    def __post_init__(self) -> None:
        for name in ("horizon", "action_dim", "cond_steps", "proprio_dim", "num_inference_steps"):
            _require(getattr(self, name) > 0, f"flow.{name}", getattr(self, name), "must be positive")


@dataclass(frozen=True)
class SequenceConfig:
    """Token layout of the image/text prefix: image blocks, then `text_slots` text positions."""

    vocab_size: int = 257216
    image_token_id: int = 257152
    pad_token_id: int = 0
    text_slots: int = 20
    # Token ids of "<bos>predict trajectory\n" (no image tokens, no padding); None: supplied per call.
    prompt_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _require(0 <= self.image_token_id < self.vocab_size, "sequence.image_token_id", self.image_token_id, f"must be < vocab_size {self.vocab_size}")
        _require(0 <= self.pad_token_id < self.vocab_size, "sequence.pad_token_id", self.pad_token_id, f"must be < vocab_size {self.vocab_size}")
        _require(self.text_slots > 0, "sequence.text_slots", self.text_slots, "must be positive")
        if self.prompt_token_ids is not None:
            ids = tuple(int(i) for i in self.prompt_token_ids)
            object.__setattr__(self, "prompt_token_ids", ids)
            _require(0 < len(ids) <= self.text_slots, "sequence.prompt_token_ids", ids, f"must hold 1..{self.text_slots} ids")
            _require(all(0 <= i < self.vocab_size and i not in (self.image_token_id, self.pad_token_id) for i in ids),
                     "sequence.prompt_token_ids", ids, "ids must be in the vocabulary and not the image/pad token")


@dataclass(frozen=True)
class LossConfig:
    """The authors' CombinedLoss: flow matching + focal losses of both routers, weights per stage."""

    action_weight: NonNegative = 1.0
    camera_router_weight_stage1: NonNegative = 10.0
    action_router_weight_stage1: NonNegative = 10.0
    camera_router_weight_stage2: NonNegative = 5.0
    action_router_weight_stage2: NonNegative = 5.0
    focal_gamma: NonNegative = 2.0
    # label counts behind the focal class weights (hard-coded by the authors)
    camera_class_counts: tuple[int, ...] = (35105, 8865, 161717, 13671, 5990)
    scenario_class_counts: tuple[int, ...] = (13304, 1036, 29921, 12064, 5200, 45332, 118491)

    def router_weights(self, stage: int) -> tuple[float, float]:
        """(camera, action) router loss weights of a training stage (1 or 2)."""
        if stage == 1:
            return self.camera_router_weight_stage1, self.action_router_weight_stage1
        if stage == 2:
            return self.camera_router_weight_stage2, self.action_router_weight_stage2
        raise ValueError(f"training stage must be 1 or 2, got {stage!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The whole network. Drive-pi0 = both MoE switches off."""

    name: str = "drivemoe-base"
    use_camera_router: bool = True
    use_action_moe: bool = True
    vision: VisionConfig = VisionConfig()
    joint: JointConfig = JointConfig()
    camera_router: CameraRouterConfig = CameraRouterConfig()
    action_moe: ActionMoEConfig = ActionMoEConfig()
    flow: FlowConfig = FlowConfig()
    sequence: SequenceConfig = SequenceConfig()
    loss: LossConfig = LossConfig()
    stats: NormalizationStats = field(default_factory=NormalizationStats)

    def __post_init__(self) -> None:
        if self.use_action_moe:
            m = self.action_moe
            _require(m.num_moe_layers < self.joint.num_layers, "action_moe.num_moe_layers", m.num_moe_layers,
                     f"must be < joint.num_layers {self.joint.num_layers} (the router reads a dense layer)")
            _require(0 <= self.router_layer < self.first_moe_layer, "action_moe.router_layer", m.router_layer,
                     f"must be a dense layer before the first MoE layer {self.first_moe_layer}")
        if self.use_camera_router:
            _require(self.joint.vlm.hidden_size % self.camera_router.num_heads == 0, "camera_router.num_heads",
                     self.camera_router.num_heads, f"must divide the VLM width {self.joint.vlm.hidden_size}")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def num_prefix_images(self) -> int:
        """Image blocks in the VLM prefix: front t, front t-1, then the selected camera(s)."""
        return 2 + (self.camera_router.top_k if self.use_camera_router else 0)

    @property
    def num_input_images(self) -> int:
        """Images in the fixture-style input tensor: 7 for DriveMoE, 2 for Drive-pi0."""
        return 2 + (self.camera_router.num_candidates if self.use_camera_router else 0)

    @property
    def num_image_tokens(self) -> int:
        return self.num_prefix_images * self.vision.num_patches

    @property
    def max_seq_len(self) -> int:
        return self.num_image_tokens + self.sequence.text_slots

    @property
    def first_moe_layer(self) -> int:
        return self.joint.num_layers - self.action_moe.num_moe_layers

    @property
    def router_layer(self) -> int:
        r = self.action_moe.router_layer
        return self.first_moe_layer - 1 if r is None else r

    # ---- presets ---------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """A named architecture: drivemoe-base, drivepi0-base, tiny-drivemoe, tiny-drivepi0."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]()

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stats"] = self.stats.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "ModelConfig":
        """Inverse of `to_dict`; unknown or malformed fields are errors that name the field."""
        return build_dataclass(cls, data, source, builders={NormalizationStats: _read_stats})

    @classmethod
    def from_official(cls, resolved: Mapping[str, Any], stats: NormalizationStats | None = None,
                      name: str = "official", prompt_token_ids: tuple[int, ...] | None = None) -> "ModelConfig":
        """Build from the authors' resolved merged config (their YAML / `resolved_merged_config`)."""
        try:
            return _from_official(cls, resolved, stats, name, prompt_token_ids)
        except KeyError as error:
            raise ValueError(f"official config: missing field {error}") from None
        except (TypeError, AttributeError) as error:
            raise ValueError(f"official config: malformed value ({error})") from None


def _read_stats(values: Mapping[str, Any], source: str) -> NormalizationStats:
    return NormalizationStats.from_dict(values, source=source)


def _get(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"official config: missing field {path!r}")
        node = node[part]
    return node


def _from_official(cls: type[ModelConfig], cfg: Mapping[str, Any], stats: NormalizationStats | None, name: str,
                   prompt_token_ids: tuple[int, ...] | None) -> ModelConfig:
    vis = _get(cfg, "vision.config")
    jc = _get(cfg, "joint.config")
    mixture = _get(cfg, "mixture")
    if _get(cfg, "action_expert_adaptive_mode") is not None:
        raise ValueError("official config: action_expert_adaptive_mode must be null (only the pi0-style action encoder is supported)")
    vision = VisionConfig(
        hidden_size=int(vis["hidden_size"]), intermediate_size=int(vis["intermediate_size"]),
        num_layers=int(vis["num_hidden_layers"]), num_heads=int(vis["num_attention_heads"]),
        image_size=int(vis["image_size"]), patch_size=int(vis["patch_size"]),
        num_channels=int(vis.get("num_channels", 3)), layer_norm_eps=float(vis.get("layer_norm_eps", 1e-6)),
    )
    projection = _get(cfg, "vision_projector.config.vision_config")
    joint = JointConfig(
        num_layers=int(jc["num_hidden_layers"]), num_heads=int(jc["num_attention_heads"]),
        num_kv_heads=int(jc["num_key_value_heads"]), head_dim=int(jc["head_dim"]),
        rope_theta=float(jc["rope_theta"]), rms_norm_eps=float(jc["rms_norm_eps"]),
        vlm=MixtureConfig(int(mixture["vlm"]["hidden_size"]), int(mixture["vlm"]["intermediate_size"])),
        proprio=MixtureConfig(int(mixture["proprio"]["hidden_size"]), int(mixture["proprio"]["intermediate_size"])),
        action=MixtureConfig(int(mixture["action"]["hidden_size"]), int(mixture["action"]["intermediate_size"])),
    )
    if int(projection["projection_dim"]) != joint.vlm.hidden_size or int(projection["hidden_size"]) != vision.hidden_size:
        raise ValueError(f"official config: vision_projector {projection} does not map vision width {vision.hidden_size} to VLM width {joint.vlm.hidden_size}")
    is_moe = "num_moe_layers" in jc or "DriveMoE" in str(_get(cfg, "joint").get("_target_", ""))
    num_candidates = int(cfg.get("num_camera_views_selected", 5))
    n_images = int(vis["num_image_tokens"]) // vision.num_patches
    top_k = n_images - 2 if is_moe else 1
    max_seq_len = int(_get(cfg, "max_seq_len"))
    text_slots = max_seq_len - int(vis["num_image_tokens"])
    if text_slots <= 0:
        raise ValueError(f"official config: max_seq_len {max_seq_len} leaves no text slots after {vis['num_image_tokens']} image tokens")
    loss = LossConfig()
    criterion = cfg.get("criterion")
    if is_moe and isinstance(criterion, Mapping):
        stage = int(cfg.get("stage", 2))
        cam, act = float(criterion.get("camera_router_weight", 5.0)), float(criterion.get("action_router_weight", 5.0))
        loss = dataclasses.replace(loss, action_weight=float(criterion.get("action_weight", 1.0)), focal_gamma=float(criterion.get("gamma", 2.0)),
                                   **({"camera_router_weight_stage1": cam, "action_router_weight_stage1": act} if stage == 1
                                      else {"camera_router_weight_stage2": cam, "action_router_weight_stage2": act}))
    action_moe = ActionMoEConfig(
        num_moe_layers=int(jc.get("num_moe_layers", 4)), num_experts=int(jc.get("num_skill_experts", cfg.get("num_scenario_selected", 7))),
        top_k=int(jc.get("num_experts_per_tok", 3)), num_shared_experts=int(jc.get("num_shared_experts", 1)),
    )
    return cls(
        name=name,
        use_camera_router=is_moe,
        use_action_moe=is_moe,
        vision=vision,
        joint=joint,
        camera_router=CameraRouterConfig(num_candidates=num_candidates, top_k=top_k),
        action_moe=action_moe,
        flow=FlowConfig(
            horizon=int(_get(cfg, "horizon_steps")), action_dim=int(_get(cfg, "action_dim")),
            cond_steps=int(_get(cfg, "cond_steps")), proprio_dim=int(_get(cfg, "proprio_dim")),
            num_inference_steps=int(cfg.get("num_inference_steps", 10)),
            final_action_clip=float(cfg.get("final_action_clip_value", 1.0)),
        ),
        sequence=SequenceConfig(
            vocab_size=int(_get(cfg, "vocab_size")), image_token_id=int(_get(cfg, "image_token_index")),
            pad_token_id=int(cfg.get("pad_token_id", 0)), text_slots=text_slots, prompt_token_ids=prompt_token_ids,
        ),
        loss=loss,
        stats=stats or NormalizationStats(),
    )


def _drivemoe_base() -> ModelConfig:
    return ModelConfig(name="drivemoe-base")


def _drivepi0_base() -> ModelConfig:
    return ModelConfig(name="drivepi0-base", use_camera_router=False, use_action_moe=False)


def _tiny(moe: bool) -> ModelConfig:
    return ModelConfig(
        name="tiny-drivemoe" if moe else "tiny-drivepi0",
        use_camera_router=moe,
        use_action_moe=moe,
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=32, patch_size=8),
        joint=JointConfig(num_layers=6, num_heads=4, num_kv_heads=2, head_dim=16,
                          vlm=MixtureConfig(64, 128), proprio=MixtureConfig(32, 64), action=MixtureConfig(32, 64)),
        sequence=SequenceConfig(vocab_size=192, image_token_id=128, pad_token_id=0, text_slots=8),
    )


PRESETS = {
    "drivemoe-base": _drivemoe_base,
    "drivepi0-base": _drivepi0_base,
    "tiny-drivemoe": lambda: _tiny(True),
    "tiny-drivepi0": lambda: _tiny(False),
}
