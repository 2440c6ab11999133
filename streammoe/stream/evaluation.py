"""Prequential (test-then-train) evaluation that counts every instance, the paper's protocol.

Several learners run on the same stream side by side: each instance goes to every learner before
the next instance is read, and each learner's ``predict_one`` + ``learn_one`` time is measured on
its own, so throughput ratios are fair on a busy machine. A ``None`` prediction counts as wrong
(``river.evaluate.progressive_val_score`` would skip it).

Figures: accuracy, Cohen's kappa, kappa-m (vs the majority-class learner), kappa-t (vs the
no-change learner), instances/s, peak model memory (``_raw_memory_usage`` at a few checkpoints,
outside the timed part), accuracy per window and, for DriftMoE, the share of each window's
instances whose top-1 expert was each expert.

>>> from river import tree
>>> from streammoe.stream.streams import make_stream
>>> res = prequential({"ht": tree.HoeffdingTreeClassifier()}, make_stream("SEAa", scale=0.001),
...                   window=250)
>>> r = res["ht"]
>>> r.n, len(r.window_accuracy), 0.5 < r.accuracy < 1.0
(1000, 4, True)
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from river import base, metrics

from streammoe.runs import progress

__all__ = ["PrequentialResult", "kappa_stats", "prequential"]


@dataclass
class PrequentialResult:
    n: int = 0
    accuracy: float = 0.0
    kappa: float = 0.0
    kappa_m: float = 0.0
    kappa_t: float = 0.0
    seconds: float = 0.0
    inst_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    window_ends: list[int] = field(default_factory=list)
    window_accuracy: list[float] = field(default_factory=list)
    memory_mb: list[float] = field(default_factory=list)  # at the memory checkpoints
    expert_share: list[list[float]] = field(default_factory=list)  # per window, DriftMoE only

    def summary(self) -> dict[str, Any]:
        """Scalar figures only (accuracy and kappas in %)."""
        keys = ("n", "accuracy", "kappa", "kappa_m", "kappa_t", "inst_per_s", "peak_memory_mb",
                "seconds")
        d = asdict(self)
        return {k: (100 * d[k] if k in ("accuracy", "kappa", "kappa_m", "kappa_t") else d[k])
                for k in keys}


def kappa_stats(n: int, correct: int, majority_correct: int, no_change_correct: int
                ) -> tuple[float, float]:
    """(kappa-m, kappa-t) from counts: (acc - acc_ref) / (1 - acc_ref) for each reference."""
    acc = correct / max(n, 1)

    def k(ref_correct: int) -> float:
        ref = ref_correct / max(n, 1)
        return (acc - ref) / (1 - ref) if ref < 1 else 0.0

    return k(majority_correct), k(no_change_correct)


class _Track:
    """One learner's running figures (bounded memory: counters and per-window lists)."""

    def __init__(self, model: base.Classifier, n_experts: int) -> None:
        self.model = model
        self.correct = 0
        self.window_correct = 0
        self.seconds = 0.0
        self.kappa = metrics.CohenKappa()
        self.n_experts = n_experts
        self.window_choices: Counter = Counter()
        self.result = PrequentialResult()


def prequential(models: Mapping[str, base.Classifier], stream: Iterable[tuple[dict, Any]],
                window: int = 1000, n_instances: int | None = None, memory_checkpoints: int = 5,
                desc: str = "prequential",
                on_window: Callable[[int, dict[str, float]], None] | None = None,
                learn_first: Iterable[str] = ()) -> dict[str, PrequentialResult]:
    """Test-then-train every model on every instance of ``stream`` (in one pass, side by side).

    ``on_window(n, {name: cumulative accuracy})`` is called after every window (progress files
    of long runs). The models named in ``learn_first`` are evaluated in the other order, learn
    then predict (``learn_one(x, y)`` before ``predict_one(x)``): **not** a valid prequential
    score (the label is seen before the prediction is read); it reproduces the DriftMoE
    reference code's MoE-Data loop, which trains the router's top-k experts on a row before it
    reads the chosen expert's prediction, to measure what that order adds (docs/driftmoe.md).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    learn_first = frozenset(learn_first)
    if unknown := learn_first - set(models):
        raise ValueError(f"learn_first names models that are not evaluated: {sorted(unknown)}; "
                         f"the models are {sorted(models)}")
    tracks = {name: _Track(m, getattr(m, "n_experts", 0) if hasattr(m, "last_expert") else 0)
              for name, m in models.items()}
    label_counts: Counter = Counter()
    majority_correct = no_change_correct = 0
    previous_y: Any = None
    n = 0
    total = n_instances or getattr(stream, "n_instances", None)
    mem_every = max(1, (total or 10**9) // max(memory_checkpoints, 1))
    perf = time.perf_counter
    for x, y in progress(stream, total=total, desc=desc):
        n += 1
        # Reference learners for kappa-m (majority class so far) and kappa-t (no change).
        if label_counts and label_counts.most_common(1)[0][0] == y:
            majority_correct += 1
        if previous_y == y:
            no_change_correct += 1
        label_counts[y] += 1
        previous_y = y
        for name, t in tracks.items():
            start = perf()
            first = name in learn_first
            if first:
                t.model.learn_one(x, y)
            y_pred = t.model.predict_one(x)
            expert = t.model.last_expert if t.n_experts else None
            if not first:
                t.model.learn_one(x, y)
            t.seconds += perf() - start
            hit = y_pred is not None and y_pred == y
            t.correct += hit
            t.window_correct += hit
            if y_pred is not None:
                t.kappa.update(y, y_pred)
            if expert is not None:
                t.window_choices[expert] += 1
        if n % window == 0:
            for t in tracks.values():
                _close_window(t, n, window)
            if on_window is not None:
                on_window(n, {name: t.correct / n for name, t in tracks.items()})
        if n % mem_every == 0:
            gc.collect()
            for t in tracks.values():
                mb = t.model._raw_memory_usage / 2**20
                t.result.memory_mb.append(mb)
    for t in tracks.values():
        if n % window:
            _close_window(t, n, n % window)
        if not t.result.memory_mb:
            t.result.memory_mb.append(t.model._raw_memory_usage / 2**20)
        r = t.result
        r.n = n
        r.accuracy = t.correct / max(n, 1)
        r.kappa = t.kappa.get()
        r.kappa_m, r.kappa_t = kappa_stats(n, t.correct, majority_correct, no_change_correct)
        r.seconds = t.seconds
        r.inst_per_s = n / t.seconds if t.seconds > 0 else float("nan")
        r.peak_memory_mb = max(r.memory_mb)
    return {name: t.result for name, t in tracks.items()}


def _close_window(t: _Track, n: int, size: int) -> None:
    t.result.window_ends.append(n)
    t.result.window_accuracy.append(t.window_correct / size)
    t.window_correct = 0
    if t.n_experts:
        # Task mode has one expert per class seen, which can exceed n_experts.
        width = max(t.n_experts, max(t.window_choices, default=-1) + 1)
        counts = np.array([t.window_choices.get(i, 0) for i in range(width)], dtype=float)
        t.result.expert_share.append((counts / max(counts.sum(), 1)).tolist())
        t.window_choices.clear()
