"""MergeVLA training: the base (perception pre-training) and one expert per suite, as cached stages.

**Base.** The base learns to see, to read and to act, but none of the suites' skills. Each step
adds two losses: :meth:`TinyVLA.auxiliary_loss` on frames of every suite and pre-training task
(the hand position, the task's object position and the goal position, which depend on the
instruction, from the mean of the backbone's final tokens), and :meth:`TinyVLA.action_loss` on
the *pre-training tasks'* demonstrations only (Meta-World tasks outside every suite: faucets,
handles, a lever, a plate, a dial; ``streammoe_envs.metaworld.PRETRAIN_TASKS``). So the whole
model, action expert included, starts every suite's expert from one trained point (experts of
one pre-trained model are what merging assumes: fine-tuned from a random action expert, they
land in unrelated basins and their average acts like none of them, measured), while no suite's
skill is in the base (``base/single`` in the benchmark).

**Experts.** For each suite, from the same base: PEFT LoRA (rank ``lora_rank``) on the backbone's
linear layers plus the whole action expert, trained on that suite's demonstrations with the L1
chunk loss (:meth:`TinyVLA.action_loss`); then the LoRA is folded into the weights
(:func:`fold_lora`), so every expert is a plain state dict with the base's keys and a task vector
``theta_t - theta_0`` over the backbone. Images get a random shift of up to ``shift`` pixels
(replicate padding, then a random crop: DrQ's augmentation), which behaviour cloning from few
image demonstrations needs.

**Stages and caching.** Each stage's file is named by the fingerprint (SHA-256 of canonical JSON)
of everything it depends on: its settings, the model config, the seed and its inputs'
fingerprints (the demonstration file's content hash; the base's fingerprint for the experts).
:func:`cached_stage` returns the file when it exists and trains it otherwise, so a changed
setting re-runs only the stages that depend on it, and an interrupted pipeline resumes at the
first stage without a file. Files are :mod:`streammoe.checkpoint` files (safetensors, digest,
config sections checked on load), written atomically.

>>> from streammoe.control.mergevla.model import VLAConfig
>>> settings = TrainSettings(steps=2, batch_size=4, lr=1e-3, weight_decay=0.0, grad_clip=1.0,
...                          shift=0, log_every=1)
>>> stage_fingerprint("base", {"train": settings.to_dict()}, ["abc"]) == stage_fingerprint(
...     "base", {"train": settings.to_dict()}, ["abc"])
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streammoe import checkpoint
from streammoe.control.mergevla.data import SuiteData
from streammoe.control.mergevla.model import (
    TinyVLA,
    VLAConfig,
    add_lora,
    eva_components,
    fold_lora,
    lora_module_names,
)
from streammoe.runs import progress

__all__ = ["LogFn", "STAGE_KIND", "STAGE_VERSION", "TrainSettings", "aux_targets", "cached_stage", "load_stage",
           "obs_batch", "random_shift", "stage_fingerprint", "stage_path", "train_base", "train_expert"]

STAGE_KIND = "streammoe.mergevla.stage"
STAGE_VERSION = 1

# Positions in the 17-number object state (Meta-World's padded object block, then the goal).
_OBJECT_POS = slice(0, 3)
_GOAL_POS = slice(14, 17)


@dataclass
class TrainSettings:
    """One training stage: AdamW with ``lr`` and ``weight_decay``, gradient-norm clip, batches of
    ``batch_size`` frames drawn uniformly from the stage's data, image shift augmentation."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float
    shift: int
    log_every: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TrainSettings:
        return cls(**{k: m[k] for k in cls.__dataclass_fields__})


# ----- batches -----------------------------------------------------------------------------------

def random_shift(images: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """DrQ's augmentation on uint8 ``(B, H, W, 3)``: pad ``shift`` pixels by replication, crop a
    random ``H x W`` window per image (integer shifts in ``[-shift, shift]``)."""
    if shift <= 0:
        return images
    b, h, w, _ = images.shape
    x = F.pad(images.permute(0, 3, 1, 2).float(), (shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, 3, h, w + 2 * shift)
    x = x.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, 3, h, w)
    return x.gather(3, cols).permute(0, 2, 3, 1).to(torch.uint8)


def obs_batch(data: SuiteData, idx: np.ndarray, vision: bool, device: torch.device) -> dict[str, Tensor]:
    """The model's observation dict for rows ``idx`` of ``data`` (on ``device``)."""
    first = "image" if vision else "state"
    if first not in data.obs:
        raise ValueError(f"the {data.suite} demonstrations have no {first!r} observations "
                         f"(they have {sorted(data.obs)}): collect them with vision={vision}")
    return {first: torch.from_numpy(data.obs[first][idx]).to(device),
            "proprio": torch.from_numpy(data.obs["proprio"][idx]).to(device),
            "instruction": torch.from_numpy(data.obs["instruction"][idx]).to(device)}


def _augmented_batch(data: SuiteData, idx: np.ndarray, vision: bool, shift: int,
                     generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """:func:`obs_batch` with :func:`random_shift` applied to the images (no-op on states)."""
    obs = obs_batch(data, idx, vision, device)
    if vision:
        obs["image"] = random_shift(obs["image"].cpu(), shift, generator).to(device)
    return obs


def aux_targets(data: SuiteData, idx: np.ndarray, device: torch.device) -> dict[str, Tensor]:
    """The base's targets for rows ``idx``: hand, object and goal positions."""
    if "state" not in data.obs:
        raise ValueError(f"the {data.suite} demonstrations hold no object state, the base's "
                         "pre-training targets; collect them again with this version")
    state = torch.from_numpy(data.obs["state"][idx]).to(device)
    return {"hand_pos": torch.from_numpy(data.obs["proprio"][idx, :3]).to(device),
            "object_pos": state[:, _OBJECT_POS], "goal_pos": state[:, _GOAL_POS]}


def _concat(datas: Sequence[SuiteData]) -> SuiteData:
    """Every suite's rows in one table (the base trains on all of them)."""
    keys = sorted(datas[0].obs)
    return SuiteData(suite="all", tasks=(), obs={k: np.concatenate([d.obs[k] for d in datas]) for k in keys},
                     actions=np.concatenate([d.actions for d in datas]),
                     action_valid=np.concatenate([d.action_valid for d in datas]),
                     task_index=np.concatenate([d.task_index for d in datas]),
                     episode_index=np.concatenate([d.episode_index for d in datas]),
                     step=np.concatenate([d.step for d in datas]))


# ----- loops -------------------------------------------------------------------------------------

LogFn = Callable[[dict[str, Any]], None]


def _loop(model: TinyVLA, params: list[Any], data: SuiteData, settings: TrainSettings,
          loss_fn: Callable[[dict[str, Tensor], np.ndarray], Tensor], seed: int, desc: str,
          log: LogFn | None) -> list[dict[str, float]]:
    """The one training loop both stages use: uniform minibatches, AdamW, clip, log."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    clipped = [p for g in opt.param_groups for p in g["params"]]
    vision = model.cfg.vision
    history: list[dict[str, float]] = []
    model.train()
    start, running = time.perf_counter(), []
    for step in progress(range(1, settings.steps + 1), desc=desc):
        idx = rng.integers(0, len(data), settings.batch_size)
        loss = loss_fn(_augmented_batch(data, idx, vision, settings.shift, gen, device), idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss became {float(loss)} at step {step}; lower the "
                                     "learning rate or the gradient clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, settings.grad_clip)
        opt.step()
        running.append(float(loss.detach()))
        if step % settings.log_every == 0 or step == settings.steps:
            row = {"step": step, "loss": float(np.mean(running)),
                   "seconds": time.perf_counter() - start}
            history.append(row)
            running = []
            if log is not None:
                log(row)
    model.eval()
    return history


def train_base(model_cfg: VLAConfig, data: Mapping[str, SuiteData], settings: TrainSettings, *,
               pretrain: SuiteData | None, seed: int, device: torch.device, aux_weight: float = 1.0,
               log: LogFn | None = None) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """Pre-train the base: auxiliary targets on every frame of ``data`` and ``pretrain`` (their
    loss times ``aux_weight``), plus the action loss on ``pretrain`` (the pre-training tasks;
    ``None``: perception only). Returns the state dict (on the CPU) and the loss history (the
    weighted sum of both losses)."""
    if not (math.isfinite(aux_weight) and aux_weight > 0):
        raise ValueError(f"aux_weight must be a finite number > 0, got {aux_weight!r}")
    model = TinyVLA(model_cfg).to(device)
    table = _concat([*data.values(), *([pretrain] if pretrain is not None else [])])
    params = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed + 1)

    def loss_fn(obs: dict[str, Tensor], idx: np.ndarray) -> Tensor:
        loss = aux_weight * model.auxiliary_loss(obs, aux_targets(table, idx, device))
        if pretrain is not None:
            rows = rng.integers(0, len(pretrain), settings.batch_size)
            act_obs = _augmented_batch(pretrain, rows, model_cfg.vision, settings.shift, gen, device)
            loss = loss + model.action_loss(act_obs, torch.from_numpy(pretrain.actions[rows]).to(device))
        return loss

    history = _loop(model, params, table, settings, loss_fn, seed, "base", log)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, history


def train_expert(model_cfg: VLAConfig, base: Mapping[str, Tensor], data: SuiteData,
                 settings: TrainSettings, *, lora_rank: int, lora_alpha: float, lora_target: str,
                 shared_lr_scale: float = 1.0, lora_init: str = "default",
                 eva_layers: Sequence[int] | None = None, eva_modules: Sequence[str] | None = None,
                 eva_batches: int = 64, train_vision: bool = False, aux_weight: float = 0.0,
                 seed: int, device: torch.device, log: LogFn | None = None
                 ) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """One suite's expert from the base: LoRA on the backbone + the action expert, trained on the
    suite's chunks, LoRA folded; returns the expert's state dict (CPU, the base's keys).
    ``shared_lr_scale``: the learning rate of the action expert's shared part (the blocks merging
    averages) relative to ``settings.lr``; 0 freezes it. ``lora_init``: ``"default"`` (PEFT's
    random ``A``) or ``"eva"`` (``A`` from the principal directions of each wrapped layer's inputs
    under the base, over ``eva_batches`` random batches of the suite's frames:
    :func:`~streammoe.control.mergevla.model.eva_components`); ``eva_layers``: the backbone
    layers that get EVA's ``A`` (``None``: every layer), ``eva_modules``: the modules of those
    layers that do (names as :func:`~streammoe.control.mergevla.model.lora_module_names`;
    ``None``: every wrapped one); the others keep PEFT's default. ``train_vision``: the vision
    encoder trains too (at ``settings.lr``; images only), so the expert's task vector holds its
    change and merging merges it with the backbone's. ``aux_weight``: > 0 adds the base's
    position loss (hand, object, goal on the suite's frames; :func:`aux_targets`) times it, so the
    LoRA (and the encoder, with ``train_vision``) must keep where things are; the auxiliary heads
    train with it and are returned as the base's (a training aid, not part of the expert)."""
    if not (math.isfinite(aux_weight) and aux_weight >= 0):
        raise ValueError(f"aux_weight must be a finite number >= 0, got {aux_weight!r}")
    if train_vision and not model_cfg.vision:
        raise ValueError("train_vision needs an image model (vision=true): the object-state model has "
                         "no vision encoder")
    if not 0.0 <= shared_lr_scale <= 1.0:
        raise ValueError(f"shared_lr_scale must be in [0, 1], got {shared_lr_scale}")
    if lora_init not in ("default", "eva"):
        raise ValueError(f"lora_init must be 'default' or 'eva', got {lora_init!r}")
    bad = [i for i in (eva_layers or ()) if not 0 <= int(i) < model_cfg.n_layers]
    if bad:
        raise ValueError(f"eva_layers {bad} are not backbone layers [0, {model_cfg.n_layers})")
    modules = lora_module_names(lora_target)
    bad_modules = [m for m in (eva_modules or ()) if m not in modules]
    if bad_modules:
        raise ValueError(f"eva_modules {bad_modules} are not modules LoRA target {lora_target!r} wraps: "
                         f"choose from {list(modules)}")
    model = TinyVLA(model_cfg)
    model.load_state_dict(base)
    model = model.to(device)
    eva = None
    if lora_init == "eva":
        rng = np.random.default_rng(seed + 7919)
        batches = [obs_batch(data, rng.integers(0, len(data), settings.batch_size), model_cfg.vision, device)
                   for _ in range(eva_batches)]
        eva = eva_components(model, batches, rank=lora_rank, target=lora_target)
        layers = range(model_cfg.n_layers) if eva_layers is None else eva_layers
        names = modules if eva_modules is None else eva_modules
        keep = {f"backbone.layers.{int(i)}.{m}" for i in layers for m in names}
        eva = {n: c for n, c in eva.items() if n in keep}  # the others keep PEFT's default A
    model = add_lora(model, rank=lora_rank, alpha=lora_alpha, target=lora_target, eva=eva).to(device)
    unfrozen = ((model.vision_encoder_prefix(),) if train_vision else ()) + \
        ((model.auxiliary_head_prefix(),) if aux_weight > 0 else ())
    for name, p in model.named_parameters():
        if unfrozen and name.startswith(unfrozen):
            p.requires_grad_(True)
    shared = model.shared_action_expert_prefixes()
    own = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(shared)]
    common = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(shared)]
    if shared_lr_scale == 0.0:
        for p in common:
            p.requires_grad_(False)
    groups = [{"params": own}] + ([{"params": common, "lr": settings.lr * shared_lr_scale}]
                                  if shared_lr_scale > 0.0 else [])

    def loss_fn(obs: dict[str, Tensor], idx: np.ndarray) -> Tensor:
        loss = model.action_loss(obs, torch.from_numpy(data.actions[idx]).to(device))
        if aux_weight > 0:
            loss = loss + aux_weight * model.auxiliary_loss(obs, aux_targets(data, idx, device))
        return loss

    history = _loop(model, groups, data, settings, loss_fn, seed, f"expert {data.suite}", log)
    state = fold_lora(model.cpu())
    heads = model.auxiliary_head_prefix()
    state.update({k: v.detach().cpu().clone() for k, v in base.items() if k.startswith(heads)})
    return state, history


# ----- stage cache -------------------------------------------------------------------------------

def stage_fingerprint(stage: str, settings: Mapping[str, Any], inputs: Sequence[str]) -> str:
    """The fingerprint that names a stage's file: its name, settings and inputs' fingerprints."""
    return checkpoint.fingerprint({"stage": stage, "settings": dict(settings), "inputs": list(inputs)})


def load_stage(path: Path, stage: str, fp: str) -> dict[str, Any]:
    """A stage file's state, checked (kind, version, digest, its fingerprint)."""
    ck = checkpoint.load(path, kind=STAGE_KIND, version=STAGE_VERSION, label=f"MergeVLA {stage} stage",
                         match={"stage": {"name": stage, "fingerprint": fp}})
    return ck.state


def stage_path(cache_dir: str | Path, stage: str, settings: Mapping[str, Any], inputs: Sequence[str]) -> Path:
    """Where :func:`cached_stage` keeps the stage: ``<cache_dir>/<stage>_<fingerprint[:16]>.safetensors``."""
    return Path(cache_dir) / f"{stage}_{stage_fingerprint(stage, settings, inputs)[:16]}.safetensors"


def cached_stage(cache_dir: str | Path, stage: str, settings: Mapping[str, Any], inputs: Sequence[str],
                 build: Callable[[], dict[str, Any]], rebuild: bool = False
                 ) -> tuple[dict[str, Any], str, bool]:
    """The stage's state from ``<cache_dir>/<stage>_<fingerprint[:16]>.safetensors`` when present
    (and not ``rebuild``), else ``build()``'s, saved there first. Returns ``(state, fingerprint,
    was_cached)``."""
    fp = stage_fingerprint(stage, settings, inputs)
    path = stage_path(cache_dir, stage, settings, inputs)
    if path.is_file() and not rebuild:
        return load_stage(path, stage, fp), fp, True
    state = build()
    checkpoint.save(path, state, kind=STAGE_KIND, version=STAGE_VERSION,
                    config={"stage": {"name": stage, "fingerprint": fp}, "settings": dict(settings)})
    return state, fp, False
