"""Benchmark DriftMoE against River's ARF(10), SRP(10), Leveraging Bagging(10) and a Hoeffding tree.

Every (stream, seed) job runs all the learners side by side on one pass of the stream (each
instance goes to every learner before the next is read), so the instances/s ratios to ARF are
measured under the same machine load. Jobs run in parallel with joblib (2 workers at most on a
shared machine); each job's result is written to ``<out>.jobs/`` as soon as it finishes, so a
long run can be read (``--aggregate-only``) before it ends, and a rerun skips the finished jobs
(same learners, scale and length) and runs only the rest.

    python scripts/bench_driftmoe.py --streams SEAa,LEDa --seeds 1,2,3 --scale 0.1 \
        --learners driftmoe,driftmoe_faithful,driftmoe_task,driftmoe_task_faithful,arf,srp,levbag,ht \
        --n-jobs 2 --out results/driftmoe_bench.json

A stream name ending in ``@moa`` (``LEDa@moa``) is that paper stream built from MOA's own
generators through CapyMOA (``streammoe.stream.moa_streams``, the optional ``moa`` extra and a Java
runtime), the same drift centres and length as the River version.

Accuracy and kappas are cumulative prequential figures in %, every instance counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from streammoe.runs import format_table, to_jsonable

ALL_STREAMS = "LEDa,LEDg,SEAa,SEAg,RBFm,RBFf"
MOA_SUFFIX = "@moa"  # e.g. --streams LEDa@moa: LEDa from MOA's generators (pip install 'streammoe[moa]')
ALL_LEARNERS = "driftmoe,driftmoe_faithful,driftmoe_task,driftmoe_task_faithful,arf,srp,levbag,ht"


def parse_variant(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=KIND:JSON`` -> (name, learner kind, its parameters)."""
    name, eq, rest = spec.partition("=")
    kind, _, js = rest.partition(":")
    if not eq or not name or not kind:
        raise SystemExit(f"--variant {spec!r}: expected NAME=KIND:JSON, e.g. "
                         "'task_sqrt=driftmoe_task:{\"max_features\": \"sqrt\"}'")
    return name, kind, json.loads(js) if js else {}


def run_job(stream: str, seed: int, scale: float, n_instances: int | None, learners: list[str],
            job_dir: Path, variants: list[str] | None = None,
            learn_first: list[str] | None = None) -> dict[str, Any]:
    import torch

    from streammoe.stream.driftmoe import warm_up_torch
    from streammoe.stream.evaluation import prequential
    from streammoe.stream.learners import make_learner
    from streammoe.stream.streams import make_stream

    path = job_dir / f"{stream}_seed{seed}.json"
    wanted = list(learners) + [parse_variant(v)[0] for v in variants or []]
    if path.exists():  # resumable: a finished job with the same learners is not run again
        done = json.loads(path.read_text())
        if list(done["learners"]) == wanted and done.get("scale") == scale and \
                done.get("n_instances") == n_instances and \
                done.get("learn_first", []) == sorted(learn_first or []):
            return done
    torch.set_num_threads(1)  # 2 workers on a shared machine
    warm_up_torch()  # one-time imports stay out of the timed part
    if stream.endswith(MOA_SUFFIX):  # the same stream from MOA's own generators (CapyMOA)
        from streammoe.stream.moa_streams import make_moa_stream

        s = make_moa_stream(stream[: -len(MOA_SUFFIX)], scale=scale, seed=seed, n_instances=n_instances)
    else:
        s = make_stream(stream, scale=scale, seed=seed, n_instances=n_instances)
    models = {name: make_learner(name, seed=seed) for name in learners}
    for spec in variants or []:
        name, kind, params = parse_variant(spec)
        models[name] = make_learner(kind, seed=seed, **params)
    learners = list(models)
    progress_path = job_dir / f"{stream}_seed{seed}.progress.csv"
    progress_path.write_text("instance,wall_s," + ",".join(learners) + "\n")
    start = time.time()

    def log_progress(n: int, acc: dict[str, float]) -> None:
        with progress_path.open("a") as f:
            f.write(f"{n},{time.time() - start:.1f}," + ",".join(f"{acc[k]:.5f}" for k in learners) + "\n")

    results = prequential(models, s, window=max(1000, s.n_instances // 100), desc=f"{stream}/{seed}",
                          on_window=log_progress, learn_first=learn_first or ())
    job = {"stream": stream, "seed": seed, "scale": scale, "n_instances": n_instances,
           "learn_first": sorted(learn_first or []),
           "n": s.n_instances, "drifts": s.drifts,
           "wall_s": time.time() - start,
           "learners": {name: {**r.summary(), "window_accuracy": r.window_accuracy,
                               "memory_mb": r.memory_mb} for name, r in results.items()}}
    for ref in ("arf", "ht"):  # instances/s ratios measured side by side
        if ref in results:
            for name, r in results.items():
                job["learners"][name][f"speed_vs_{ref}"] = r.inst_per_s / results[ref].inst_per_s
    path.write_text(json.dumps(to_jsonable(job)) + "\n")
    return job


def aggregate(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mean +- std over seeds per (stream, learner), and a per-stream 'beats ARF' summary."""
    rows, by_stream = [], {}
    from streammoe.stream.streams import STREAMS

    order = list(STREAMS)
    streams = sorted({j["stream"] for j in jobs}, key=lambda s: order.index(s) if s in order else len(order))
    for stream in streams:
        js = [j for j in jobs if j["stream"] == stream]
        learners = list(js[0]["learners"])
        by_stream[stream] = {}
        for name in learners:
            per_seed = [j["learners"][name] for j in js if name in j["learners"]]

            def stat(key: str, per_seed: list[dict[str, Any]] = per_seed) -> tuple[float, float]:
                vals = np.array([p[key] for p in per_seed if p.get(key) is not None], dtype=float)
                return (float(vals.mean()), float(vals.std())) if len(vals) else (float("nan"), 0.0)

            acc, kap, km, kt = stat("accuracy"), stat("kappa"), stat("kappa_m"), stat("kappa_t")
            ips, ratio, mem = stat("inst_per_s"), stat("speed_vs_arf"), stat("peak_memory_mb")
            ratio_ht = stat("speed_vs_ht")
            rows.append({"stream": stream, "learner": name, "seeds": len(per_seed),
                         "accuracy": acc[0], "acc_std": acc[1], "kappa": kap[0], "kappa_m": km[0],
                         "kappa_t": kt[0], "inst_per_s": ips[0], "speed_vs_arf": ratio[0],
                         "speed_vs_ht": ratio_ht[0], "peak_mem_mb": mem[0]})
            by_stream[stream][name] = {"accuracy": acc, "kappa": kap, "kappa_m": km,
                                       "kappa_t": kt, "inst_per_s": ips, "speed_vs_arf": ratio,
                                       "speed_vs_ht": ratio_ht,
                                       "peak_memory_mb": mem,
                                       "per_seed_accuracy": [p["accuracy"] for p in per_seed]}
    return rows, by_stream


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default=ALL_STREAMS)
    p.add_argument("--seeds", default="1")
    p.add_argument("--scale", type=float, default=0.1, help="1.0 = the paper's 1M instances")
    p.add_argument("--n-instances", type=int, default=None, help="cut each stream (drifts stay)")
    p.add_argument("--learners", default=ALL_LEARNERS)
    p.add_argument("--variant", action="append", default=[],
                   help="an extra learner NAME=KIND:JSON (a preset with other settings), repeatable")
    p.add_argument("--learn-first", default="",
                   help="learners (or variant names) evaluated learn-then-predict, the DriftMoE "
                        "reference code's order (the label is seen before the prediction: not a "
                        "valid prequential score; for the fidelity check in docs/driftmoe.md)")
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--out", default="results/driftmoe_bench.json")
    p.add_argument("--aggregate-only", action="store_true", help="table from finished jobs only")
    a = p.parse_args(argv)

    out = Path(a.out)
    job_dir = out.with_suffix(".jobs")
    job_dir.mkdir(parents=True, exist_ok=True)
    streams, seeds = a.streams.split(","), [int(s) for s in a.seeds.split(",")]
    learners = a.learners.split(",")
    if a.aggregate_only:
        jobs = [json.loads(f.read_text()) for f in sorted(job_dir.glob("*.json"))]
    else:
        from joblib import Parallel, delayed

        # Seed-major order: every stream gets its first seed before any gets a second.
        grid = [(s, seed) for seed in seeds for s in streams]
        jobs = Parallel(n_jobs=min(a.n_jobs, 2), verbose=0)(
            delayed(run_job)(s, seed, a.scale, a.n_instances, learners, job_dir, a.variant,
                             [n for n in a.learn_first.split(",") if n])
            for s, seed in grid)
    if not jobs:
        print(f"no finished jobs in {job_dir}", file=sys.stderr)
        return 1
    rows, by_stream = aggregate(jobs)
    print(format_table(rows, title=f"DriftMoE benchmark ({len(jobs)} jobs; accuracy/kappas in %, "
                                   "speed_vs_arf = inst/s ratio measured side by side)"))
    summary: dict[str, Any] = {}
    for stream, res in by_stream.items():
        if "arf" in res:
            for name, r in res.items():
                if name.startswith("driftmoe"):
                    summary.setdefault(name, {})[stream] = {
                        "acc_minus_arf": r["accuracy"][0] - res["arf"]["accuracy"][0],
                        "speed_vs_arf": r["speed_vs_arf"][0]}
    for name, per_stream in summary.items():
        wins = sum(v["acc_minus_arf"] >= 0 for v in per_stream.values())
        print(f"{name}: accuracy >= ARF(10) on {wins}/{len(per_stream)} streams; "
              f"speed vs ARF {min(v['speed_vs_arf'] for v in per_stream.values()):.2f}x.."
              f"{max(v['speed_vs_arf'] for v in per_stream.values()):.2f}x")
    out.write_text(json.dumps(to_jsonable({"command": " ".join(sys.argv), "rows": rows,
                                           "by_stream": by_stream, "vs_arf": summary,
                                           "jobs": jobs}), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
