"""Where a DriftMoE learn/predict step spends its time: router inference, router training, tree
predictions, tree learning, input checks and the rest (Python overhead of the estimator).

Each part is timed by wrapping the one method that does it (``OnlineRouter.scores``,
``OnlineRouter.step``, River's ``HoeffdingTreeClassifier.predict_proba_one`` / ``learn_one``,
the estimator's ``_check_row``) with ``time.perf_counter``; the test-then-train loop itself is
timed as a whole, and "other" is what is left. ARF(10) and one Hoeffding tree run on the same
rows in the same process for scale.

    python scripts/profile_driftmoe.py --streams HYP50,SEAa --n 10000 \
        --learners driftmoe,driftmoe_task --out results/driftmoe/profile.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from streammoe.runs import format_table, to_jsonable

PARTS = ("router_inference", "router_training", "tree_predict", "tree_learn", "input_checks")


class Timers:
    """Wraps methods with perf_counter accumulators; ``active`` turns accounting on and off."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.active = False
        self._undo: list[tuple[type, str, Any]] = []

    def wrap(self, cls: type, name: str, part: str) -> None:
        original = cls.__dict__[name]
        timers = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not timers.active:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.seconds[part] += time.perf_counter() - start
                timers.calls[part] += 1

        setattr(cls, name, timed)
        self._undo.append((cls, name, original))

    def restore(self) -> None:
        for cls, name, original in reversed(self._undo):
            setattr(cls, name, original)
        self._undo.clear()


def profile_learner(kind: str, rows: list[tuple[dict, Any]], params: dict[str, Any], seed: int
                    ) -> dict[str, Any]:
    from river import tree

    from streammoe.routing import OnlineRouter
    from streammoe.stream.driftmoe import BaseDriftMoE
    from streammoe.stream.learners import make_learner

    model = make_learner(kind, seed=seed, **params)
    timers = Timers()
    is_moe = isinstance(model, BaseDriftMoE)
    if is_moe:
        timers.wrap(OnlineRouter, "scores", "router_inference")
        timers.wrap(OnlineRouter, "step", "router_training")
        timers.wrap(tree.HoeffdingTreeClassifier, "predict_proba_one", "tree_predict")
        timers.wrap(tree.HoeffdingTreeClassifier, "learn_one", "tree_learn")
        timers.wrap(BaseDriftMoE, "_check_row", "input_checks")
    correct = 0
    try:
        timers.active = True
        start = time.perf_counter()
        for x, y in rows:
            correct += model.predict_one(x) == y
            model.learn_one(x, y)
        total = time.perf_counter() - start
    finally:
        timers.active = False
        timers.restore()
    n = len(rows)
    out: dict[str, Any] = {"learner": kind, "params": params, "n": n, "seconds": total,
                           "inst_per_s": n / total, "accuracy": 100.0 * correct / n}
    if is_moe:
        parts = {p: timers.seconds.get(p, 0.0) for p in PARTS}
        parts["other"] = max(total - sum(parts.values()), 0.0)
        out["us_per_instance"] = {p: 1e6 * s / n for p, s in parts.items()}
        out["share"] = {p: s / total for p, s in parts.items()}
        out["calls_per_instance"] = {p: timers.calls.get(p, 0) / n for p in PARTS}
    return out


def router_step_timing(repeats: int = 3, rows: int = 4000) -> list[dict[str, Any]]:
    """The router's training cost per row, side by side (interleaved repeats), at task mode's (4
    rows per step, 2 outputs) and data mode's (256 rows, 12 outputs) settings: a NumPy backward
    pass with fused Adam vs torch's autograd with fused Adam vs autograd with plain Adam (the
    router's ``backward="auto"`` takes NumPy for task mode's 4 rows, autograd for 256)."""
    import numpy as np

    from streammoe.routing import OnlineRouter

    variants = {"numpy_fused": {"backward": "numpy", "fused_adam": True},
                "autograd_fused": {"backward": "autograd", "fused_adam": True},
                "autograd_plain": {"backward": "autograd", "fused_adam": False}}
    out = []
    for mode, n_out, batch in (("task", 2, 4), ("data", 12, 256)):
        seconds = dict.fromkeys(variants, 0.0)
        for _ in range(repeats):
            for kind, kwargs in variants.items():
                r = OnlineRouter(50, n_out, hidden=(256, 128), lr=2e-3, batch_rows=batch,
                                 dropout=0.2 if mode == "data" else 0.0, seed=0, **kwargs)
                x, t = np.random.default_rng(0).normal(size=50), np.eye(n_out)[0]
                for _ in range(2 * batch):  # warm up
                    r.push(x, t)
                start = time.perf_counter()
                for _ in range(rows):
                    r.push(x, t)
                seconds[kind] += time.perf_counter() - start
        per_row = {k: 1e6 * v / (repeats * rows) for k, v in seconds.items()}
        row: dict[str, Any] = {"mode": mode, "rows_per_step": batch, "n_out": n_out}
        row.update({f"{k}_us_per_row": v for k, v in per_row.items()})
        row.update({f"{k}_over_numpy_fused": per_row[k] / per_row["numpy_fused"]
                    for k in variants if k != "numpy_fused"})
        out.append(row)
    return out


def router_forward_timing(repeats: int = 3, rows: int = 3000) -> dict[str, Any]:
    """One row's router scores: the NumPy forward (``OnlineRouter.scores``) vs the torch module."""
    import numpy as np
    import torch

    from streammoe.routing import OnlineRouter

    r = OnlineRouter(50, 12, hidden=(256, 128), seed=0)
    x = np.random.default_rng(0).normal(size=50)
    seconds = {"numpy": 0.0, "torch": 0.0}
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rows):
            r.scores(x)
        seconds["numpy"] += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(rows):
            r.forward_torch(torch.as_tensor(x, dtype=torch.float32)[None]).numpy()
        seconds["torch"] += time.perf_counter() - start
    per_row = {f"{k}_us_per_row": 1e6 * v / (repeats * rows) for k, v in seconds.items()}
    return {**per_row, "torch_over_numpy": seconds["torch"] / seconds["numpy"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="SEAa")
    p.add_argument("--n", type=int, default=10_000, help="instances per stream")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--learners", default="driftmoe,driftmoe_task,arf,ht")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=KIND:JSON, e.g. 'task_sqrt=driftmoe_task:{\"max_features\": \"sqrt\"}'")
    p.add_argument("--out", default=None)
    p.add_argument("--router-only", action="store_true",
                   help="only the router's forward and training-step timings")
    a = p.parse_args(argv)

    import torch

    from streammoe.stream.driftmoe import warm_up_torch
    from streammoe.stream.streams import make_stream

    torch.set_num_threads(1)
    warm_up_torch()
    if a.router_only:
        steps, forward = router_step_timing(), router_forward_timing()
        print(format_table(steps, title="Router training cost per row: NumPy backward vs autograd, fused vs plain Adam"))
        print(format_table([forward], title="Router scores of one row: NumPy vs torch"))
        if a.out:
            Path(a.out).write_text(json.dumps(to_jsonable({
                "command": " ".join(sys.argv), "router_step": steps, "router_forward": forward}),
                indent=1) + "\n")
        return 0
    learners: list[tuple[str, str, dict[str, Any]]] = [(k, k, {}) for k in a.learners.split(",") if k]
    for spec in a.variant:
        name, _, rest = spec.partition("=")
        kind, _, js = rest.partition(":")
        learners.append((name, kind, json.loads(js) if js else {}))
    results, table = [], []
    for stream in a.streams.split(","):
        rows = list(make_stream(stream, seed=a.seed, n_instances=a.n))
        for name, kind, params in learners:
            r = profile_learner(kind, rows, params, a.seed)
            r.update(name=name, stream=stream, n_features=len(rows[0][0]))
            results.append(r)
            row = {"stream": stream, "learner": name, "inst/s": r["inst_per_s"],
                   "accuracy": r["accuracy"]}
            for part, us in r.get("us_per_instance", {}).items():
                row[f"{part} us"] = us
            table.append(row)
            print(format_table([row]), flush=True)
    print(format_table(table, title=f"DriftMoE time per instance ({a.n} instances, one process)"))
    steps = router_step_timing()
    print(format_table(steps, title="Router training cost per row: NumPy backward vs autograd, fused vs plain Adam (50 inputs)"))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(to_jsonable({"command": " ".join(sys.argv),
                                                       "results": results,
                                                       "router_step": steps}), indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
