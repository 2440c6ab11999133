"""Hydra entry of MergeVLA (``experiment=mergevla`` / ``mergevla_smoke``).

The pipeline, each stage cached under ``mergevla.data_dir`` by a fingerprint of its settings and
inputs (:func:`~streammoe.control.mergevla.train.cached_stage`), so a re-run skips finished stages
and a changed setting re-runs only what depends on it:

1. **demos**: scripted-expert demonstrations of every suite's tasks (HDF5, robomimic's layout,
   :func:`~streammoe.control.mergevla.data.ensure_demos`), the expert's success per task;
2. **base**: perception pre-training (auxiliary targets, no actions), per action head;
3. **experts**: one per suite, LoRA + action expert, LoRA folded;
4. **merges**: for each merge method, ``tau_MTL``, TALL masks (saved to
   ``masks_<head>_<method>.safetensors`` in the run folder) and their statistics; for ``+refit``
   variants ``tau_MTL`` re-fitted to the masks on each suite's frames (``merge.refit_*``);
5. **evaluation** of every variant of ``mergevla.eval.variants`` (``<merge>[+mask[+refit]]/<route>``, see
   :func:`~streammoe.control.mergevla.config.variant_parts`) on the held-out variations, and of
   ``mergevla.eval.ablation_variants`` with the self-attention action head.

Writes ``metrics.json`` (success per variant and suite, router accuracy and overhead, mask
statistics, the demonstrator's success), ``metrics.csv`` (training losses), ``results.json`` (every
episode), ``router_confusion.png``, ``success.png`` and ``videos/<suite>.mp4`` (one episode per
suite of ``mergevla.eval.video_variant``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from streammoe_envs.metaworld import (
    INSTRUCTION_LEN,
    PRETRAIN_SUITE,
    SUITES,
    VOCAB,
    split_variations,
)
from streammoe_envs.metaworld.env import STATE_DIM

from streammoe.control.mergevla.config import validated, variant_parts
from streammoe.control.mergevla.data import SuiteData, ensure_demos, suite_data
from streammoe.control.mergevla.evaluate import (
    EvalResult,
    SuitePolicy,
    evaluate,
    plot_confusion,
    plot_success,
    summarise,
)
from streammoe.control.mergevla.merging import (
    MergedExperts,
    input_grams,
    merge_experts,
    naive_average,
    save_masks,
)
from streammoe.control.mergevla.model import TinyVLA, VLAConfig
from streammoe.control.mergevla.router import TestTimeTaskRouter
from streammoe.control.mergevla.train import (
    TrainSettings,
    cached_stage,
    obs_batch,
    train_base,
    train_expert,
)
from streammoe.devices import resolve_device
from streammoe.runs import RunRecorder, format_table

__all__ = ["Pipeline", "model_config", "run", "run_mergevla"]


def model_config(c: DictConfig, action_head: str, seed: int) -> VLAConfig:
    """The :class:`VLAConfig` of ``mergevla.model`` with the data's shapes."""
    return VLAConfig(vision=bool(c.vision), image_size=int(c.image_size), state_dim=STATE_DIM,
                     vocab_size=len(VOCAB), max_instruction_len=INSTRUCTION_LEN,
                     action_head=action_head, seed=seed,
                     **OmegaConf.to_container(c.model, resolve=True))


def _train_settings(section: DictConfig) -> TrainSettings:
    return TrainSettings.from_mapping(OmegaConf.to_container(section, resolve=True))


class Pipeline:
    """The stages of one seed (see the module docstring); each method caches its result."""

    def __init__(self, c: DictConfig, seed: int, device: torch.device,
                 recorder: RunRecorder | None = None) -> None:
        self.c, self.seed, self.device, self.recorder = c, int(seed), device, recorder
        self.suites = tuple(c.suites)
        self.tasks = tuple(t for s in self.suites for t in SUITES[s])
        self.pretrain_tasks = tuple(c.pretrain_tasks)
        self.cache = Path(c.data_dir)
        self._demos: tuple[str, dict[str, SuiteData], dict[str, Any]] | None = None
        self._experts: dict[str, tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[str]]] = {}
        self._merges: dict[tuple[str, str, bool], MergedExperts] = {}
        self._grams: dict[str, list[dict[str, torch.Tensor]]] = {}

    # ----- stages -----------------------------------------------------------------------------
    def demos(self) -> tuple[str, dict[str, SuiteData], dict[str, Any]]:
        """``(fingerprint, per-suite arrays, expert stats)`` of the demonstrations."""
        if self._demos is None:
            d = self.c.demos
            path, demos = ensure_demos(
                self.cache, tasks=[*self.tasks, *self.pretrain_tasks], episodes_per_task=int(d.episodes_per_task),
                vision=bool(self.c.vision), image_size=int(self.c.image_size), camera=str(self.c.camera),
                action_noise=float(d.action_noise), seed=int(d.seed), min_success=float(d.min_success),
                n_heldout=int(d.n_heldout), split_seed=int(d.split_seed))
            data = suite_data(demos.episodes, int(self.c.model.chunk), str(self.c.expert.targets))
            missing = [s for s in self.suites if s not in data]
            if missing:
                raise RuntimeError(f"no demonstrations of suites {missing} in {path}: every task of "
                                   f"them was dropped ({demos.dropped})")
            self._demos = (demos.fingerprint, {s: data[s] for s in (*self.suites, *(
                [PRETRAIN_SUITE] if self.pretrain_tasks else []))},
                           {"expert_success": {t: s["success_rate"] for t, s in demos.stats.items()},
                            "dropped_tasks": dict(demos.dropped), "demo_file": str(path)})
        return self._demos

    def _log(self, stage: str):
        if self.recorder is None:
            return None
        return lambda row: self.recorder.log(stage=stage, seed=self.seed, step=row["step"],
                                             loss=row["loss"], success=None, seconds=row["seconds"])

    def experts(self, action_head: str) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[str]]:
        """``(base state dict, expert state dicts in suite order, their fingerprints)``."""
        if action_head in self._experts:
            return self._experts[action_head]
        demo_fp, data, _ = self.demos()
        cfg = model_config(self.c, action_head, self.seed)
        base_settings = {"model": cfg.to_dict(), "train": _train_settings(self.c.base).to_dict(),
                         "suites": list(self.suites), "pretrain_tasks": list(self.pretrain_tasks)}
        suites_data = {s: data[s] for s in self.suites}
        base, base_fp, _ = cached_stage(
            self.cache, f"base_s{self.seed}", base_settings, [demo_fp],
            lambda: {"weights": train_base(cfg, suites_data, _train_settings(self.c.base),
                                           pretrain=data.get(PRETRAIN_SUITE), seed=self.seed,
                                           device=self.device, log=self._log(f"base/{action_head}"))[0]})
        e = self.c.expert
        eva_layers = None if e.eva_layers is None else [int(i) for i in e.eva_layers]
        eva_modules = None if e.eva_modules is None else [str(m) for m in e.eva_modules]
        experts, fps = [], []
        for i, suite in enumerate(self.suites):
            settings = {"model": cfg.to_dict(), "train": _train_settings(e).to_dict(), "suite": suite,
                        "lora": {"rank": int(e.lora_rank), "alpha": float(e.lora_alpha),
                                 "target": str(e.lora_target)}, "targets": str(e.targets),
                        "shared_lr_scale": float(e.shared_lr_scale)}
            if str(e.lora_init) != "default":  # (the default leaves earlier stage files valid)
                settings["lora_init"] = str(e.lora_init)
                if eva_layers is not None:
                    settings["eva_layers"] = eva_layers
                if eva_modules is not None:
                    settings["eva_modules"] = eva_modules
            state, fp, _ = cached_stage(
                self.cache, f"expert_{suite}_s{self.seed}", settings, [base_fp],
                lambda suite=suite, i=i: {"weights": train_expert(
                    cfg, base["weights"], data[suite], _train_settings(e), lora_rank=int(e.lora_rank),
                    lora_alpha=float(e.lora_alpha), lora_target=str(e.lora_target),
                    shared_lr_scale=float(e.shared_lr_scale), lora_init=str(e.lora_init),
                    eva_layers=eva_layers, eva_modules=eva_modules,
                    seed=self.seed * 1000 + i + 1, device=self.device,
                    log=self._log(f"expert/{action_head}/{suite}"))[0]})
            experts.append(state["weights"])
            fps.append(fp)
        self._experts[action_head] = (base["weights"], experts, fps)
        return self._experts[action_head]

    def grams(self, action_head: str) -> list[dict[str, torch.Tensor]]:
        """Per suite, the Gram matrices of the inputs of every backbone linear layer of that
        suite's expert on ``merge.refit_frames`` of its demonstration frames (real tokens only;
        the frames drawn with the seed), for ``+refit`` (computed once per head)."""
        if action_head not in self._grams:
            base, experts, _ = self.experts(action_head)
            _, data, _ = self.demos()
            n = int(self.c.merge.refit_frames)
            rng = np.random.default_rng(self.seed)
            keys = [k for k in base if k.startswith("backbone.")]
            grams = []
            for suite, sd in zip(self.suites, experts):
                model = self.build(action_head, sd)
                frames = data[suite]
                idx = rng.choice(len(frames), size=min(n, len(frames)), replace=False)
                batches = [obs_batch(frames, idx[i:i + 256], model.cfg.vision, self.device)
                           for i in range(0, len(idx), 256)]
                grams.append(input_grams(model, keys, batches, model.encode, model.token_valid_mask))
            self._grams[action_head] = grams
        return self._grams[action_head]

    def merge(self, action_head: str, method: str, refit: bool = False) -> MergedExperts:
        """The experts merged with ``method`` (computed once per head, method and refit);
        ``refit``: the shared vector re-fitted to the masks on each suite's frames."""
        if (action_head, method, refit) not in self._merges:
            base, experts, _ = self.experts(action_head)
            probe = TinyVLA(model_config(self.c, action_head, self.seed))
            m = self.c.merge
            scale = float(m.task_arithmetic_scale) if method == "task_arithmetic" else 1.0
            self._merges[action_head, method, refit] = merge_experts(
                base, experts, heads=probe.expert_head_prefixes(),
                averaged=probe.shared_action_expert_prefixes(), method=method,
                density=float(m.ties_density), scale=scale, lam=float(m.lam),
                grams=self.grams(action_head) if refit else None, ridge=float(m.refit_ridge))
        return self._merges[action_head, method, refit]

    def build(self, action_head: str, state_dict: Mapping[str, torch.Tensor]) -> TinyVLA:
        """A model of this pipeline's config with ``state_dict``, on the device, in eval mode."""
        model = TinyVLA(model_config(self.c, action_head, self.seed))
        model.load_state_dict(state_dict)
        return model.to(self.device).eval()

    def heldout_variations(self) -> list[int]:
        """The evaluation's variations: the first ``eval.episodes_per_task`` held-out ones."""
        _, heldout = split_variations(int(self.c.demos.n_heldout), int(self.c.demos.split_seed))
        return list(heldout[: int(self.c.eval.episodes_per_task)])

    def run_episodes(self, policy: SuitePolicy, tasks: Sequence[str] | None = None, *,
                     video_dir: Path | None = None, desc: str = "evaluate") -> EvalResult:
        """One episode per task (default: every suite's) and held-out variation, uncached."""
        return evaluate(policy, self.tasks if tasks is None else tasks, self.heldout_variations(),
                        vision=bool(self.c.vision), image_size=int(self.c.image_size),
                        camera=str(self.c.camera), device=self.device, video_dir=video_dir,
                        video_size=int(self.c.eval.video_size), desc=desc)

    def policy(self, action_head: str, variant: str) -> tuple[SuitePolicy, MergedExperts | None]:
        """The policy a variant names (and the merge it came from, if any)."""
        merge, masked, route, refit = variant_parts(variant)
        base, experts, _ = self.experts(action_head)

        def build(sd: Mapping[str, torch.Tensor]) -> TinyVLA:
            return self.build(action_head, sd)

        if merge == "base":
            return SuitePolicy([build(base)], self.suites, "single"), None
        if merge == "naive_full":
            return SuitePolicy([build(naive_average(experts))], self.suites, "single"), None
        if merge == "experts":
            return SuitePolicy([build(sd) for sd in experts], self.suites, "oracle"), None
        merged = self.merge(action_head, merge, refit)
        models = [build(merged.state_dict_for(t, masked=masked)) for t in range(merged.n_tasks)]
        router, layer = None, None
        if route == "router":  # each suite's subspace from that expert's own (unmerged) weights
            r = self.c.router
            if str(r.source) == "lora_task_vector":  # the expert's change to a backbone layer
                layer = int(r.layer)
                key = models[0].backbone_value_key(layer)
                weights = [sd[key] - base[key] for sd in experts]
            else:  # the reference: the last shared action-expert block's value projection
                weights = [sd[models[0].value_projection_key()] for sd in experts]
            router = TestTimeTaskRouter.from_value_projections(
                weights, k=int(r.k), temperature=float(r.temperature), tasks=self.suites)
        return SuitePolicy(models, self.suites, route, router, router_layer=layer), merged

    def evaluate(self, action_head: str, variant: str, video_dir: Path | None = None
                 ) -> tuple[EvalResult, bool]:
        """A variant's evaluation on the held-out variations (cached; filming runs it again, with
        the same result, and refreshes the cache)."""
        _, _, fps = self.experts(action_head)
        variations = self.heldout_variations()
        settings = {"variant": variant, "head": action_head, "variations": variations,
                    "merge": OmegaConf.to_container(self.c.merge, resolve=True),
                    "router": OmegaConf.to_container(self.c.router, resolve=True),
                    "vision": bool(self.c.vision), "image_size": int(self.c.image_size),
                    "camera": str(self.c.camera), "tasks": list(self.tasks)}

        def run_eval() -> dict[str, Any]:
            policy, _ = self.policy(action_head, variant)
            result = self.run_episodes(policy, video_dir=video_dir,
                                       desc=f"eval {variant} ({action_head}, seed {self.seed})")
            return {"result": json.dumps(result.to_dict())}

        state, _, cached = cached_stage(self.cache, f"eval_s{self.seed}", settings, fps, run_eval,
                                        rebuild=video_dir is not None)
        return EvalResult.from_dict(json.loads(state["result"])), cached


# ----- the entry ---------------------------------------------------------------------------------

def run_mergevla(c: DictConfig, seed: int, device: torch.device, run_dir: Path,
                 recorder: RunRecorder | None = None) -> dict[str, Any]:
    """Every stage for one seed; returns the metrics and writes the run's figures and files."""
    pipe = Pipeline(c, seed, device, recorder)
    _, _, demo_info = pipe.demos()
    metrics: dict[str, Any] = {"seed": seed, **demo_info, "variants": {}, "mask_stats": {}}
    episodes: dict[str, Any] = {}
    plan = [("cross_attention", v) for v in c.eval.variants] + \
           [("self_attention", v) for v in c.eval.ablation_variants]
    for head, variant in plan:
        name = variant if head == "cross_attention" else f"self_attention:{variant}"
        filming = bool(c.eval.video) and head == "cross_attention" and variant == c.eval.video_variant
        result, _ = pipe.evaluate(head, variant, run_dir / "videos" if filming else None)
        summary = summarise(result, pipe.suites)
        summary["seconds"] = result.seconds
        metrics["variants"][name] = summary
        if recorder is not None:
            recorder.log(stage=f"eval/{name}", seed=seed, step=None, loss=None,
                         success=summary["success"], seconds=result.seconds["total"])
        episodes[name] = result.to_dict()["episodes"]
        parts = variant_parts(variant)
        merge = parts.merge
        if parts.masked and f"{head}:{merge}" not in metrics["mask_stats"]:
            merged = pipe.merge(head, merge)
            metrics["mask_stats"][f"{head}:{merge}"] = merged.stats.to_dict()
            save_masks(run_dir / f"masks_{head}_{merge}.safetensors", merged.masks, tasks=pipe.suites,
                       lam=merged.lam)
    (run_dir / "results.json").write_text(json.dumps({"seed": seed, "episodes": episodes}, indent=1))
    _plots(metrics, pipe.suites, run_dir)
    return metrics


def _plots(metrics: Mapping[str, Any], suites: Sequence[str], run_dir: Path) -> None:
    plot_success(metrics["variants"], suites, run_dir / "success.png")
    plot_confusion(metrics["variants"], suites, run_dir / "router_confusion.png")


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """``entry`` of the MergeVLA experiments."""
    validated(cfg)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    metrics = run_mergevla(cfg.mergevla, int(cfg.seed), device, run_dir, rec)
    rows = [{"variant": n, "success %": 100 * v["success"],
             **{s: 100 * v["success_per_suite"].get(s, 0.0) for s in metrics["variants"][n]["success_per_suite"]},
             "router acc %": 100 * v["router_accuracy"] if "router_accuracy" in v else None}
            for n, v in metrics["variants"].items()]
    print(format_table(rows, title="MergeVLA (held-out variations)", floatfmt=".1f"))
    flat: dict[str, Any] = {}
    for n, v in metrics["variants"].items():
        flat[f"success/{n}"] = v["success"]
        if "router_accuracy" in v:
            flat[f"router_accuracy/{n}"] = v["router_accuracy"]
            flat[f"route_overhead/{n}"] = v["route_overhead"]
    return rec.finish({**flat, "details": metrics}, echo=False)
