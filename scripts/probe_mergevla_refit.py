"""Why MergeVLA's merges lose push and pick-place, and what the refit changes: the probes behind
``+refit``, on a tuning seed, with the oracle suite (the router is exact on these experts).

On the seed's experts (stages read from ``mergevla.data_dir`` or trained) and TIES + TALL masks:

* **per-layer swap**: ``reach_push`` gets its own task vector on one backbone layer and the
  TIES + masks vector on the others (success on its tasks), one run per layer;
* **errors** per suite, relative to the suite's own task vector, over the merged backbone
  weights: in parameters, ``||mask_t * tau_MTL - tau_t|| / ||tau_t||``, and in the layers'
  outputs on the suite's frames, ``sqrt(sum tr(D G_t D^T)) / sqrt(sum tr(tau_t G_t tau_t^T))``
  with ``D = mask_t * tau_MTL - tau_t`` and ``G_t`` the suite's Gram matrices (what ``+refit``
  minimises);
* **success** (all suites, held-out variations) of: TIES + masks; the entry-wise optimum of one
  shared vector with binary masks (per entry, the masks and value with the least squared error
  over the suites: the value is the mean of the top-j same-sign entries, j and the sign chosen to
  maximise ``(sum)^2 / j``); TIES + masks + refit; RegMean (the refit with every mask on); the
  refit with TALL masks made from RegMean's vector;
* **cost** of the refit (``seconds``): the Gram matrices of every suite (``Pipeline.grams``) and
  the solve (``refit_to_masks``), one process.

Writes JSON (``--out``) and prints a table::

    python scripts/probe_mergevla_refit.py --experiment mergevla_state --seed 0 --out results/mergevla/refit_seed0/probes.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch


def entrywise_optimum(taus: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Per entry, the shared value and masks minimising ``sum_t (m_t v - tau_t)^2``: for a sign s
    and the top-j entries of that sign, ``v = s * mean`` and the error drops by ``(sum)^2 / j``."""
    shared: dict[str, torch.Tensor] = {}
    masks: list[dict[str, torch.Tensor]] = [{} for _ in taus]
    for key in taus[0]:
        x = torch.stack([t[key].flatten().double() for t in taus])
        best_gain = torch.zeros(x.shape[1], dtype=x.dtype)
        best_v = torch.zeros_like(best_gain)
        best_thr = torch.zeros_like(best_gain)
        for sign in (1.0, -1.0):
            ranked, _ = (sign * x).clamp(min=0).sort(dim=0, descending=True)
            sums = ranked.cumsum(0)
            for j in range(1, x.shape[0] + 1):
                gain = sums[j - 1] ** 2 / j
                better = (gain > best_gain) & (ranked[j - 1] > 0)
                best_gain = torch.where(better, gain, best_gain)
                best_v = torch.where(better, sign * sums[j - 1] / j, best_v)
                best_thr = torch.where(better, ranked[j - 1], best_thr)
        keep = (x * torch.sign(best_v) >= best_thr) & (best_v != 0)
        shape, dtype = taus[0][key].shape, taus[0][key].dtype
        shared[key] = best_v.view(shape).to(dtype)
        for t in range(len(taus)):
            masks[t][key] = keep[t].view(shape)
    return shared, masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="mergevla")
    ap.add_argument("--seed", type=int, default=0, help="a tuning seed (the bench reports 1-3)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_mergevla import _compose
    from streammoe_envs.metaworld import SUITES

    from streammoe.control.mergevla.evaluate import SuitePolicy, summarise
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.control.mergevla.merging import (
        merged_task_vector,
        refit_to_masks,
        tall_masks,
        task_vectors,
    )
    from streammoe.devices import resolve_device, seed_everything
    from streammoe.runs import format_table

    cfg = _compose(args.experiment, args.overrides)
    c = cfg.mergevla
    seed_everything(args.seed)
    pipe = Pipeline(c, args.seed, resolve_device(cfg.device))
    head = "cross_attention"
    base, experts, _ = pipe.experts(head)
    start = time.perf_counter()
    grams = pipe.grams(head)
    seconds = {"grams": time.perf_counter() - start}
    keys = [k for k in grams[0] if any(not torch.equal(e[k], base[k]) for e in experts)]
    taus = task_vectors({k: base[k] for k in keys}, [{k: e[k] for k in keys} for e in experts])
    gsub = [{k: g[k] for k in keys} for g in grams]
    n = len(taus)

    def deltas(shared: dict[str, torch.Tensor], masks: list[dict[str, torch.Tensor]] | None
               ) -> list[dict[str, torch.Tensor]]:
        return [{k: shared[k] * masks[t][k] if masks else shared[k] for k in keys} for t in range(n)]

    def run(name: str, ds: list[dict[str, torch.Tensor]], suites: tuple[str, ...] = pipe.suites) -> dict[str, Any]:
        models = [pipe.build(head, {**sd, **{k: base[k] + ds[t][k] for k in keys}})
                  for t, sd in enumerate(experts)]
        tasks = [task for s in suites for task in SUITES[s]]
        result = pipe.run_episodes(SuitePolicy(models, pipe.suites, "oracle"), tasks, desc=name)
        s = summarise(result, pipe.suites)
        per_task: dict[str, list[bool]] = {}
        for e in result.episodes:
            per_task.setdefault(e.task, []).append(e.success)
        return {"success": s["success"], "success_per_task": {k: sum(v) / len(v) for k, v in per_task.items()}}

    def errors(ds: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Per suite the relative errors; over the suites the summed squared errors (what the
        entry-wise optimum and the refit each minimise)."""
        par, out, par_sq, out_sq = [], [], 0.0, 0.0
        for t in range(n):
            d = {k: (ds[t][k] - taus[t][k]).double() for k in keys}
            own = {k: taus[t][k].double() for k in keys}
            num_p = float(sum(d[k].pow(2).sum() for k in keys))
            par.append((num_p / float(sum(own[k].pow(2).sum() for k in keys))) ** 0.5)
            num_o = float(sum(torch.trace(d[k] @ gsub[t][k] @ d[k].T) for k in keys))
            out.append((num_o / float(sum(torch.trace(own[k] @ gsub[t][k] @ own[k].T) for k in keys))) ** 0.5)
            par_sq, out_sq = par_sq + num_p, out_sq + num_o
        return {"parameters": par, "outputs": out, "parameters_sum_sq": par_sq, "outputs_sum_sq": out_sq}

    m = c.merge
    ties = merged_task_vector(taus, "ties", density=float(m.ties_density))
    ties_masks = tall_masks(taus, ties, float(m.lam))
    opt_shared, opt_masks = entrywise_optimum(taus)
    start = time.perf_counter()
    refit = refit_to_masks(taus, ties_masks, gsub, ridge=float(m.refit_ridge))
    seconds["refit_solve"] = time.perf_counter() - start
    every = [{k: torch.ones_like(taus[0][k], dtype=torch.bool) for k in keys} for _ in range(n)]
    regmean = refit_to_masks(taus, every, gsub, ridge=float(m.refit_ridge))
    regmean_masks = tall_masks(taus, regmean, float(m.lam))
    regmean_refit = refit_to_masks(taus, regmean_masks, gsub, ridge=float(m.refit_ridge))
    merges = {
        "ties+mask": deltas(ties, ties_masks),
        "entrywise_optimum+mask": deltas(opt_shared, opt_masks),
        "ties+mask+refit": deltas(refit, ties_masks),
        "regmean": deltas(regmean, None),
        "regmean_masks+refit": deltas(regmean_refit, regmean_masks),
    }
    density = {"ties+mask": ties_masks, "entrywise_optimum+mask": opt_masks, "regmean_masks+refit": regmean_masks}
    rows, out = [], {"seed": args.seed, "overrides": args.overrides, "suites": list(pipe.suites), "keys": keys,
                     "variations": pipe.heldout_variations(), "seconds": seconds, "merges": {},
                     "layer_swap": {}}
    for name, ds in merges.items():
        res = run(name, ds)
        res["relative_error"] = errors(ds)
        if name in density:
            ms = density[name]
            res["mask_density"] = [float(sum(ms[t][k].sum() for k in keys) / sum(ms[t][k].numel() for k in keys))
                                   for t in range(n)]
        out["merges"][name] = res
        rows.append({"merge": name, "success %": 100 * res["success"],
                     **{f"{s} param err": res["relative_error"]["parameters"][i] for i, s in enumerate(pipe.suites)},
                     **{f"{s} output err": res["relative_error"]["outputs"][i] for i, s in enumerate(pipe.suites)}})
    reach = pipe.suites.index("reach_push") if "reach_push" in pipe.suites else None
    if reach is not None:
        swap_rows = []
        for layer in range(int(c.model.n_layers)):
            ds = deltas(ties, ties_masks)
            ds[reach] = {k: taus[reach][k] if k.startswith(f"backbone.layers.{layer}.") else ds[reach][k]
                         for k in keys}
            res = run(f"reach_push own layer {layer}", ds, suites=("reach_push",))
            out["layer_swap"][str(layer)] = res["success_per_task"]
            swap_rows.append({"reach_push's own layer": layer,
                              **{task: 100 * v for task, v in res["success_per_task"].items()}})
        print(format_table(swap_rows, title="reach_push with its own task vector on one layer, TIES + masks elsewhere",
                           floatfmt=".0f"))
    print(format_table(rows, title=f"MergeVLA refit probes, seed {args.seed} (oracle suite)", floatfmt=".3f"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
