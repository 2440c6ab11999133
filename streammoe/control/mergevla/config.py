"""Schema of ``experiment=mergevla`` / ``mergevla_smoke`` (``cfg.mergevla``), see
:mod:`streammoe.config` for how schemas are registered and checked.

``device`` places the policy (training and evaluation); Meta-World simulates on the CPU. ``auto``
takes CUDA when torch sees a GPU, ``cuda`` without one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from omegaconf import MISSING, DictConfig

from streammoe.config import (
    ConfigError,
    RootConfig,
    at_least,
    greater_than,
    in_range,
    non_empty,
    one_of,
    validate,
)

__all__ = ["MERGE_METHODS", "MergeVLAConfig", "MergeVLAExperiment", "ROUTES", "Variant", "validated",
           "variant_parts"]

SUITE_NAMES = ("reach_push", "drawer", "door_window", "button")
MERGE_METHODS = ("average", "task_arithmetic", "ties")
ROUTES = ("oracle", "router")
ACTION_HEADS = ("cross_attention", "self_attention")
LORA_TARGETS = ("backbone", "backbone_attention")
LORA_INITS = ("default", "eva")
# where the test-time router takes each suite's basis: the last shared action-expert block's value
# projection (the reference), or the LoRA task vector of a backbone layer's value projection
ROUTER_SOURCES = ("last_shared_value", "lora_task_vector")
# which tokens' scores the router averages: every real token (the reference), or the instruction's
ROUTER_TOKENS = ("all", "instruction")
# merge.vision_encoder: the experts' encoders merged like the backbone, or each suite keeping its
# own with its head (images with expert.train_vision only; otherwise there is nothing to keep)
VISION_ENCODER_MERGES = ("merged", "per_suite")


class Variant(NamedTuple):
    """A variant's parts (:func:`variant_parts`)."""

    merge: str
    masked: bool
    route: str
    refit: bool = False


def variant_parts(name: str) -> Variant:
    """``"<merge>[+mask[+refit]]/<route>"`` -> ``Variant(merge, masked, route, refit)``; ``merge``
    is ``experts``, ``naive_full``, ``base`` or a merge method; ``+refit`` (after ``+mask`` only)
    re-fits the shared task vector to the masks (``merge.refit_*``). Raises naming the grammar.

    >>> variant_parts("ties+mask/router"), variant_parts("naive_full/single")
    (Variant(merge='ties', masked=True, route='router', refit=False), Variant(merge='naive_full', masked=False, route='single', refit=False))
    >>> variant_parts("ties+mask+refit/oracle").refit
    True
    """
    grammar = ("variants are 'experts/oracle', 'naive_full/single', 'base/single' or "
               f"'<merge>[+mask[+refit]]/<route>' with merge in {list(MERGE_METHODS)} and route in "
               f"{list(ROUTES)}")
    merge, sep, route = str(name).partition("/")
    refit = merge.endswith("+refit")
    merge = merge.removesuffix("+refit")
    masked = merge.endswith("+mask")
    merge = merge.removesuffix("+mask")
    if not sep:
        raise ConfigError(f"variant {name!r} has no '/<route>'; {grammar}")
    if refit and not masked:
        raise ConfigError(f"variant {name!r}: '+refit' fits the shared task vector to the TALL masks, so "
                          f"it comes after '+mask' ('{merge}+mask+refit/{route}'); {grammar}")
    if merge in ("naive_full", "base"):
        ok = route == "single" and not masked
    elif merge == "experts":
        ok = route == "oracle" and not masked
    else:
        ok = merge in MERGE_METHODS and route in ROUTES
    if not ok:
        raise ConfigError(f"unknown variant {name!r}; {grammar}")
    return Variant(merge, masked, route, refit)


@dataclass
class DemoSettings:
    episodes_per_task: int = MISSING
    action_noise: float = MISSING
    seed: int = MISSING
    n_heldout: int = MISSING
    split_seed: int = MISSING
    min_success: float = MISSING
    extra_variations: int = 0

    def check(self, at: str) -> None:
        at_least(f"{at}episodes_per_task", self.episodes_per_task, 1)
        from streammoe_envs.metaworld.suites import N_EXTRA_VARIATIONS  # (metaworld: the vla extra)

        in_range(f"{at}extra_variations", self.extra_variations, 0, N_EXTRA_VARIATIONS)
        at_least(f"{at}action_noise", self.action_noise, 0.0)
        in_range(f"{at}n_heldout", self.n_heldout, 1, 49)
        in_range(f"{at}min_success", self.min_success, 0.0, 1.0)


@dataclass
class ModelSettings:
    patch_size: int = MISSING
    d_model: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    ffn_mult: int = MISSING
    chunk: int = MISSING
    task_stream: bool = MISSING
    task_gate_init: float = MISSING
    dropout: float = MISSING
    keypoints: int = MISSING

    def check(self, at: str) -> None:
        for key in ("patch_size", "d_model", "n_heads", "ffn_mult", "chunk"):
            at_least(f"{at}{key}", getattr(self, key), 1)
        at_least(f"{at}keypoints", self.keypoints, 0)
        at_least(f"{at}n_layers", self.n_layers, 2)
        if self.d_model % self.n_heads:
            raise ConfigError(f"{at}d_model must be a multiple of {at}n_heads ({self.n_heads}), "
                              f"got {self.d_model}")
        in_range(f"{at}dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass
class StageTrainSettings:
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    shift: int = MISSING          # image shift augmentation, pixels (0: off)
    log_every: int = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}steps", self.steps, 1)
        at_least(f"{at}batch_size", self.batch_size, 1)
        greater_than(f"{at}lr", self.lr, 0.0)
        at_least(f"{at}weight_decay", self.weight_decay, 0.0)
        greater_than(f"{at}grad_clip", self.grad_clip, 0.0)
        at_least(f"{at}shift", self.shift, 0)
        at_least(f"{at}log_every", self.log_every, 1)


@dataclass
class BaseSettings(StageTrainSettings):
    aux_weight: float = MISSING   # weight of the auxiliary (position) loss next to the action loss

    def check(self, at: str) -> None:
        super().check(at)
        greater_than(f"{at}aux_weight", self.aux_weight, 0.0)


@dataclass
class ExpertSettings(StageTrainSettings):
    lora_rank: int = MISSING
    lora_alpha: float = MISSING
    lora_target: str = MISSING
    targets: str = MISSING        # actions | expert_actions
    shared_lr_scale: float = MISSING  # lr of the shared action-expert blocks / lr (0: frozen)
    lora_init: str = MISSING      # default (PEFT's random A) | eva (A from the inputs' PCA)
    eva_layers: list[int] | None = None  # backbone layers with EVA's A (None: all)
    eva_modules: list[str] | None = None  # modules of those layers with EVA's A (None: all wrapped)
    train_vision: bool = False    # also train the vision encoder (images only); merged like the rest
    aux_weight: float = 0.0       # > 0: the base's position loss on the suite's frames as well

    def check(self, at: str) -> None:
        super().check(at)
        at_least(f"{at}aux_weight", self.aux_weight, 0.0)
        at_least(f"{at}lora_rank", self.lora_rank, 1)
        greater_than(f"{at}lora_alpha", self.lora_alpha, 0.0)
        one_of(f"{at}lora_target", self.lora_target, LORA_TARGETS)
        one_of(f"{at}targets", self.targets, ("actions", "expert_actions"))
        in_range(f"{at}shared_lr_scale", self.shared_lr_scale, 0.0, 1.0)
        one_of(f"{at}lora_init", self.lora_init, LORA_INITS)
        for i, layer in enumerate(self.eva_layers or ()):
            at_least(f"{at}eva_layers[{i}]", layer, 0)
        from streammoe.control.mergevla.model import lora_module_names

        for i, module in enumerate(self.eva_modules or ()):
            one_of(f"{at}eva_modules[{i}]", module, lora_module_names(self.lora_target))


@dataclass
class MergeSettings:
    ties_density: float = MISSING
    task_arithmetic_scale: float = MISSING
    lam: float = MISSING
    refit_frames: int = MISSING   # demonstration frames per suite for the '+refit' Gram matrices
    refit_ridge: float = MISSING  # ridge of the '+refit' solve, relative to the mean diagonal
    refit_vision: bool = MISSING  # '+refit' also re-fits the vision encoder (convolutions by their patches)
    vision_encoder: str = MISSING  # merged | per_suite: each suite keeps its expert's encoder with its head

    def check(self, at: str) -> None:
        in_range(f"{at}ties_density", self.ties_density, 0.0, 1.0, low_open=True)
        greater_than(f"{at}task_arithmetic_scale", self.task_arithmetic_scale, 0.0)
        at_least(f"{at}lam", self.lam, 0.0)
        at_least(f"{at}refit_frames", self.refit_frames, 1)
        greater_than(f"{at}refit_ridge", self.refit_ridge, 0.0)
        one_of(f"{at}vision_encoder", self.vision_encoder, VISION_ENCODER_MERGES)


@dataclass
class RouterSettings:
    k: int = MISSING
    temperature: float = MISSING
    source: str = MISSING         # last_shared_value (the reference) | lora_task_vector
    layer: int = MISSING          # backbone layer of lora_task_vector
    tokens: str = MISSING         # all | instruction: the tokens whose scores are averaged
    discriminative: int = MISSING  # 0: the top-k directions (the reference); n: the n directions each
                                   # suite's basis reads most relative to all (discriminative_bases)
    ridge: float = MISSING        # of discriminative_bases

    def check(self, at: str) -> None:
        at_least(f"{at}k", self.k, 1)
        at_least(f"{at}discriminative", self.discriminative, 0)
        greater_than(f"{at}ridge", self.ridge, 0.0)
        if self.discriminative > self.k:
            raise ConfigError(f"{at}discriminative={self.discriminative} exceeds {at}k={self.k}: a suite's "
                              f"distinctive directions are taken from its k-dimensional basis; choose "
                              f"{at}discriminative <= {at}k (0 switches it off)")
        greater_than(f"{at}temperature", self.temperature, 0.0)
        one_of(f"{at}source", self.source, ROUTER_SOURCES)
        at_least(f"{at}layer", self.layer, 0)
        one_of(f"{at}tokens", self.tokens, ROUTER_TOKENS)


@dataclass
class EvalSettings:
    episodes_per_task: int = MISSING   # one per held-out variation
    variants: list[str] = MISSING
    ablation_variants: list[str] = MISSING  # run with action_head=self_attention
    video: bool = MISSING
    video_variant: str = MISSING
    video_size: int = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}episodes_per_task", self.episodes_per_task, 1)
        non_empty(f"{at}variants", self.variants)
        for key in ("variants", "ablation_variants"):
            for i, name in enumerate(getattr(self, key)):
                try:
                    variant_parts(name)
                except ConfigError as err:
                    raise ConfigError(f"{at}{key}[{i}]: {err}") from None
        if self.video and self.video_variant not in self.variants:
            raise ConfigError(f"{at}video_variant={self.video_variant!r} is not among {at}variants "
                              f"{list(self.variants)}; add it or set {at}video=false")
        in_range(f"{at}video_size", self.video_size, 16, 480)


@dataclass
class MergeVLAConfig:
    """``cfg.mergevla``."""

    data_dir: str = MISSING
    jobs: int = MISSING
    suites: list[str] = MISSING
    pretrain_tasks: list[str] = MISSING
    vision: bool = MISSING
    image_size: int = MISSING
    camera: str = MISSING
    markers: bool = MISSING
    demos: DemoSettings = MISSING
    model: ModelSettings = MISSING
    base: BaseSettings = MISSING
    expert: ExpertSettings = MISSING
    merge: MergeSettings = MISSING
    router: RouterSettings = MISSING
    eval: EvalSettings = MISSING

    def check(self, at: str) -> None:
        in_range(f"{at}jobs", self.jobs, 1, 64)
        non_empty(f"{at}suites", self.suites)
        for i, suite in enumerate(self.suites):
            one_of(f"{at}suites[{i}]", suite, SUITE_NAMES)
        if len(set(self.suites)) != len(self.suites):
            raise ConfigError(f"{at}suites lists a suite twice: {list(self.suites)}")
        from streammoe_envs.metaworld.suites import PRETRAIN_TASKS

        for i, task in enumerate(self.pretrain_tasks):
            one_of(f"{at}pretrain_tasks[{i}]", task, PRETRAIN_TASKS)
        if len(self.suites) < 2:
            raise ConfigError(f"{at}suites needs >= 2 suites to merge, got {list(self.suites)}")
        in_range(f"{at}image_size", self.image_size, 8, 480)
        if self.vision and self.image_size % self.model.patch_size:
            raise ConfigError(f"{at}image_size={self.image_size} must be a multiple of "
                              f"{at}model.patch_size={self.model.patch_size}")
        if self.eval.episodes_per_task > self.demos.n_heldout:
            raise ConfigError(f"{at}eval.episodes_per_task={self.eval.episodes_per_task} exceeds the "
                              f"held-out variations ({at}demos.n_heldout={self.demos.n_heldout}): each "
                              "episode runs one held-out variation (Meta-World resets are deterministic)")
        d_model = self.model.d_model
        if not 1 <= self.router.k <= d_model:
            raise ConfigError(f"{at}router.k must be in [1, {at}model.d_model={d_model}], got {self.router.k}")
        if any(layer >= self.model.n_layers for layer in self.expert.eva_layers or ()):
            raise ConfigError(f"{at}expert.eva_layers={list(self.expert.eva_layers)} must be backbone "
                              f"layers in [0, {at}model.n_layers={self.model.n_layers})")
        if self.expert.train_vision and not self.vision:
            raise ConfigError(f"{at}expert.train_vision=true needs images ({at}vision=true): the object "
                              f"state has no vision encoder; for the object state run "
                              f"experiment=mergevla_state (its settings), or set {at}expert.train_vision=false")
        if self.router.layer >= self.model.n_layers:
            raise ConfigError(f"{at}router.layer={self.router.layer} must be a backbone layer in [0, "
                              f"{at}model.n_layers={self.model.n_layers})")
        if self.router.source == "lora_task_vector" and self.router.k > self.expert.lora_rank:
            raise ConfigError(f"{at}router.k={self.router.k} exceeds {at}expert.lora_rank="
                              f"{self.expert.lora_rank}, the rank of a LoRA task vector: choose k <= "
                              f"{self.expert.lora_rank}")


@dataclass
class MergeVLAExperiment(RootConfig):
    """Schema ``schema/mergevla``."""

    mergevla: MergeVLAConfig = MISSING


def validated(cfg: DictConfig) -> MergeVLAExperiment:
    """``cfg`` checked against :class:`MergeVLAExperiment` (the entry's first line)."""
    return validate(cfg, MergeVLAExperiment)
