"""MergeVLA's training-free test-time task router.

Each suite (task) ``t`` is described by the top-``k`` right singular vectors ``V_t`` (``(d_in,
k)``, :func:`value_basis`) of a weight of its expert: the input directions that weight amplifies
most. In the reference that is the value projection of the last *shared* action-expert block;
MergeVLA's experiment uses by default each expert's LoRA change to the first backbone layer's
value projection (``router.source``, docs/mergevla.md). On the first observation of an episode
the merged model is run once under each task's mask; ``h_t`` (``(tokens, d_in)``) is what that
weight reads under mask ``t``, and the task's score is

    ``r_t = mean over tokens of ||V_t^T h_t||``            (:func:`route_scores`)

With ``discriminative=n`` (:meth:`TestTimeTaskRouter.from_value_projections`) each ``V_t`` is
replaced by the ``n`` directions it reads most relative to all the bases
(:func:`discriminative_bases`), so what every task reads stops adding to every score alike.
The router picks ``argmax_t r_t``, with confidence ``softmax(r / temperature)`` of that task
(the router core's :func:`~streammoe.routing.softmax_gate` and
:func:`~streammoe.routing.top_k_indices`), records the choice in a
:class:`~streammoe.routing.RoutingStats` and times itself (forward passes under the masks, and
the scoring alone); the episode then runs with that task's mask and head.

>>> import torch
>>> W = [torch.diag(torch.tensor([5.0, 1.0, 0.1])), torch.diag(torch.tensor([0.1, 1.0, 5.0]))]
>>> router = TestTimeTaskRouter.from_value_projections(W, k=1)
>>> h = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, 3.0]])      # lies along W[1]'s top direction
>>> route = router.route(lambda task: h)
>>> route.task, round(route.confidence, 3), route.scores.tolist()
(1, 0.924, [0.0, 2.5])
>>> router.confusion_matrix([1]).tolist()
[[0, 0], [0, 1]]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from streammoe.routing import RoutingStats, softmax_gate, top_k_indices

__all__ = ["Route", "TestTimeTaskRouter", "confusion_matrix", "discriminative_bases", "route_scores",
           "value_basis"]

DEFAULT_K = 8  # singular vectors per task, as in MergeVLA


def _check_matrix(W: Any, name: str) -> Tensor:
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name} must be a 2-D weight (d_out, d_in), got shape {tuple(W.shape)}")
    if not torch.is_floating_point(W):
        raise TypeError(f"{name} must be floating point, got {W.dtype}")
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{name} contains NaN or inf: that expert's weights are broken; reload it")
    return W


def _check_int(value: Any, name: str, minimum: int, meaning: str = "") -> None:
    """``value`` must be an ``int`` (not a bool) >= ``minimum``; ``meaning`` explains a value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{meaning}, got {value!r}")


def value_basis(W_v: Tensor, k: int = DEFAULT_K) -> Tensor:
    """The top-``k`` right singular vectors of a value projection ``W_v`` (``(d_out, d_in)``,
    ``nn.Linear``'s layout) as the columns of a ``(d_in, k)`` matrix (rows of ``Vh`` from
    ``torch.linalg.svd``, computed in float64, returned in ``W_v``'s dtype).

    ``k`` above ``W_v``'s numerical rank (singular values above ``max(d_out, d_in) * eps *
    s_max``, as ``torch.linalg.matrix_rank``) is an error: those directions would be arbitrary.

    >>> import torch
    >>> value_basis(torch.diag(torch.tensor([1.0, 3.0, 2.0])), k=2).T
    tensor([[0., 1., 0.],
            [0., 0., 1.]])
    """
    _check_matrix(W_v, "W_v")
    _check_int(k, "k", 1)
    _, s, vh = torch.linalg.svd(W_v.detach().double(), full_matrices=False)
    tol = max(W_v.shape) * torch.finfo(W_v.dtype).eps * (float(s[0]) if s.numel() else 0.0)
    rank = int((s > tol).sum())
    if k > rank:
        raise ValueError(f"k={k} exceeds the rank {rank} of the value projection "
                         f"({W_v.shape[0]}x{W_v.shape[1]}): choose k <= {rank}")
    return vh[:k].T.to(W_v.dtype).contiguous()


def _check_bases(bases: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(bases, Tensor):
        if bases.dim() != 3:
            raise ValueError(f"stacked bases must be (n_tasks, d_in, k), got shape {tuple(bases.shape)}")
        bases = list(bases)
    if not isinstance(bases, Sequence) or len(bases) == 0:
        raise ValueError("bases must be a non-empty list of (d_in, k) tensors, one per task")
    out = [_check_matrix(b, f"bases[{t}]") for t, b in enumerate(bases)]
    d_in = out[0].shape[0]
    for t, b in enumerate(out):
        if b.shape[0] != d_in:
            raise ValueError(f"bases[{t}] is {tuple(b.shape)} but bases[0] is {tuple(out[0].shape)}: every "
                             "task's basis must live in the same input space (d_in rows)")
    return out


def discriminative_bases(bases: Tensor | Sequence[Tensor], k: int, ridge: float = 1e-3) -> list[Tensor]:
    """Each task's ``k`` input directions that its basis reads most relative to all the bases.

    With ``P_t = V_t V_t^T`` the projector on task ``t``'s basis (orthonormal columns, as
    :func:`value_basis` makes them) and ``Pbar`` their mean over tasks, a direction ``v`` scores
    the generalised Rayleigh quotient ``v^T P_t v / v^T (Pbar + ridge I) v``: about ``n_tasks``
    for a direction only ``t``'s basis reads, 1 for one every basis reads (a word or feature every
    task reads adds about the same to every score and only blurs the choice). The task's new
    basis is its top-``k`` generalised eigenvectors (``(d_in, k)``, unit columns, float64 inside):
    like LDA's directions they are filters, not necessarily inside ``V_t``'s span. ``ridge``
    (> 0) keeps ``Pbar + ridge I`` invertible where no basis reaches.

    >>> import torch
    >>> e = torch.eye(3)
    >>> d = discriminative_bases([e[:, :2], e[:, 1:]], k=1)   # task 0 spans e0, e1; task 1 e1, e2
    >>> d[0].abs().T.tolist(), d[1].abs().T.tolist()
    ([[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]])
    """
    bases = _check_bases(bases)
    _check_int(k, "k", 1)
    if not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and 0 < ridge < float("inf")):
        raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
    for t, b in enumerate(bases):
        if k > b.shape[1]:
            raise ValueError(f"k={k} exceeds task {t}'s basis of {b.shape[1]} directions: a task has at "
                             f"most that many directions of its own; choose k <= {b.shape[1]}")
    d_in = bases[0].shape[0]
    projectors = [b.double() @ b.double().T for b in bases]
    mean = sum(projectors) / len(projectors) + ridge * torch.eye(d_in, dtype=torch.float64)
    chol = torch.linalg.cholesky(mean)
    inv = torch.linalg.solve_triangular(chol, torch.eye(d_in, dtype=torch.float64), upper=False)
    out = []
    for b, p in zip(bases, projectors):
        _, vecs = torch.linalg.eigh(inv @ p @ inv.T)           # ascending eigenvalues
        v = inv.T @ vecs[:, -k:].flip(-1)                      # back from the whitened space
        out.append((v / torch.linalg.vector_norm(v, dim=0)).to(b.dtype).contiguous())
    return out


def route_scores(h: Tensor | Sequence[Tensor], bases: Tensor | Sequence[Tensor],
                 valid: Tensor | None = None) -> Tensor:
    """Routing scores ``r_t = mean over tokens of ||V_t^T h_t||``, shape ``(..., n_tasks)``.

    ``h``: a list with one ``(..., tokens, d_in)`` tensor per task (the hidden states under that
    task's mask; same shapes), or one tensor used for every task. ``bases``: ``(d_in, k)`` per
    task (or stacked ``(n_tasks, d_in, k)``). ``valid``: optional ``(..., tokens)`` bool, the real
    tokens (PAD rows excluded from the mean).

    >>> import torch
    >>> bases = [torch.eye(3)[:, :1], torch.eye(3)[:, 1:]]
    >>> route_scores(torch.tensor([[3.0, 0.0, 4.0], [1.0, 0.0, 0.0]]), bases)
    tensor([2., 2.])
    """
    bases = _check_bases(bases)
    n_tasks, d_in = len(bases), bases[0].shape[0]
    if isinstance(h, Tensor):
        hs = [h] * n_tasks
    elif isinstance(h, Sequence) and len(h) == n_tasks:
        hs = list(h)
    else:
        got = len(h) if isinstance(h, Sequence) else type(h).__name__
        raise ValueError(f"h must be one tensor or a list of {n_tasks} tensors (one per task), got {got}")
    for t, x in enumerate(hs):
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"hidden states for task {t} must be a floating-point tensor, got {got}")
        if x.dim() < 2 or x.shape[-1] != d_in or x.shape[-2] < 1:
            raise ValueError(f"hidden states for task {t} must be (..., tokens, d_in={d_in}), got shape "
                             f"{tuple(x.shape)}")
        if x.shape != hs[0].shape:
            raise ValueError(f"hidden states for task {t} have shape {tuple(x.shape)}, for task 0 "
                             f"{tuple(hs[0].shape)}: run the same observation under every mask")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"hidden states for task {t} contain NaN or inf: check that task's "
                             "merged weights and mask")
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != hs[0].shape[:-1]:
            got = (valid.dtype, tuple(valid.shape)) if isinstance(valid, Tensor) else type(valid).__name__
            raise ValueError(f"valid must be a bool tensor of shape {tuple(hs[0].shape[:-1])} (..., "
                             f"tokens), got {got}")
        if not bool(valid.any(dim=-1).all()):
            raise ValueError("valid marks no token of some row: a score needs at least one real token")
    scores = []
    for x, basis in zip(hs, bases):
        work = torch.promote_types(x.dtype, basis.dtype)
        norms = torch.linalg.vector_norm(x.to(work) @ basis.to(device=x.device, dtype=work), dim=-1)
        if valid is None:
            scores.append(norms.mean(dim=-1))
        else:
            v = valid.to(device=x.device)
            scores.append((norms * v).sum(dim=-1) / v.sum(dim=-1))
    return torch.stack(scores, dim=-1)


def confusion_matrix(true_tasks: Sequence[int] | Tensor, chosen: Sequence[int] | Tensor,
                     n_tasks: int) -> Tensor:
    """``(n_tasks, n_tasks)`` counts, rows the true task, columns the chosen one.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    true = torch.as_tensor(true_tasks, dtype=torch.long).reshape(-1)
    pred = torch.as_tensor(chosen, dtype=torch.long).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"{true.numel()} true task ids for {pred.numel()} routing choices: pass one "
                         "per routed episode, in routing order")
    for name, ids in (("true task ids", true), ("choices", pred)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_tasks):
            raise ValueError(f"{name} must be in [0, {n_tasks}), got {int(ids.min())}..{int(ids.max())}")
    return torch.bincount(true * n_tasks + pred, minlength=n_tasks * n_tasks).reshape(n_tasks, n_tasks)


@dataclass(frozen=True)
class Route:
    """One routing decision: ``tasks`` (chosen index, shape ``(...)``: ``()`` for one episode),
    ``confidences`` (softmax probability of the chosen task), ``scores`` and ``probs``
    (``(..., n_tasks)``), ``seconds`` (the whole call: forward passes under every mask plus
    scoring) and ``scoring_seconds`` (projections, softmax and argmax only)."""

    tasks: Tensor
    confidences: Tensor
    scores: Tensor
    probs: Tensor
    seconds: float
    scoring_seconds: float

    @property
    def task(self) -> int:
        """The chosen task of a single (unbatched or batch-of-one) decision."""
        if self.tasks.numel() != 1:
            raise ValueError(f"this route holds {self.tasks.numel()} decisions (a batch): read .tasks")
        return int(self.tasks.reshape(()))

    @property
    def confidence(self) -> float:
        """The chosen task's softmax probability, for a single decision."""
        if self.confidences.numel() != 1:
            raise ValueError(f"this route holds {self.confidences.numel()} decisions (a batch): read "
                             ".confidences")
        return float(self.confidences.reshape(()))


class TestTimeTaskRouter:
    """Training-free task router over per-task value-projection bases (see the module docstring).

    ``bases``: one ``(d_in, k)`` tensor per task, or stacked ``(n_tasks, d_in, k)``;
    ``temperature`` of the softmax confidence; ``tasks``: optional names; ``window``: the
    :class:`~streammoe.routing.RoutingStats` window (switch rate between consecutive episodes).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, bases: Tensor | Sequence[Tensor], *, temperature: float = 1.0,
                 tasks: Sequence[str] | None = None, window: int = 1000) -> None:
        bases = _check_bases(bases)
        if not (isinstance(temperature, (int, float)) and temperature > 0
                and temperature != float("inf")):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        names = [f"task_{t}" for t in range(len(bases))] if tasks is None else list(tasks)
        if len(names) != len(bases):
            raise ValueError(f"{len(names)} task names for {len(bases)} bases: name every task once")
        self.bases = [b.detach().clone() for b in bases]
        self.temperature = float(temperature)
        self.tasks = tuple(str(n) for n in names)
        self.stats = RoutingStats(n_experts=len(bases), window=window)
        self.reset()

    @classmethod
    def from_value_projections(cls, weights: Sequence[Tensor], k: int = DEFAULT_K, *,
                               discriminative: int = 0, ridge: float = 1e-3,
                               **kwargs: Any) -> TestTimeTaskRouter:
        """One basis per task from that expert's value-projection weight ``(d_out, d_in)``:
        its top-``k`` right singular vectors (the reference), or with ``discriminative`` > 0 that
        many directions each task's basis reads most relative to all the bases
        (:func:`discriminative_bases` with ``ridge``)."""
        _check_int(discriminative, "discriminative", 0, " (0: the top-k singular vectors themselves)")
        if isinstance(weights, Tensor) or not isinstance(weights, Sequence) or len(weights) == 0:
            raise ValueError("weights must be a non-empty list of (d_out, d_in) value projections, "
                             "one per task")
        bases = []
        for t, W in enumerate(weights):
            try:
                bases.append(value_basis(W, k))
            except (TypeError, ValueError) as err:
                raise type(err)(f"task {t}: {err}") from None
        if discriminative:
            bases = discriminative_bases(bases, discriminative, ridge)
        return cls(bases, **kwargs)

    @classmethod
    def from_state_dicts(cls, experts: Sequence[Mapping[str, Tensor]], key: str, k: int = DEFAULT_K,
                         **kwargs: Any) -> TestTimeTaskRouter:
        """Bases from each expert state dict's ``key`` (e.g. ``TinyVLA.value_projection_key()``);
        ``kwargs`` go to :meth:`from_value_projections` (``discriminative``, ``ridge``, the
        constructor's)."""
        if isinstance(experts, Mapping) or not isinstance(experts, Sequence):
            raise TypeError("experts must be a list of state dicts, one per task")
        for t, sd in enumerate(experts):
            if key not in sd:
                raise KeyError(f"expert {t}'s state dict has no {key!r}: pass the key of the last "
                               "shared block's value-projection weight")
        return cls.from_value_projections([sd[key] for sd in experts], k, **kwargs)

    @property
    def n_tasks(self) -> int:
        return len(self.bases)

    @property
    def d_in(self) -> int:
        return self.bases[0].shape[0]

    def reset(self) -> None:
        """Forget the recorded choices, statistics and timings."""
        self.stats.reset()
        self.choices: list[int] = []
        self.route_seconds: list[float] = []
        self.scoring_seconds: list[float] = []

    def scores(self, hidden: Tensor | Sequence[Tensor], valid: Tensor | None = None) -> Tensor:
        """:func:`route_scores` with this router's bases (records nothing)."""
        return route_scores(hidden, self.bases, valid)

    def route(self, hidden_under: Callable[[int], Tensor], valid: Tensor | None = None) -> Route:
        """Score every task on ``hidden_under(t)`` (the hidden states the basis weight reads
        under task ``t``'s mask, ``(tokens, d_in)`` or batched ``(B, tokens, d_in)``), pick
        the best, and record it. Nothing is recorded when the inputs are invalid."""
        start = time.perf_counter()
        with torch.no_grad():
            hidden = []
            for t in range(self.n_tasks):
                x = hidden_under(t)
                if not isinstance(x, Tensor):
                    raise TypeError(f"hidden_under({t}) returned {type(x).__name__}, not a tensor of "
                                    f"hidden states (tokens, d_in={self.d_in})")
                hidden.append(x)
            t_score = time.perf_counter()
            scores = route_scores(hidden, self.bases, valid)
            probs = softmax_gate(scores, temperature=self.temperature)
            chosen = top_k_indices(scores, 1).squeeze(-1)
            confidences = probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        end = time.perf_counter()
        self.stats.update(probs.reshape(-1, self.n_tasks))
        self.choices.extend(int(c) for c in chosen.reshape(-1))
        self.route_seconds.append(end - start)
        self.scoring_seconds.append(end - t_score)
        return Route(tasks=chosen, confidences=confidences, scores=scores, probs=probs,
                     seconds=end - start, scoring_seconds=end - t_score)

    def confusion_matrix(self, true_tasks: Sequence[int] | Tensor) -> Tensor:
        """Counts over the recorded choices: rows the true task (one id per routed episode, in
        routing order), columns the chosen one."""
        return confusion_matrix(true_tasks, self.choices, self.n_tasks)

    def overhead(self) -> dict[str, float]:
        """Routing time per call: ``route_s_*`` the whole call (``n_tasks`` forward passes and
        the scoring), ``scoring_s_*`` the scoring alone."""
        n = len(self.route_seconds)
        total, scoring = sum(self.route_seconds), sum(self.scoring_seconds)
        return {"routes": n, "route_s_total": total, "route_s_mean": total / n if n else 0.0,
                "route_s_max": max(self.route_seconds, default=0.0),
                "scoring_s_mean": scoring / n if n else 0.0}

    def to_dict(self) -> dict[str, Any]:
        """Routing statistics (``RoutingStats.to_dict``) and :meth:`overhead`, flat."""
        return {"n_tasks": self.n_tasks, **self.stats.to_dict(), **self.overhead()}
