"""MOA's Hoeffding tree (the DriftMoE reference code's expert) against River's (ours), on MOA's streams.

The reference code builds its experts from CapyMOA's ``HoeffdingTree`` (MOA's Java tree) with
grace period 50 and split confidence 1e-7 (otherwise CapyMOA's defaults: information gain, tie
threshold 0.05, naive-Bayes-adaptive leaves, Gaussian numeric observers, multiway splits, memory
management on). streammoe's faithful experts are River's ``HoeffdingTreeClassifier`` with the same
settings (grace 50, delta 1e-7, tau 0.05, information gain, naive-Bayes-adaptive leaves, no
merit pre-pruning). This script runs one of each, side by side on the same rows
of a MOA stream (``moa_streams.make_moa_stream``), test-then-train with every row counted, and
reports the cumulative and per-window accuracy of both: if the trees differed, faithful mode's gap
to the paper could come from them.

    python scripts/compare_moa_trees.py --streams RBFf,LEDa --seeds 1 --scale 1.0 \
        --out results/driftmoe/moa_vs_river_trees.json

Needs ``pip install 'streammoe[moa]'`` and Java.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: MOA's CLI for the reference code's expert: what CapyMOA's HoeffdingTree(grace_period=50,
#: confidence=1e-7, binary_split=False, stop_mem_management=False) builds (its other defaults:
#: Gaussian numeric observers, information gain, tie threshold 0.05, pre-pruning off (-p),
#: naive-Bayes-adaptive leaves (-l 2), nb threshold 0, 32 MB with a memory check every 1M rows).
MOA_TREE_CLI = ("trees.HoeffdingTree -g 50 -m 33554433 -n GaussianNumericAttributeClassObserver "
                "-e 1000000 -s InfoGainSplitCriterion -c 1e-07 -t 0.05 -p -l 2 -q 0")


def compare(name: str, scale: float, seed: int, windows: int = 10) -> dict[str, Any]:
    """Prequential accuracy (%) of MOA's and River's tree on one MOA stream, overall and per window."""
    from streammoe.stream.driftmoe import DriftMoEData
    from streammoe.stream.moa_streams import make_moa_stream, moa_classifier

    stream = make_moa_stream(name, scale=scale, seed=seed)
    moa_stream = stream.moa_stream()
    moa_tree = moa_classifier(MOA_TREE_CLI, moa_stream.getHeader())
    # a faithful DriftMoE expert, from the estimator's own expert hook (the one place its
    # settings live; driftmoe_moa_experts.py overrides the same hook with MOA's tree)
    river_tree = DriftMoEData(faithful=True, seed=seed)._new_tree()
    n = stream.n_instances
    per = max(1, n // windows)
    right = {"moa": 0, "river": 0}
    window_right = {"moa": 0, "river": 0}
    window_acc: dict[str, list[float]] = {"moa": [], "river": []}
    seconds = {"moa": 0.0, "river": 0.0}
    perf = time.perf_counter
    for t in range(n):
        inst = moa_stream.nextInstance().getData()
        values = list(inst.toDoubleArray())  # features, then the class index
        y = int(values[-1])
        x = dict(enumerate(values[:-1]))
        start = perf()
        votes = list(moa_tree.getVotesForInstance(inst))
        moa_pred = max(range(len(votes)), key=votes.__getitem__) if votes and sum(votes) > 0 else None
        moa_tree.trainOnInstance(inst)
        seconds["moa"] += perf() - start
        start = perf()
        river_pred = river_tree.predict_one(x)
        river_tree.learn_one(x, y)
        seconds["river"] += perf() - start
        for key, pred in (("moa", moa_pred), ("river", river_pred)):
            hit = pred is not None and pred == y
            right[key] += hit
            window_right[key] += hit
        if (t + 1) % per == 0 or t + 1 == n:
            size = per if (t + 1) % per == 0 else (t + 1) % per
            for key in window_acc:
                window_acc[key].append(100 * window_right[key] / size)
                window_right[key] = 0
    return {"stream": name, "seed": seed, "n": n, "moa_cli": MOA_TREE_CLI, "stream_cli": stream.cli,
            "accuracy": {k: 100 * v / n for k, v in right.items()},
            "window_accuracy": window_acc,
            "inst_per_s": {k: n / v for k, v in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="RBFf")
    ap.add_argument("--seeds", default="1", help="comma-separated seeds")
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = the paper's 1M instances")
    ap.add_argument("--out", default="results/driftmoe/moa_vs_river_trees.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("CAPYMOA_JVM_ARGS", "-Xmx2g -Xss10M -XX:ActiveProcessorCount=1")

    from streammoe.runs import format_table, to_jsonable

    rows = []
    for name in args.streams.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = compare(name, args.scale, seed)
            rows.append(r)
            print(f"{name} seed {seed}: MOA tree {r['accuracy']['moa']:.2f} %, River tree "
                  f"{r['accuracy']['river']:.2f} %", flush=True)
    table = [{"stream": r["stream"], "seed": r["seed"], "n": r["n"],
              "moa_tree": r["accuracy"]["moa"], "river_tree": r["accuracy"]["river"],
              "river_minus_moa": r["accuracy"]["river"] - r["accuracy"]["moa"],
              "max_window_gap": max(abs(a - b) for a, b in zip(r["window_accuracy"]["river"],
                                                               r["window_accuracy"]["moa"]))}
             for r in rows]
    print(format_table(table, title="MOA's vs River's Hoeffding tree on MOA's streams (accuracy %)"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable({"command": " ".join(["python", *sys.argv]),
                                           "rows": table, "runs": rows}), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
