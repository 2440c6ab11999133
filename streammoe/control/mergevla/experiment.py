"""Hydra entry of MergeVLA (``experiment=mergevla`` / ``mergevla_smoke``).

The pipeline, each stage cached under ``mergevla.data_dir`` by a fingerprint of its settings and
inputs (:func:`~streammoe.control.mergevla.train.cached_stage`), so a re-run skips finished stages
and a changed setting re-runs only what depends on it:

1. **demos**: scripted-expert demonstrations of every suite's tasks (HDF5, robomimic's layout,
   :func:`~streammoe.control.mergevla.data.ensure_demos`), the expert's success per task;
2. **base**: pre-training on positions (auxiliary targets) and on the pre-training tasks'
   actions, per action head;
3. **experts**: one per suite, LoRA + action expert, LoRA folded;
4. **merges**: for each merge method, ``tau_MTL``, TALL masks (saved to
   ``masks_<head>_<method>.safetensors`` in the run folder) and their statistics; for ``+refit``
   variants ``tau_MTL`` re-fitted to the masks on each suite's frames (``merge.refit_*``);
5. **evaluation** of every variant of ``mergevla.eval.variants`` (``<merge>[+mask[+refit]]/<route>``, see
   :func:`~streammoe.control.mergevla.config.variant_parts`) on the held-out variations, and of
   ``mergevla.eval.ablation_variants`` with the self-attention action head.

With ``mergevla.jobs`` > 1 (:meth:`Pipeline.prepare`) the demonstrations, experts and
evaluations run in that many spawned worker processes, which write the same stage files.

Writes ``metrics.json`` (success per variant and suite, router accuracy and overhead, mask
statistics, the demonstrator's success), ``metrics.csv`` (training losses), ``results.json`` (every
episode), ``router_confusion.png``, ``success.png`` and ``videos/<suite>.mp4`` (one episode per
suite of ``mergevla.eval.video_variant``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence
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

from streammoe.control.mergevla.config import MERGE_METHODS, validated, variant_parts
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
    LogFn,
    TrainSettings,
    cached_stage,
    obs_batch,
    stage_fingerprint,
    stage_path,
    train_base,
    train_expert,
)
from streammoe.devices import resolve_device
from streammoe.runs import RunRecorder, format_table, progress

__all__ = ["Pipeline", "model_config", "run", "run_mergevla"]


def model_config(c: DictConfig, action_head: str, seed: int) -> VLAConfig:
    """The :class:`VLAConfig` of ``mergevla.model`` with the data's shapes."""
    return VLAConfig(vision=bool(c.vision), image_size=int(c.image_size), state_dim=STATE_DIM,
                     vocab_size=len(VOCAB), max_instruction_len=INSTRUCTION_LEN,
                     action_head=action_head, seed=seed,
                     **OmegaConf.to_container(c.model, resolve=True))


def _without_legacy(settings: dict[str, Any], legacy: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` less each key of ``legacy`` that holds its legacy value: settings added later
    are left out of a stage's fingerprint at the value they replaced, so the stage files made
    before them stay valid."""
    return {k: v for k, v in settings.items() if not (k in legacy and v == legacy[k])}


def _model_settings(cfg: VLAConfig) -> dict[str, Any]:
    """The model's part of a stage's settings."""
    return _without_legacy(cfg.to_dict(), {"keypoints": 0})


def _router_settings(router: DictConfig, routed: bool) -> dict[str, Any]:
    """The router's part of an evaluation's settings (``routed``: the variant uses the router;
    settings added since then enter only the fingerprints they change)."""
    settings = OmegaConf.to_container(router, resolve=True)
    if not routed or not settings["discriminative"]:
        settings.pop("discriminative")
        settings.pop("ridge")
    return _without_legacy(settings, {"tokens": "all"})


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
        self._stages: dict[tuple[str, str], tuple[dict[str, torch.Tensor], str]] = {}
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
                markers=bool(self.c.markers), action_noise=float(d.action_noise), seed=int(d.seed),
                min_success=float(d.min_success), extra_variations=int(d.extra_variations),
                n_heldout=int(d.n_heldout), split_seed=int(d.split_seed), jobs=int(self.c.jobs))
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

    def _base_spec(self, action_head: str) -> tuple[str, dict[str, Any], list[str]]:
        """The base stage's ``(name, settings, inputs)``, what names its file."""
        demo_fp, _, _ = self.demos()
        cfg = model_config(self.c, action_head, self.seed)
        settings = _without_legacy(
            {"model": _model_settings(cfg), "train": _train_settings(self.c.base).to_dict(),
             "suites": list(self.suites), "pretrain_tasks": list(self.pretrain_tasks),
             "aux_weight": float(self.c.base.aux_weight)}, {"aux_weight": 1.0})
        return f"base_s{self.seed}", settings, [demo_fp]

    def base(self, action_head: str) -> tuple[dict[str, torch.Tensor], str]:
        """``(the base's state dict, its fingerprint)``, trained here unless cached."""
        _, data, _ = self.demos()
        cfg = model_config(self.c, action_head, self.seed)
        suites_data = {s: data[s] for s in self.suites}
        state, fp = self._stage(f"base/{action_head}", *self._base_spec(action_head), lambda log: train_base(
            cfg, suites_data, _train_settings(self.c.base), pretrain=data.get(PRETRAIN_SUITE),
            seed=self.seed, device=self.device, aux_weight=float(self.c.base.aux_weight), log=log))
        return state, fp

    def _expert_spec(self, action_head: str, suite: str) -> tuple[str, dict[str, Any], list[str]]:
        """One expert stage's ``(name, settings, inputs)``."""
        _, base_fp = self.base(action_head)
        e = self.c.expert
        settings = {"model": _model_settings(model_config(self.c, action_head, self.seed)),
                    "train": _train_settings(e).to_dict(), "suite": suite,
                    "lora": {"rank": int(e.lora_rank), "alpha": float(e.lora_alpha),
                             "target": str(e.lora_target)}, "targets": str(e.targets),
                    "shared_lr_scale": float(e.shared_lr_scale)}
        if e.train_vision:  # (the default leaves earlier stage files valid)
            settings["train_vision"] = True
        if float(e.aux_weight) > 0:  # (likewise)
            settings["aux_weight"] = float(e.aux_weight)
        if str(e.lora_init) != "default":  # (the default leaves earlier stage files valid)
            settings["lora_init"] = str(e.lora_init)
            if e.eva_layers is not None:
                settings["eva_layers"] = [int(i) for i in e.eva_layers]
            if e.eva_modules is not None:
                settings["eva_modules"] = [str(m) for m in e.eva_modules]
        return f"expert_{suite}_s{self.seed}", settings, [base_fp]

    def expert(self, action_head: str, suite: str) -> tuple[dict[str, torch.Tensor], str]:
        """``(one suite's expert state dict, its fingerprint)``, trained here unless cached."""
        base, _ = self.base(action_head)
        _, data, _ = self.demos()
        e = self.c.expert
        cfg = model_config(self.c, action_head, self.seed)
        return self._stage(f"expert/{action_head}/{suite}", *self._expert_spec(action_head, suite),
                           lambda log: train_expert(
                               cfg, base, data[suite], _train_settings(e), lora_rank=int(e.lora_rank),
                               lora_alpha=float(e.lora_alpha), lora_target=str(e.lora_target),
                               shared_lr_scale=float(e.shared_lr_scale), lora_init=str(e.lora_init),
                               eva_layers=None if e.eva_layers is None else [int(i) for i in e.eva_layers],
                               eva_modules=None if e.eva_modules is None else [str(m) for m in e.eva_modules],
                               train_vision=bool(e.train_vision), aux_weight=float(e.aux_weight),
                               seed=self.seed * 1000 + self.suites.index(suite) + 1, device=self.device,
                               log=log))

    def _stage(self, label: str, name: str, settings: dict[str, Any], inputs: list[str],
               train: Callable[[LogFn | None], tuple[dict[str, torch.Tensor], list[dict[str, float]]]]
               ) -> tuple[dict[str, torch.Tensor], str]:
        """A training stage's weights (cached). Its loss history is kept in its file and goes to
        ``metrics.csv`` once per pipeline: row by row while it trains here, from the file when a
        worker or an earlier run trained it."""
        key = (name, stage_fingerprint(name, settings, inputs))
        if key not in self._stages:
            log = None if self.recorder is None else (
                lambda row: self.recorder.log(stage=label, seed=self.seed, step=row["step"], loss=row["loss"],
                                              success=None, seconds=row["seconds"]))

            def build() -> dict[str, Any]:
                weights, history = train(log)
                return {"weights": weights, "history": json.dumps(history)}

            state, fp, cached = cached_stage(self.cache, name, settings, inputs, build)
            if cached and log is not None:
                for row in json.loads(state["history"]) if "history" in state else []:  # (older files: none)
                    log(row)
            self._stages[key] = (state["weights"], fp)
        return self._stages[key]

    def experts(self, action_head: str) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[str]]:
        """``(base state dict, expert state dicts in suite order, their fingerprints)``."""
        base, _ = self.base(action_head)
        experts = [self.expert(action_head, suite) for suite in self.suites]
        return base, [sd for sd, _ in experts], [fp for _, fp in experts]

    def grams(self, action_head: str) -> list[dict[str, torch.Tensor]]:
        """Per suite, the Gram matrices of the inputs of every backbone linear layer of that
        suite's expert on ``merge.refit_frames`` of its demonstration frames (real tokens only;
        the frames drawn with the seed), for ``+refit`` (computed once per head); with
        ``merge.refit_vision`` also of the vision encoder's linear and convolution layers (every
        image position), unless each suite keeps its encoder (:meth:`encoder_per_suite`)."""
        if action_head not in self._grams:
            base, experts, _ = self.experts(action_head)
            _, data, _ = self.demos()
            n = int(self.c.merge.refit_frames)
            rng = np.random.default_rng(self.seed)
            keys = [k for k in base if k.startswith("backbone.")]
            refit_encoder = self.c.merge.refit_vision and self.c.vision and not self.encoder_per_suite()
            grams = []
            for suite, sd in zip(self.suites, experts):
                model = self.build(action_head, sd)
                vision_keys = ([k for k in base if k.startswith(model.vision_encoder_prefix())]
                               if refit_encoder else [])
                frames = data[suite]
                idx = rng.choice(len(frames), size=min(n, len(frames)), replace=False)
                batches = [obs_batch(frames, idx[i:i + 256], model.cfg.vision, self.device)
                           for i in range(0, len(idx), 256)]
                g = input_grams(model, keys, batches, model.encode, model.token_valid_mask)
                if vision_keys:  # the encoder sees whole images: no token mask applies
                    g.update(input_grams(model, vision_keys, batches, model.encode))
                grams.append(g)
            self._grams[action_head] = grams
        return self._grams[action_head]

    def encoder_per_suite(self) -> bool:
        """Whether each suite keeps its expert's vision encoder with its head
        (``merge.vision_encoder=per_suite``, on images with ``expert.train_vision``; otherwise the
        encoders are the base's, or there is none, and the setting changes nothing)."""
        return (bool(self.c.vision) and bool(self.c.expert.train_vision)
                and str(self.c.merge.vision_encoder) == "per_suite")

    def merge(self, action_head: str, method: str, refit: bool = False) -> MergedExperts:
        """The experts merged with ``method`` (computed once per head, method and refit);
        ``refit``: the shared vector re-fitted to the masks on each suite's frames. The expert
        heads are kept per suite, with the vision encoder when :meth:`encoder_per_suite`."""
        if (action_head, method, refit) not in self._merges:
            base, experts, _ = self.experts(action_head)
            probe = TinyVLA(model_config(self.c, action_head, self.seed))
            m = self.c.merge
            scale = float(m.task_arithmetic_scale) if method == "task_arithmetic" else 1.0
            heads = probe.expert_head_prefixes() + (
                (probe.vision_encoder_prefix(),) if self.encoder_per_suite() else ())
            self._merges[action_head, method, refit] = merge_experts(
                base, experts, heads=heads,
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
                        video_size=int(self.c.eval.video_size), desc=desc,
                        markers=bool(self.c.markers))

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
                weights, k=int(r.k), discriminative=int(r.discriminative), ridge=float(r.ridge),
                temperature=float(r.temperature), tasks=self.suites)
        return SuitePolicy(models, self.suites, route, router, router_layer=layer,
                           router_tokens=str(self.c.router.tokens)), merged

    def _eval_spec(self, action_head: str, variant: str) -> tuple[str, dict[str, Any], list[str]]:
        """A variant's evaluation stage ``(name, settings, inputs)``."""
        fps = [stage_fingerprint(*self._expert_spec(action_head, suite)) for suite in self.suites]
        parts = variant_parts(variant)
        merge = OmegaConf.to_container(self.c.merge, resolve=True)
        per_suite = self.encoder_per_suite() and parts.merge in MERGE_METHODS  # (a variant that merges)
        if not (parts.refit and merge["refit_vision"]) or per_suite:
            merge.pop("refit_vision")  # no effect on the variant (the files made before it stay valid)
        if not per_suite:
            merge.pop("vision_encoder")  # likewise
        settings = {"variant": variant, "head": action_head, "variations": self.heldout_variations(),
                    "merge": merge,
                    "router": _router_settings(self.c.router, parts.route == "router"),
                    "vision": bool(self.c.vision), "image_size": int(self.c.image_size),
                    "camera": str(self.c.camera), "tasks": list(self.tasks)}
        if self.c.markers and self.c.vision:  # named only when it draws (older files stay valid)
            settings["markers"] = True
        return f"eval_s{self.seed}", settings, fps

    def evaluate(self, action_head: str, variant: str, video_dir: Path | None = None
                 ) -> tuple[EvalResult, bool]:
        """A variant's evaluation on the held-out variations (cached; filming runs it again, with
        the same result, and refreshes the cache)."""

        def run_eval() -> dict[str, Any]:
            policy, _ = self.policy(action_head, variant)
            result = self.run_episodes(policy, video_dir=video_dir,
                                       desc=f"eval {variant} ({action_head}, seed {self.seed})")
            return {"result": json.dumps(result.to_dict())}

        state, _, cached = cached_stage(self.cache, *self._eval_spec(action_head, variant), run_eval,
                                        rebuild=video_dir is not None)
        return EvalResult.from_dict(json.loads(state["result"])), cached

    def is_cached(self, stage: str, action_head: str, name: str | None = None) -> bool:
        """Whether a stage's file exists: ``"base"``, ``"expert"`` (``name`` a suite) or
        ``"eval"`` (``name`` a variant)."""
        specs = {"base": lambda: self._base_spec(action_head),
                 "expert": lambda: self._expert_spec(action_head, str(name)),
                 "eval": lambda: self._eval_spec(action_head, str(name))}
        if stage not in specs:
            raise ValueError(f"unknown stage {stage!r}; choose one of {sorted(specs)}")
        return stage_path(self.cache, *specs[stage]()).is_file()

    def prepare(self, plan: Sequence[tuple[str, str, Path | None]], jobs: int) -> set[tuple[str, str]]:
        """Fill the cache for the evaluations of ``plan`` (``(action_head, variant, video_dir)``)
        with ``jobs`` worker processes of one torch thread each: the bases here, then the missing
        experts (one job per suite), then the missing evaluations and the filmed ones (one job per
        variant). ``evaluate`` then reads every result from the cache. Returns the ``(head,
        variant)`` pairs filmed here. ``jobs`` <= 1: nothing (the stages run in ``evaluate``)."""
        if jobs <= 1:
            return set()
        self.demos()
        heads = list(dict.fromkeys(head for head, _, _ in plan))
        for head in heads:
            self.base(head)  # one stage: both cores in one process
        config = OmegaConf.to_container(self.c, resolve=True)
        todo = [("expert", head, suite, None) for head in heads for suite in self.suites
                if not self.is_cached("expert", head, suite)]
        _run_jobs(config, self.seed, str(self.device), todo, jobs)
        todo = [("eval", head, variant, None if video is None else str(video)) for head, variant, video in plan
                if video is not None or not self.is_cached("eval", head, variant)]
        _run_jobs(config, self.seed, str(self.device), todo, jobs)
        return {(head, variant) for _, head, variant, video in todo if video is not None}


def _run_jobs(config: dict[str, Any], seed: int, device: str, todo: Sequence[tuple[str, str, str, str | None]],
              jobs: int) -> None:
    if not todo:
        return
    with mp.get_context("spawn").Pool(min(jobs, len(todo))) as pool:
        for _ in progress(pool.imap_unordered(_stage_job, [(config, seed, device, job) for job in todo]),
                          total=len(todo), desc=f"{todo[0][0]}s in {min(jobs, len(todo))} processes"):
            pass
        pool.close()  # let the workers exit (the with block alone terminates them)
        pool.join()


def _stage_job(args: tuple[dict[str, Any], int, str, tuple[str, str, str, str | None]]) -> None:
    """A worker process's job: one expert (``("expert", head, suite, None)``) or one evaluation
    (``("eval", head, variant, video_dir)``), written to the cache."""
    config, seed, device, (kind, head, name, video) = args
    torch.set_num_threads(1)
    pipe = Pipeline(OmegaConf.create(config), seed, torch.device(device))
    if kind == "expert":
        pipe.expert(head, name)
    else:
        pipe.evaluate(head, name, None if video is None else Path(video))


# ----- the entry ---------------------------------------------------------------------------------

def run_mergevla(c: DictConfig, seed: int, device: torch.device, run_dir: Path,
                 recorder: RunRecorder | None = None) -> dict[str, Any]:
    """Every stage for one seed; returns the metrics and writes the run's figures and files."""
    pipe = Pipeline(c, seed, device, recorder)
    _, _, demo_info = pipe.demos()
    metrics: dict[str, Any] = {"seed": seed, **demo_info, "variants": {}, "mask_stats": {}}
    episodes: dict[str, Any] = {}
    plan = [("cross_attention", v, run_dir / "videos" if c.eval.video and v == c.eval.video_variant else None)
            for v in c.eval.variants] + [("self_attention", v, None) for v in c.eval.ablation_variants]
    filmed = pipe.prepare(plan, int(c.jobs))  # the stages in worker processes (jobs > 1)
    for head in dict.fromkeys(head for head, _, _ in plan):
        pipe.experts(head)  # trained here (jobs 1) or read; their loss histories go to metrics.csv
    for head, variant, video_dir in plan:
        name = variant if head == "cross_attention" else f"self_attention:{variant}"
        result, _ = pipe.evaluate(head, variant, None if (head, variant) in filmed else video_dir)
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
