"""Choose MergeVLA's test-time router settings on a tuning seed, offline, without the held-out
variations.

For each LoRA initialisation (``default``: PEFT's random ``A``; ``eva``: ``A`` from the principal
directions of each layer's inputs) the seed's experts are trained (or read from the stage cache,
``mergevla.data_dir``) and merged; then, for every router setting of the grid, the router picks a
suite for the **first observation of every demonstration** (the training variations: what a
user has before evaluating) and its accuracy and confusion matrix are recorded. Grid:

* ``source=last_shared_value``: the reference's basis, the last shared action-expert block's value
  projection (with ``expert.shared_lr_scale=0`` the base's weight for every suite);
* ``source=lora_task_vector``: each expert's LoRA change to backbone layer ``layer``'s value
  projection (``layer`` 0 .. n_layers-1);
* ``k`` in 4, 8 right singular vectors; merges TIES + masks and task arithmetic + masks;
* ``--tokens``: the scores of every real token (``all``, the reference) or of the instruction's
  words only (``instruction``) averaged;
* ``--discriminative``: 0 (the top-``k`` directions themselves) or ``n``: per suite the ``n``
  directions its basis reads most relative to all suites' (``router.discriminative``, ``--ridge``).

``--sources`` and ``--layers`` narrow the grid. Besides accuracy each row has the routing margin
of every demonstration, ``(r_true - max_other r) / scale`` with ``scale`` the mean over the
demonstrations of the scores' standard deviation across suites (so settings whose scores live on
different scales compare): ``margin_min`` (the closest call; < 0 is a mistake) and
``margin_mean``, and per task the smallest margin.

It also records how much the experts' task vectors share input directions (``task_vector_overlap``:
per backbone weight, the mean cosine of the principal angles between two experts' top-8 right
singular subspaces, over the pairs of experts; about 0.35 for unrelated random 8-D subspaces of 64).

Prints a table and writes JSON (``--out``). The settings chosen here are the defaults in
``conf/experiment/mergevla.yaml``; the benchmark reports them on seeds 1-3 and held-out variations:

    python scripts/tune_mergevla_router.py --experiment mergevla_state --seed 0 --out results/mergevla/router_tuning_seed0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="mergevla")
    parser.add_argument("--seed", type=int, default=0, help="a tuning seed (the bench reports 1-3)")
    parser.add_argument("--inits", nargs="+", default=["default", "eva"])
    parser.add_argument("--k", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--merges", nargs="+", default=["ties+mask/router", "task_arithmetic+mask/router"])
    parser.add_argument("--tokens", nargs="+", default=["all"], choices=["all", "instruction"],
                        help="the tokens whose scores the router averages (router.tokens)")
    parser.add_argument("--discriminative", nargs="+", type=int, default=[0],
                        help="router.discriminative values (0: the top-k directions themselves)")
    parser.add_argument("--ridge", nargs="+", type=float, default=[1e-3], help="router.ridge values")
    parser.add_argument("--sources", nargs="+", default=["last_shared_value", "lora_task_vector"],
                        choices=["last_shared_value", "lora_task_vector"])
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="backbone layers of lora_task_vector (default: every layer)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()

    import torch

    from streammoe.cli import compose_config
    from streammoe.config import validate
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.control.mergevla.router import confusion_matrix
    from streammoe.runs import format_table

    torch.set_num_threads(1)
    rows, table, overlaps = [], [], {}
    for init in args.inits:
        cfg = compose_config([f"experiment={args.experiment}", f"seed={args.seed}", *args.overrides,
                              f"mergevla.expert.lora_init={init}"])
        validate(cfg)
        pipe = Pipeline(cfg.mergevla, args.seed, torch.device("cpu"))
        _, data, _ = pipe.demos()
        keys = ("image" if cfg.mergevla.vision else "state", "proprio", "instruction")
        first, labels, task_names = {k: [] for k in keys}, [], []
        for s, suite in enumerate(pipe.suites):
            d = data[suite]
            at = np.flatnonzero(d.step == 0)  # each demonstration's first observation
            for k in keys:
                first[k].append(torch.from_numpy(d.obs[k][at]))
            labels += [s] * len(at)
            task_names += [d.tasks[i] for i in d.task_index[at]]
        obs = {k: torch.cat(v) for k, v in first.items()}
        n_layers = int(cfg.mergevla.model.n_layers)
        # how much the experts' task vectors share their input directions: the mean cosine of the
        # principal angles between two experts' top-8 right singular subspaces, per weight
        base, experts, _ = pipe.experts("cross_attention")
        overlap = {}
        for key in [f"backbone.layers.{i}.{w}.weight" for i in range(n_layers)
                    for w in ("attn.v_proj", "ffn.fc1")]:
            spaces = [torch.linalg.svd((e[key] - base[key]).double())[2][:8] for e in experts]
            pairs = [float(torch.linalg.svdvals(spaces[a] @ spaces[b].T).mean())
                     for a in range(len(spaces)) for b in range(a + 1, len(spaces))]
            overlap[key] = {"mean": float(np.mean(pairs)), "min": min(pairs), "max": max(pairs)}
            print(f"{init:8s} task-vector input-subspace overlap {key}: {np.mean(pairs):.2f} "
                  f"({min(pairs):.2f}-{max(pairs):.2f})", flush=True)
        overlaps[init] = overlap
        layers = range(n_layers) if args.layers is None else args.layers
        grid = ([("last_shared_value", None)] if "last_shared_value" in args.sources else []) + (
            [("lora_task_vector", layer) for layer in layers] if "lora_task_vector" in args.sources else [])
        settings = [(k, tokens, n, ridge) for k in args.k for tokens in args.tokens
                    for n in args.discriminative if n <= k for ridge in (args.ridge if n else args.ridge[:1])]
        true, names = np.asarray(labels), np.asarray(task_names)
        for variant in args.merges:
            for source, layer in grid:
                for k, tokens, n, ridge in settings:
                    r = pipe.c.router
                    r.source, r.k, r.tokens, r.discriminative, r.ridge = source, k, tokens, n, ridge
                    r.layer = 0 if layer is None else layer
                    policy, _ = pipe.policy("cross_attention", variant)
                    route = policy.route_batch(obs)
                    chosen = route.tasks.reshape(-1)
                    acc = float((chosen.numpy() == true).mean())
                    cm = confusion_matrix(labels, chosen, len(pipe.suites)).tolist()
                    scores = route.scores.reshape(len(labels), -1).double().numpy()
                    own = scores[np.arange(len(true)), true]
                    others = np.where(np.eye(scores.shape[1], dtype=bool)[true], -np.inf, scores).max(1)
                    margin = (own - others) / scores.std(axis=1).mean()
                    per_task = {t: float(margin[names == t].min()) for t in dict.fromkeys(task_names)}
                    rows.append({"lora_init": init, "variant": variant, "source": source, "layer": layer,
                                 "k": k, "tokens": tokens, "discriminative": n, "ridge": ridge if n else None,
                                 "accuracy": acc, "confusion": cm, "episodes": len(labels),
                                 "margin_min": float(margin.min()), "margin_mean": float(margin.mean()),
                                 "margin_min_per_task": per_task})
                    worst = min(per_task, key=per_task.get)
                    table.append({"lora_init": init, "variant": variant, "source": source,
                                  "layer": "" if layer is None else layer, "k": k, "tokens": tokens,
                                  "discriminative": n, "ridge": ridge if n else "",
                                  "router acc %": 100 * acc, "margin min": float(margin.min()),
                                  "margin mean": float(margin.mean()), "closest": worst})
                    print(f"{init:8s} {variant:28s} {source:18s} layer={layer} k={k} tokens={tokens} "
                          f"discriminative={n} ridge={ridge if n else '-'}: {100 * acc:.1f} %, margin min "
                          f"{margin.min():+.3f} ({worst}) mean {margin.mean():+.3f}", flush=True)
    print(format_table(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "experiment": args.experiment,
                                    "overrides": args.overrides, "suites": list(pipe.suites),
                                    "data": "first observation of every demonstration (training variations)",
                                    "rows": rows, "task_vector_overlap": overlaps}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
