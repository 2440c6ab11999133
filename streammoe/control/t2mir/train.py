"""Training one variant (AD, T2MIR-AD or an ablation) on learning histories, with exact resume.

One loop, top to bottom: sample a batch of contexts (B/2 tasks, two windows each), predict every
action from its state token (Gaussian NLL), add the token router's balance loss and the
contrastive task-routing loss, step AdamW (warm-up then cosine, gradient clipping), move the EMA
key router towards the task router, log, checkpoint.

The contrastive loss: the query is the task gate's output (softmax over the task experts) at the
last position (its input is the mean hidden state over the whole window, which is causal there);
the key is the same from an EMA copy of the task router applied to the detached representation; ``bilinear`` scores ``q W k^T`` with a learned
``W`` (CURL / the paper) and ``info_nce`` uses cosine similarity with a temperature. Both views of a
task (and the query's own key) are positives.

Checkpoints (``checkpoints/<variant>.safetensors`` in a run folder) use :mod:`streammoe.checkpoint`:
weights, optimiser / scheduler / RNG state as tensors and JSON, and the config sections a resumed
run must match (variant, model config, train config less ``log_every`` / ``ckpt_every``, training
data fingerprint). Nothing in them is unpickled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streammoe import checkpoint as ckpt
from streammoe.control.t2mir.data import ContextSampler, History
from streammoe.control.t2mir.model import ICRLTransformer, ModelConfig, gaussian_nll, variant_flags
from streammoe.routing import (
    bilinear_contrastive_loss,
    ema_copy,
    ema_update,
    info_nce_loss,
    load_balance_loss,
)
from streammoe.runs import progress

__all__ = ["CKPT_FORMAT", "TrainConfig", "Trainer", "checkpoint_step", "load_checkpoint", "read_checkpoint",
           "train_variant"]

CKPT_FORMAT = "streammoe.t2mir.checkpoint"  # the checkpoint's kind
CKPT_VERSION = 2  # 1: a torch.save pickle (checkpoints/<variant>.pt), no longer read
LABEL = "T2MIR checkpoint"
HINTS = {"variant": "Use a fresh run folder.",
         "model_config": "Use a fresh run folder.",
         "train_config": "Use a fresh run folder.",
         "data_fingerprint": "The checkpoint was trained on different learning histories than this run's "
                             "dataset: use a fresh run folder."}
PRECISIONS = ("fp32", "bf16")
# metrics.csv columns after (variant, step, lr); None where a variant has no such loss
LOG_KEYS = ("loss", "nll", "action_mse", "balance", "contrastive", "grad_norm")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16
    context_episodes: int = 4
    sort_by_return: bool = True  # consecutive windows: order each history by return first
    window: str = "random_sorted"  # random_sorted (reference) | consecutive, see ContextSampler
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    balance_weight: float = 0.1
    contrastive_weight: float = 0.01
    contrastive: str = "bilinear"  # bilinear | info_nce
    info_nce_temperature: float = 0.1
    ema_tau: float = 0.005
    log_every: int = 50
    ckpt_every: int = 500
    # fp32 | bf16. bf16: the forward pass runs under torch.autocast(bfloat16) (matmuls and
    # attention in bf16; layer norms, softmax, the routers and every loss in fp32; weights,
    # gradients and optimiser state stay fp32, so no loss scaling is needed). fp32 on CUDA always
    # allows TF32 matmuls and convolutions (fp32 range and storage, ~1e-3 relative error per
    # product, far below SGD's noise, several times faster on Ampere and later GPUs); a CPU has no
    # TF32 and is unaffected. Part of the train config a resumed run must match.
    precision: str = "fp32"

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TrainConfig:
        cfg = cls(**dict(m))
        if cfg.contrastive not in ("bilinear", "info_nce"):
            raise ValueError(f"contrastive must be bilinear or info_nce, got {cfg.contrastive!r}")
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
        return cfg


# train-config keys that may change when resuming (they do not affect the trained model)
_RESUMABLE_KEYS = ("log_every", "ckpt_every")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def set_normalisation(model: ICRLTransformer, histories: list[History]) -> None:
    """z-normalise states and rewards with the training data's statistics."""
    obs = np.concatenate([h.observations.reshape(-1, h.observations.shape[-1]) for h in histories])
    rew = np.concatenate([h.rewards.ravel() for h in histories])
    with torch.no_grad():
        model.obs_mean.copy_(torch.as_tensor(obs.mean(0)))
        model.obs_std.copy_(torch.as_tensor(obs.std(0) + 1e-6))
        model.rew_mean.fill_(float(rew.mean()))
        model.rew_std.fill_(float(rew.std() + 1e-6))


class Trainer:
    """Everything whose state a checkpoint holds, so resuming equals not stopping."""

    def __init__(self, variant: str, model_cfg: ModelConfig, tcfg: TrainConfig, device: torch.device,
                 sampler: ContextSampler | None, seed: int) -> None:
        token, task, contrastive = variant_flags(variant)
        if tcfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {tcfg.precision!r}")
        device = torch.device(device)
        if device.type == "cuda" and tcfg.precision == "fp32":
            # TF32 (see TrainConfig.precision); process-wide, like every torch.backends flag
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model_cfg = ModelConfig(**{**model_cfg.to_dict(), "token_moe": token, "task_moe": task, "seed": seed})
        self.variant, self.tcfg, self.device, self.seed = variant, tcfg, device, seed
        self.model = ICRLTransformer(model_cfg).to(device)
        self.use_cl = contrastive and tcfg.contrastive_weight > 0
        self.key_router: nn.Module | None = None
        self.bilinear: nn.Parameter | None = None
        params = list(self.model.parameters())
        if self.use_cl:
            router = self.model.task_router
            assert router is not None
            self.key_router = ema_copy(router)
            self.bilinear = nn.Parameter(torch.eye(router.n_experts, device=device))
            params.append(self.bilinear)
        self.opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: _lr_factor(s, tcfg.warmup_steps, tcfg.steps))
        self.sampler = sampler
        self.step = 0
        self.elapsed = 0.0

    # ----- checkpoint ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "variant": self.variant, "seed": self.seed,
            "model_config": self.model.cfg.to_dict(), "train_config": vars(self.tcfg),
            "model": self.model.state_dict(),
            "key_router": None if self.key_router is None else self.key_router.state_dict(),
            "bilinear": None if self.bilinear is None else self.bilinear.detach().cpu(),
            "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "step": self.step,
            "elapsed": self.elapsed,
            "sampler": None if self.sampler is None else self.sampler.state(),
            "data_fingerprint": None if self.sampler is None else self.sampler.fingerprint,
            "torch_rng": torch.get_rng_state(),
            # dropout masks on a GPU come from its default generator
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "router_generators": {k: g.get_state() for k, g in self.model.router_generators().items()},
        }

    def config_sections(self) -> dict[str, Any]:
        """What a run resuming from this trainer's checkpoint must share with it (resuming with
        another schedule or other data would silently mix two runs)."""
        sections = {"variant": self.variant, "model_config": self.model.cfg.to_dict(),
                    "train_config": {k: v for k, v in vars(self.tcfg).items() if k not in _RESUMABLE_KEYS}}
        if self.sampler is not None:
            sections["data_fingerprint"] = self.sampler.fingerprint
        return sections

    def load_state(self, ck: Mapping[str, Any]) -> None:
        """Restore a state read by :func:`read_checkpoint` with ``match=self.config_sections()``."""
        self.model.load_state_dict(ck["model"])
        if self.key_router is not None:
            self.key_router.load_state_dict(ck["key_router"])
        if self.bilinear is not None:
            with torch.no_grad():
                self.bilinear.copy_(ck["bilinear"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.step, self.elapsed = int(ck["step"]), float(ck.get("elapsed", 0.0))
        if self.sampler is not None and ck["sampler"] is not None:
            self.sampler.set_state(ck["sampler"])
        torch.set_rng_state(ck["torch_rng"])
        if self.device.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"], self.device)
        # A router's generator on a device this run does not use (a GPU checkpoint resumed on a
        # CPU) is left out: this run draws from its own device's generator, and only a resume on
        # the same device can equal an uninterrupted run anyway.
        gens = self.model.router_generators()
        for name, state in ck["router_generators"].items():
            if name in gens:
                gens[name].set_state(state)

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically: a crash while saving keeps the previous one."""
        ckpt.save(path, self.state(), kind=CKPT_FORMAT, version=CKPT_VERSION, config=self.config_sections())

    # ----- one step -----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        assert self.sampler is not None
        model, tcfg = self.model, self.tcfg
        model.train()
        batch = self.sampler.sample()
        dev = self.device
        obs = torch.as_tensor(batch["obs"], device=dev)
        act = torch.as_tensor(batch["act"], device=dev)
        rew = torch.as_tensor(batch["rew"], device=dev)
        t = torch.as_tensor(batch["t"], device=dev)
        ids = torch.as_tensor(batch["task_ids"], device=dev)
        # the batch comes from histories checked when they were written: no per-step validation
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=tcfg.precision == "bf16"):
            mean, log_std, f = model(obs, act, rew, t, check=False)
        # the losses in fp32 whatever the precision of the forward pass
        mean, log_std = mean.float(), log_std.float()
        nll = gaussian_nll(mean, log_std, act)
        loss = nll
        stats = {"nll": nll.detach(), "action_mse": (mean - act).pow(2).mean().detach()}
        if f.token is not None:
            balance = load_balance_loss(f.token.importance.float(), f.token.load.float())
            loss = loss + tcfg.balance_weight * balance
            stats["balance"] = balance.detach()
        if self.use_cl:
            assert f.task is not None and f.task_repr is not None and self.key_router is not None
            # Query and key are the gates' outputs (softmax over the task experts), as the paper
            # says. Raw logits are unbounded: with them q W k^T grew without limit here (the
            # loss went from 1 to >1,000 in 3,000 steps and its gradient, clipped together with
            # the NLL's, starved the action loss).
            query = torch.softmax(f.task.logits[:, -1].float(), dim=-1)
            with torch.no_grad():
                key = torch.softmax(self.key_router(f.task_repr[:, -1].detach().float()).logits, dim=-1)
            if tcfg.contrastive == "bilinear":
                cl = bilinear_contrastive_loss(query, key, self.bilinear, ids)
            else:
                cl = info_nce_loss(query, key, ids, temperature=tcfg.info_nce_temperature)
            loss = loss + tcfg.contrastive_weight * cl
            stats["contrastive"] = cl.detach()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], tcfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.key_router is not None:
            ema_update(self.key_router, self.model.task_router, tcfg.ema_tau)
        self.step += 1
        stats["loss"] = loss.detach()
        # one device-to-host copy for every logged number (not one .item() per loss)
        values = torch.stack([v.float() for v in stats.values()]).tolist()
        return dict(zip(stats, values))


def train_variant(variant: str, model_cfg: ModelConfig, tcfg: TrainConfig, histories: list[History],
                  device: torch.device, seed: int, ckpt_path: Path | None = None,
                  log: Callable[..., None] | None = None, stop_after: int | None = None
                  ) -> tuple[ICRLTransformer, dict[str, float]]:
    """Train (or resume from ``ckpt_path``) one variant to ``tcfg.steps``; returns the model and
    ``{"ms_per_step", "steps", "resumed_from"}``. ``stop_after`` ends early (tests of resume)."""
    sampler = ContextSampler(histories, tcfg.context_episodes, tcfg.batch_size, seed, tcfg.sort_by_return,
                             window=tcfg.window)
    trainer = Trainer(variant, model_cfg, tcfg, device, sampler, seed)
    set_normalisation(trainer.model, histories)
    resumed_from = 0
    if ckpt_path is not None:
        ckpt.refuse_legacy(ckpt_path, ckpt_path.with_suffix(".pt"), LABEL)
    if ckpt_path is not None and ckpt_path.is_file():
        trainer.load_state(read_checkpoint(ckpt_path, match=trainer.config_sections()))
        resumed_from = trainer.step
    else:
        torch.manual_seed(seed + 7)  # dropout masks
    end = tcfg.steps if stop_after is None else min(tcfg.steps, stop_after)
    bar = progress(total=end, desc=f"train {variant}", initial=trainer.step)
    window: list[dict[str, float]] = []
    while trainer.step < end:
        t0 = time.perf_counter()
        out = trainer.train_step()
        trainer.elapsed += time.perf_counter() - t0
        window.append(out)
        bar.update(1)
        if log is not None and (trainer.step % tcfg.log_every == 0 or trainer.step == end):
            avg = {k: (float(np.mean([w[k] for w in window if k in w]))
                       if any(k in w for w in window) else None) for k in LOG_KEYS}
            log(variant=variant, step=trainer.step, lr=trainer.sched.get_last_lr()[0], **avg)
            window = []
        if ckpt_path is not None and (trainer.step % tcfg.ckpt_every == 0 or trainer.step == end):
            trainer.save(ckpt_path)
    bar.close()
    trainer.model.eval()
    steps_run = max(1, trainer.step)
    return trainer.model, {"ms_per_step": 1000.0 * trainer.elapsed / steps_run,
                           "steps": float(trainer.step), "resumed_from": float(resumed_from)}


def read_checkpoint(path: str | Path, match: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state of a T2MIR checkpoint (checked; ``match``: config sections it must have)."""
    return ckpt.load(path, kind=CKPT_FORMAT, version=CKPT_VERSION, label=LABEL, match=match,
                     hints=HINTS).state


def checkpoint_step(path: str | Path) -> int:
    """Training step a checkpoint was saved at."""
    return int(read_checkpoint(path)["step"])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[ICRLTransformer, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint (eval mode) and return it with the raw state."""
    ck = read_checkpoint(path)
    model = ICRLTransformer(ModelConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck
