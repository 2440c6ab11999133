"""Compare the paper's six streams built from River's generators with the same streams from MOA's.

For each stream, seed and source (``river``: ``streams.make_stream``, ``moa``:
``moa_streams.make_moa_stream``, same length, drifts and seed) it measures what would show a
difference between the generators: class balance, the majority class's share, the prequential
accuracy of predicting the majority class so far (kappa-m's baseline) and of repeating the last
label (kappa-t's baseline), and the prequential (test-then-train, every instance counted)
accuracy of one River Hoeffding tree with the paper's expert settings (grace_period=50,
delta=1e-7, tau=0.05, leaf_prediction="nba", nb_threshold=0), overall and per concept (between
drift centres). Also the generation speed of each source (instances/s, generation alone).

    python scripts/compare_moa_streams.py --scale 0.1 --seeds 1 \
        --out results/driftmoe/moa_vs_river_streams.json

Needs ``pip install 'streammoe[moa]'`` and Java. Runs on one core (the JVM is told it has one
processor unless ``CAPYMOA_JVM_ARGS`` is set).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ALL_STREAMS = "LEDa,LEDg,SEAa,SEAg,RBFm,RBFf"


def make(source: str, name: str, scale: float, seed: int):
    if source == "moa":
        from streammoe.stream.moa_streams import make_moa_stream

        return make_moa_stream(name, scale=scale, seed=seed)
    from streammoe.stream.streams import make_stream

    return make_stream(name, scale=scale, seed=seed)


def measure(source: str, name: str, scale: float, seed: int) -> dict[str, Any]:
    from streammoe.stream.learners import make_learner

    stream = make(source, name, scale, seed)
    t0 = time.perf_counter()
    n_gen = sum(1 for _ in stream)
    gen_speed = n_gen / (time.perf_counter() - t0)

    bounds = [0, *stream.drifts, stream.n_instances]  # concepts split at the drift centres
    seg_right = [0] * (len(bounds) - 1)
    counts: collections.Counter[int] = collections.Counter()
    ht = make_learner("ht")  # a DriftMoE expert's settings (learners.TREE_PARAMS)
    ht_right = maj_right = nochange_right = 0
    last = None
    seg = 0
    t0 = time.perf_counter()
    for t, (x, y) in enumerate(stream):
        while t >= bounds[seg + 1]:
            seg += 1
        label = int(y)  # River's SEA gives bool, MOA's int
        if counts and counts.most_common(1)[0][0] == label:
            maj_right += 1
        nochange_right += last == label
        ok = ht.predict_one(x) == y  # None before the first learn counts as wrong
        ht_right += ok
        seg_right[seg] += ok
        ht.learn_one(x, y)
        counts[label] += 1
        last = label
    ht_time = time.perf_counter() - t0

    n = stream.n_instances
    return {
        "stream": name, "source": source, "seed": seed, "n": n,
        "majority_share": 100 * max(counts.values()) / n,
        "majority_acc": 100 * maj_right / n,
        "no_change_acc": 100 * nochange_right / n,
        "ht_acc": 100 * ht_right / n,
        "ht_concept_acc": [100 * r / (b - a) for r, a, b in zip(seg_right, bounds, bounds[1:])],
        "class_balance": {str(k): counts[k] / n for k in sorted(counts)},
        "gen_inst_per_s": gen_speed,
        "ht_inst_per_s": n / ht_time,
        "cli": getattr(stream, "cli", None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--seeds", default="1", help="comma-separated seeds")
    ap.add_argument("--streams", default=ALL_STREAMS)
    ap.add_argument("--out", default="results/driftmoe/moa_vs_river_streams.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("CAPYMOA_JVM_ARGS", "-Xmx2g -Xss10M -XX:ActiveProcessorCount=1")

    from streammoe.runs import format_table, to_jsonable
    from streammoe.stream.learners import TREE_PARAMS

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in args.streams.split(","):
        for seed in seeds:
            for source in ("river", "moa"):
                row = measure(source, name, args.scale, seed)
                rows.append(row)
                print(f"{name} seed {seed} {source}: HT {row['ht_acc']:.2f} %, majority "
                      f"{row['majority_acc']:.2f} %, {row['gen_inst_per_s']:.0f} inst/s generated",
                      flush=True)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    summary = []
    for name in args.streams.split(","):
        by = {src: [r for r in rows if r["stream"] == name and r["source"] == src]
              for src in ("river", "moa")}
        line: dict[str, Any] = {"stream": name}
        for key, short in (("majority_share", "maj%"), ("majority_acc", "majAcc"),
                           ("no_change_acc", "noChg"), ("ht_acc", "HT")):
            for src in ("river", "moa"):
                line[f"{short} {src}"] = mean([r[key] for r in by[src]])
        line["HT moa-river"] = line["HT moa"] - line["HT river"]
        for src in ("river", "moa"):
            line[f"gen/s {src}"] = mean([r["gen_inst_per_s"] for r in by[src]])
        summary.append(line)
    table = format_table(summary, title=f"River vs MOA generators, scale {args.scale}, "
                                        f"seeds {args.seeds} (accuracies in %)", floatfmt=".2f")
    print(table)
    concept_rows = [{"stream": r["stream"], "source": r["source"], "seed": r["seed"],
                     **{f"c{i}": a for i, a in enumerate(r["ht_concept_acc"])}}
                    for r in rows if len(r["ht_concept_acc"]) > 1]
    if concept_rows:
        print(format_table(concept_rows, title="HT accuracy per concept (between drift centres)",
                           floatfmt=".2f"))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable({
        "config": {"scale": args.scale, "seeds": seeds, "streams": args.streams.split(","),
                   "ht_params": TREE_PARAMS, "python": sys.version.split()[0],
                   "versions": _versions()},
        "summary": summary, "rows": rows}), indent=1))
    print(f"wrote {out}")
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("river", "capymoa", "jpype1"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
