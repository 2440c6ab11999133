"""Merging per-suite experts into one model: model-agnostic functions over state dicts.

Notation: ``theta_0`` is the base state dict, ``theta_t`` the experts' (one per suite / task
``t``; same keys, shapes and floating dtypes), ``tau_t = theta_t - theta_0`` their *task vectors*
and ``tau_MTL`` the merged (multi-task) vector, so that the merged model is
``theta_0 + tau_MTL``.

================================  ==============================================================
method                            ``tau_MTL``
================================  ==============================================================
``"average"`` (naive averaging)   ``scale * mean_t tau_t`` (scale 1: the mean of the ``theta_t``)
``"task_arithmetic"``             ``scale * sum_t tau_t``
``"ties"`` (TIES-merging)         trim each ``tau_t`` to its ``int(density * numel)`` largest
                                  magnitudes (per tensor), elect the sign ``sign(sum_t tau_t)``
                                  (0 counts as +), average each entry over the tasks whose
                                  non-zero value has that sign (*disjoint mean*), times ``scale``
================================  ==============================================================

These are the definitions of PEFT's ``peft.utils.merge_utils`` (``task_arithmetic``, ``ties``
with ``majority_sign_method="total"``, ``magnitude_based_pruning``,
``calculate_majority_sign_mask``, ``disjoint_merge``, all with weights 1) and of mergekit's
``task_arithmetic`` / ``ties`` (sign method ``sum``); ``tests/test_mergevla_merging.py`` checks
equality with PEFT's functions on random tensors. They are re-implemented here (torch only,
vectorised over the stacked tasks, half-precision computed in float32) so that merging needs
neither PEFT (an optional extra whose import takes seconds) nor its warnings.

**TALL masks** (Wang et al., 2024, "Localizing task information for improved model merging and
compression"): task ``t`` keeps the entries where its own vector dominates the others',
``mask_t = |tau_t| > lam * |tau_MTL - tau_t|`` (``lam = 0.6`` here), stored as ``bool``; the
model for task ``t`` is ``theta_0 + mask_t * tau_MTL`` (:func:`apply_mask`). :func:`mask_stats`
reports, as that paper does, the *selfish* share (entries kept by exactly one task), the
*catch-all* share (kept by every task), the share kept by none, and each mask's density.

**Expert heads**: :func:`merge_experts` merges every key except those of the per-expert heads
(named by key prefixes or a predicate, e.g. ``TinyVLA.expert_head_prefixes()``: the last
action-expert block, final norm and output layer), which it keeps per expert; keys named
``averaged`` (e.g. the shared action-expert blocks) are averaged instead of merged and masked.
Masks go to and from files with :func:`save_masks` / :func:`load_masks` (a
:mod:`streammoe.checkpoint` file: safetensors, bool tensors, format version, digest).

**Refit to the masks** (:func:`refit_to_masks`, ``merge_experts(grams=...)``): with the masks
fixed, the shared vector is re-solved so that each task's masked model reproduces, on that task's
own inputs, the outputs of its expert: ``tau_MTL = argmin_tau sum_t sum_x ||(mask_t * tau - tau_t) x||^2``
over every linear layer (RegMean's objective, Jin et al., 2023, "Dataless knowledge fusion by
merging weights of language models", with the masks inside), closed form per output row from each
task's Gram matrix of the layer's inputs ``E[x x^T]`` (:func:`input_grams`; a convolution's of the
image patches it reads, its weight solved as ``weight.flatten(1)``). The stored artefacts
stay one shared vector plus one bool mask per task; no gradient step is taken. Keys without a Gram
matrix get the identity one: each entry is the mean of the tasks whose mask keeps it.

Every function validates its inputs first (same keys, shapes, dtypes and devices, floating
point, no NaN/inf; errors name the key and the expert) and never modifies them.

>>> import torch
>>> base = {"w": torch.zeros(4)}
>>> experts = [{"w": torch.tensor([1.0, 0.0, 0.0, -2.0])}, {"w": torch.tensor([3.0, 1.0, 0.0, 1.0])}]
>>> task_arithmetic(base, experts, scale=0.5)["w"]
tensor([ 2.0000,  0.5000,  0.0000, -0.5000])
>>> ties_merge(base, experts, density=1.0)["w"]
tensor([ 2.,  1.,  0., -2.])
>>> taus = task_vectors(base, experts)
>>> masks = tall_masks(taus, merged_task_vector(taus, "ties", density=1.0))
>>> masks[0]["w"], masks[1]["w"]
(tensor([ True, False, False,  True]), tensor([ True,  True, False, False]))
>>> stats = mask_stats(masks)
>>> stats.selfish_fraction, stats.catchall_fraction, stats.density
(0.5, 0.25, (0.5, 0.5))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streammoe import checkpoint

__all__ = [
    "LAMBDA",
    "MASK_FILE_KIND",
    "MASK_FILE_VERSION",
    "MERGE_METHODS",
    "KeySelector",
    "MaskFile",
    "MaskStats",
    "MergedExperts",
    "StateDict",
    "apply_mask",
    "check_state_dicts",
    "disjoint_mean",
    "elect_sign",
    "input_grams",
    "key_selector",
    "load_masks",
    "mask_stats",
    "merge_experts",
    "merged_task_vector",
    "naive_average",
    "refit_to_masks",
    "save_masks",
    "split_state_dict",
    "tall_masks",
    "task_arithmetic",
    "task_vectors",
    "ties_merge",
    "ties_tensor",
    "trim",
]

StateDict = Mapping[str, Tensor]
KeySelector = Callable[[str], bool] | str | Sequence[str]
"""Which keys: a predicate on the key, one key prefix, or a sequence of prefixes."""
MergeMethod = Literal["average", "task_arithmetic", "ties"]
MERGE_METHODS: tuple[str, ...] = ("average", "task_arithmetic", "ties")
LAMBDA = 0.6  # the TALL-mask threshold of MergeVLA (and of the TALL-masks paper's default)
MASK_FILE_KIND = "streammoe.mergevla.masks"
MASK_FILE_VERSION = 1


# ---------------------------------------------------------------------------- validation
def _names(keys: Sequence[str] | set[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float32 for half precision, else the tensor's own."""
    return torch.promote_types(dtype, torch.float32)


def _check_sequence(items: Any, what: str) -> list[Any]:
    if isinstance(items, (Mapping, str, Tensor)) or not isinstance(items, Sequence):
        raise TypeError(f"{what} must be a list of state dicts, one per task, got {type(items).__name__}"
                        + (" (a single state dict: wrap it in a list)" if isinstance(items, Mapping) else ""))
    if len(items) == 0:
        raise ValueError(f"{what} is empty: pass at least one state dict")
    for i, sd in enumerate(items):
        if not isinstance(sd, Mapping):
            raise TypeError(f"{what}[{i}] must be a state dict (a mapping of names to tensors), "
                            f"got {type(sd).__name__}")
    return list(items)


def _check_like(ref: StateDict, ref_name: str, other: StateDict, name: str, *, dtype: bool = True,
                floating: bool = True, finite: bool = True) -> None:
    """``other`` has ``ref``'s keys, shapes, devices (and dtypes); tensors floating and finite."""
    if set(other) != set(ref):
        missing, extra = set(ref) - set(other), set(other) - set(ref)
        raise ValueError(
            f"{name} does not have the keys of {ref_name}: "
            + (f"missing {_names(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected {_names(extra)}" if extra else "")
            + ". Pass state dicts of the same architecture (fold LoRA adapters into the weights "
            "first; leave non-parameter buffers out of every dict alike).")
    for key, t in other.items():
        r = ref[key]
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{key!r}] is a {type(t).__name__}, not a torch.Tensor")
        if floating and not torch.is_floating_point(t):
            raise TypeError(f"{name}[{key!r}] has dtype {t.dtype}; merging needs floating-point "
                            "tensors: leave integer/bool buffers out of the state dicts")
        if t.shape != r.shape:
            raise ValueError(f"{name}[{key!r}] has shape {tuple(t.shape)}, {ref_name}[{key!r}] has "
                             f"{tuple(r.shape)}: the state dicts come from different architectures "
                             "or configs")
        if dtype and t.dtype != r.dtype:
            raise TypeError(f"{name}[{key!r}] has dtype {t.dtype}, {ref_name}[{key!r}] has {r.dtype}: "
                            "cast every state dict to one dtype first (e.g. .float())")
        if t.device != r.device:
            raise ValueError(f"{name}[{key!r}] is on {t.device}, {ref_name}[{key!r}] on {r.device}: "
                             "move every state dict to one device first")
        if finite and torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}[{key!r}] contains NaN or inf: that model diverged or was saved "
                             "broken; retrain or reload it before merging")


def check_state_dicts(base: StateDict | None, experts: Sequence[StateDict], what: str = "experts"
                      ) -> list[StateDict]:
    """Validate ``experts`` (a non-empty list) against ``base`` (or, without a base, against the
    first expert): same keys, shapes, dtypes and devices; floating point; no NaN/inf. Returns the
    list; raises ``TypeError`` / ``ValueError`` naming the expert and key otherwise.

    >>> import torch
    >>> check_state_dicts({"w": torch.zeros(2)}, [{"w": torch.zeros(3)}])
    Traceback (most recent call last):
    ...
    ValueError: experts[0]['w'] has shape (3,), base['w'] has (2,): the state dicts come from different architectures or configs
    """
    experts = _check_sequence(experts, what)
    if base is None:
        ref, ref_name = experts[0], f"{what}[0]"
    else:
        if not isinstance(base, Mapping):
            raise TypeError(f"base must be a state dict (a mapping of names to tensors), got "
                            f"{type(base).__name__}")
        ref, ref_name = base, "base"
    _check_like(ref, ref_name, ref, ref_name, dtype=False)
    for i, sd in enumerate(experts):
        _check_like(ref, ref_name, sd, f"{what}[{i}]")
    return experts


def _check_density(density: float) -> None:
    if not (isinstance(density, (int, float)) and 0.0 < float(density) <= 1.0):
        raise ValueError(f"density must be in (0, 1] (the fraction of each task vector's entries "
                         f"TIES keeps), got {density!r}")


def _check_number(value: float, name: str, minimum: float | None = None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value \
            or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_method(method: str) -> None:
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {list(MERGE_METHODS)}")


# ---------------------------------------------------------------------------- per-tensor TIES steps
def trim(tau: Tensor, density: float) -> Tensor:
    """TIES' *trim*: keep the ``int(density * numel)`` entries of largest magnitude, zero the rest
    (PEFT's ``magnitude_based_pruning``). ``density = 1`` keeps everything.

    >>> import torch
    >>> trim(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
    tensor([ 0., -3.,  2.,  0.])
    """
    _check_density(density)
    if density >= 1.0:
        return tau.clone()
    k = int(density * tau.numel())
    keep = torch.zeros(tau.numel(), dtype=torch.bool, device=tau.device)
    if k > 0:
        keep[torch.topk(tau.abs().reshape(-1), k=k, largest=True).indices] = True
    return tau * keep.reshape(tau.shape)


def elect_sign(taus: Tensor) -> Tensor:
    """TIES' sign election over stacked task vectors ``(n_tasks, ...)``: ``sign(sum_t tau_t)``
    with 0 counted as ``+1`` (PEFT's ``calculate_majority_sign_mask``, method ``"total"``).

    >>> import torch
    >>> elect_sign(torch.tensor([[1.0, -1.0, 0.0], [-3.0, 0.5, 0.0]]))
    tensor([-1., -1.,  1.])
    """
    total = taus.sum(dim=0)
    return torch.where(total >= 0, 1.0, -1.0).to(taus.dtype)


def disjoint_mean(taus: Tensor, sign: Tensor) -> Tensor:
    """TIES' disjoint mean: per entry, the mean over the tasks whose (non-zero) value has the
    elected ``sign``; 0 where none has (PEFT's ``disjoint_merge``).

    >>> import torch
    >>> taus = torch.tensor([[2.0, -1.0, 0.0], [4.0, 3.0, 0.0], [-1.0, 0.0, 0.0]])
    >>> disjoint_mean(taus, elect_sign(taus))
    tensor([3., 3., 0.])
    """
    agree = taus.sign() == sign
    return (taus * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def ties_tensor(taus: Tensor, density: float) -> Tensor:
    """TIES over one tensor's stacked task vectors ``(n_tasks, ...)``: trim each, elect the sign,
    disjoint mean (unscaled).

    >>> import torch
    >>> ties_tensor(torch.tensor([[1.0, -0.1], [2.0, 0.2]]), density=0.5)
    tensor([1.5000, 0.0000])
    """
    _check_density(density)
    trimmed = torch.stack([trim(t, density) for t in taus]) if density < 1.0 else taus
    return disjoint_mean(trimmed, elect_sign(trimmed))


# ---------------------------------------------------------------------------- state-dict merging
def task_vectors(base: StateDict, experts: Sequence[StateDict]) -> list[dict[str, Tensor]]:
    """``tau_t = theta_t - theta_0`` per expert, in the base's key order (half-precision state
    dicts give float32 task vectors, so no precision is lost in the difference).

    >>> import torch
    >>> task_vectors({"w": torch.ones(2)}, [{"w": torch.tensor([3.0, 1.0])}])
    [{'w': tensor([2., 0.])}]
    """
    experts = check_state_dicts(base, experts)
    return [{k: sd[k].to(_work_dtype(b.dtype)) - b.to(_work_dtype(b.dtype)) for k, b in base.items()}
            for sd in experts]


def naive_average(experts: Sequence[StateDict]) -> dict[str, Tensor]:
    """The entrywise mean of the experts' state dicts (no base needed), in their dtype.

    >>> import torch
    >>> naive_average([{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}])
    {'w': tensor([2., 4.])}
    """
    experts = check_state_dicts(None, experts)
    return {k: torch.stack([sd[k].to(_work_dtype(t.dtype)) for sd in experts]).mean(dim=0).to(t.dtype)
            for k, t in experts[0].items()}


def merged_task_vector(taus: Sequence[StateDict], method: MergeMethod = "ties", *,
                       density: float = 0.2, scale: float = 1.0) -> dict[str, Tensor]:
    """``tau_MTL`` from task vectors (see the module's table): ``"average"``,
    ``"task_arithmetic"`` or ``"ties"`` (``density``: the fraction TIES keeps of each task vector,
    per tensor; the TIES paper's 0.2 by default), multiplied by ``scale``.

    >>> import torch
    >>> taus = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 1.0])}]
    >>> merged_task_vector(taus, "average")["w"], merged_task_vector(taus, "task_arithmetic")["w"]
    (tensor([ 2.0000, -0.5000]), tensor([ 4., -1.]))
    """
    _check_method(method)
    _check_number(scale, "scale")
    if method == "ties":
        _check_density(density)
    taus = check_state_dicts(None, taus, what="task vectors")
    out: dict[str, Tensor] = {}
    for key, first in taus[0].items():
        work = _work_dtype(first.dtype)
        stacked = torch.stack([tau[key].to(work) for tau in taus])
        if method == "average":
            merged = stacked.mean(dim=0)
        elif method == "task_arithmetic":
            merged = stacked.sum(dim=0)
        else:
            merged = ties_tensor(stacked, density)
        out[key] = scale * merged
    return out


def _add(base: StateDict, tau: StateDict) -> dict[str, Tensor]:
    """``theta_0 + tau`` over ``base``'s keys (keys absent from ``tau`` copied), in the base's dtypes."""
    return {k: (b.to(_work_dtype(b.dtype)) + tau[k]).to(b.dtype) if k in tau else b.clone()
            for k, b in base.items()}


def task_arithmetic(base: StateDict, experts: Sequence[StateDict], scale: float = 1.0
                    ) -> dict[str, Tensor]:
    """Task arithmetic: ``theta_0 + scale * sum_t tau_t``.

    >>> import torch
    >>> task_arithmetic({"w": torch.zeros(2)}, [{"w": torch.ones(2)}, {"w": torch.ones(2)}], 0.25)
    {'w': tensor([0.5000, 0.5000])}
    """
    _check_number(scale, "scale")
    return _add(base, merged_task_vector(task_vectors(base, experts), "task_arithmetic", scale=scale))


def ties_merge(base: StateDict, experts: Sequence[StateDict], density: float = 0.2,
               scale: float = 1.0) -> dict[str, Tensor]:
    """TIES-merging: ``theta_0 + scale * ties(tau_1 .. tau_n)`` (trim to ``density`` per tensor,
    elect sign, disjoint mean).

    >>> import torch
    >>> base = {"w": torch.zeros(3)}
    >>> ties_merge(base, [{"w": torch.tensor([1.0, -1.0, 4.0])}, {"w": torch.tensor([3.0, 2.0, 0.1])}],
    ...            density=0.67)["w"]
    tensor([2., 2., 4.])
    """
    _check_density(density)
    _check_number(scale, "scale")
    return _add(base, merged_task_vector(task_vectors(base, experts), "ties", density=density,
                                         scale=scale))


# ---------------------------------------------------------------------------- TALL masks
def tall_masks(taus: Sequence[StateDict], tau_mtl: StateDict, lam: float = LAMBDA
               ) -> list[dict[str, Tensor]]:
    """TALL masks: ``mask_t = |tau_t| > lam * |tau_MTL - tau_t|`` per task, as ``bool`` tensors
    over ``tau_mtl``'s keys (``taus`` must have exactly those keys).

    >>> import torch
    >>> taus = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 2.0])}]
    >>> [m["w"] for m in tall_masks(taus, {"w": torch.tensor([1.0, 2.0])})]
    [tensor([ True, False]), tensor([True, True])]
    """
    _check_number(lam, "lam", minimum=0.0)
    taus = check_state_dicts(None, taus, what="task vectors")
    if not isinstance(tau_mtl, Mapping):
        raise TypeError(f"tau_mtl must be a state dict of the merged task vector, got {type(tau_mtl).__name__}")
    _check_like(taus[0], "task vectors[0]", tau_mtl, "tau_mtl", dtype=False)
    masks: list[dict[str, Tensor]] = [{} for _ in taus]
    for key, merged in tau_mtl.items():
        work = _work_dtype(merged.dtype)
        merged = merged.to(work)
        for t, tau in enumerate(taus):
            own = tau[key].to(work)
            masks[t][key] = own.abs() > lam * (merged - own).abs()
    return masks


def _check_masks(masks: Sequence[Mapping[str, Tensor]], what: str = "masks") -> list[Mapping[str, Tensor]]:
    masks = _check_sequence(masks, what)
    for t, mask in enumerate(masks):
        for key, m in mask.items():
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                got = m.dtype if isinstance(m, Tensor) else type(m).__name__
                raise TypeError(f"{what}[{t}][{key!r}] is {got}; masks are bool tensors (tall_masks "
                                "makes them; convert others with .bool())")
        _check_like(masks[0], f"{what}[0]", mask, f"{what}[{t}]", floating=False, finite=False)
    return masks


def apply_mask(base: StateDict, tau_mtl: StateDict, mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model for one task: ``theta_0 + mask * tau_MTL`` on ``tau_mtl``'s keys (``mask`` must
    have exactly those keys, in bool), the base's other keys copied; in the base's dtypes.

    >>> import torch
    >>> apply_mask({"w": torch.zeros(2), "b": torch.ones(1)}, {"w": torch.tensor([1.0, 2.0])},
    ...            {"w": torch.tensor([False, True])})
    {'w': tensor([0., 2.]), 'b': tensor([1.])}
    """
    if not isinstance(base, Mapping) or not isinstance(tau_mtl, Mapping):
        raise TypeError("base and tau_mtl must be state dicts (mappings of names to tensors)")
    missing = set(tau_mtl) - set(base)
    if missing:
        raise ValueError(f"tau_mtl has keys the base lacks: {_names(missing)}; merge and apply with "
                         "state dicts of the same model")
    sub = {k: base[k] for k in tau_mtl}
    _check_like(sub, "base", tau_mtl, "tau_mtl", dtype=False)
    _check_masks([mask], "mask")
    _check_like(tau_mtl, "tau_mtl", mask, "mask", dtype=False, floating=False, finite=False)
    return _add(base, {k: torch.where(mask[k], t, torch.zeros((), dtype=t.dtype, device=t.device))
                       for k, t in tau_mtl.items()})


# ---------------------------------------------------------------------------- refit to the masks
def input_grams(model: nn.Module, keys: Iterable[str], batches: Iterable[Any],
                forward: Callable[[Any], Any], valid: Callable[[Any], Tensor | None] | None = None
                ) -> dict[str, Tensor]:
    """Gram matrices ``E[x x^T]`` (float64, ``(in, in)``) of the inputs of the ``nn.Linear``
    and ``nn.Conv2d`` modules whose weights ``keys`` name (``"<module>.weight"``; keys of other
    modules are skipped), over every row of every batch: ``forward(batch)`` runs ``model`` on one
    batch and ``valid(batch)`` (optional) gives a bool mask over the ``nn.Linear`` inputs' leading
    dimensions (e.g. real tokens, not padding); only those rows count. A convolution is a linear
    map of its input patches, so its rows are the patches it reads (``F.unfold`` with its kernel,
    stride, padding and dilation; every position counts, ``valid`` does not apply), ``in`` being
    ``in_channels * kh * kw``, the order of ``weight.flatten(1)``; grouped convolutions and
    string or non-zero padding are refused. No gradients; the model is left as it was.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> g = input_grams(lin, ["weight"], [torch.tensor([[1.0, 0.0], [1.0, 2.0]])], lin)
    >>> g["weight"]
    tensor([[1., 1.],
            [1., 2.]], dtype=torch.float64)
    >>> conv = torch.nn.Conv2d(1, 1, kernel_size=2, stride=2)
    >>> input_grams(conv, ["weight"], [torch.ones(1, 1, 2, 4)], conv)["weight"].shape
    torch.Size([4, 4])
    """
    modules = dict(model.named_modules())
    targets: dict[str, nn.Linear | nn.Conv2d] = {}
    for key in keys:
        name = key.removesuffix(".weight") if key != "weight" else ""
        module = modules.get(name)
        if key.endswith("weight") and isinstance(module, nn.Conv2d) and (
                module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros"):
            raise ValueError(f"{key!r}: only an ungrouped convolution with numeric zero padding has a "
                             f"Gram matrix of its input patches here (groups={module.groups}, padding="
                             f"{module.padding!r}, padding_mode={module.padding_mode!r}); leave it out of keys")
        if key.endswith("weight") and isinstance(module, (nn.Linear, nn.Conv2d)):
            targets[key] = module
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(targets, 0)
    rows: Tensor | None = None

    def hook_for(key: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach()
            if isinstance(module, nn.Conv2d):  # (B, C*kh*kw, L) patches -> (B*L, C*kh*kw) rows
                x = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                             stride=module.stride).transpose(1, 2)
            elif rows is not None:
                if tuple(rows.shape) != tuple(x.shape[:-1]):
                    raise ValueError(f"valid(batch) has shape {tuple(rows.shape)}, the input of {key!r} "
                                     f"{tuple(x.shape)}: it must match the input's leading dimensions")
                x = x[rows]
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            sums[key] = sums.get(key, 0) + x.T @ x
            counts[key] += x.shape[0]
        return hook

    handles = [m.register_forward_hook(hook_for(k)) for k, m in targets.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                rows = None if valid is None else valid(batch)
                if rows is not None:
                    rows = rows.to(torch.bool)
                forward(batch)
    finally:
        for h in handles:
            h.remove()
    empty = [k for k, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"no inputs reached {_names(empty)}: give batches that run through those "
                         "modules (and a valid mask that keeps some rows)")
    return {k: (sums[k] / counts[k]).cpu() for k in targets}


def refit_to_masks(taus: Sequence[StateDict], masks: Sequence[Mapping[str, Tensor]],
                   grams: Sequence[Mapping[str, Tensor]] | None = None, ridge: float = 1e-4
                   ) -> dict[str, Tensor]:
    """The shared vector that, with ``masks`` fixed, best reproduces every task's own vector on
    that task's inputs: per key and output row ``r``, ``tau[r] = argmin_v sum_t (m_t[r] * v -
    tau_t[r])^T G_t (m_t[r] * v - tau_t[r])`` with ``G_t = grams[t][key]`` (``(in, in)``, the
    Gram matrix of the inputs task ``t``'s expert feeds that layer, :func:`input_grams`), plus
    ``ridge`` times the mean of the system's diagonal on the identity (entries no mask keeps come
    out 0). Keys without a Gram matrix (and every key when ``grams`` is None) use the identity: each
    entry is the mean of ``tau_t`` over the tasks whose mask keeps it (0 where none does), the exact
    least-squares value. Only tensors of 2 or more dimensions can have a Gram matrix: an
    ``(out, ...)`` weight is solved as ``(out, in)`` with ``in`` the product of the other
    dimensions (a convolution's ``weight.flatten(1)``, as :func:`input_grams` orders its patches).

    >>> import torch
    >>> taus = [{"w": torch.tensor([[1.0, 2.0]])}, {"w": torch.tensor([[3.0, -2.0]])}]
    >>> masks = [{"w": torch.tensor([[True, True]])}, {"w": torch.tensor([[True, False]])}]
    >>> refit_to_masks(taus, masks)["w"]
    tensor([[2., 2.]])
    >>> g = [{"w": torch.eye(2)}, {"w": torch.eye(2)}]
    >>> torch.allclose(refit_to_masks(taus, masks, g, ridge=1e-9)["w"], torch.tensor([[2.0, 2.0]]))
    True
    """
    _check_number(ridge, "ridge", minimum=0.0)
    if ridge <= 0.0:
        raise ValueError(f"ridge must be > 0 (it keeps the solve defined where masks are off), got {ridge}")
    taus = check_state_dicts(None, taus, what="task vectors")
    masks = _check_masks(masks)
    if len(masks) != len(taus):
        raise ValueError(f"{len(masks)} masks for {len(taus)} task vectors: one mask per task")
    _check_like(taus[0], "task vectors[0]", masks[0], "masks[0]", dtype=False, floating=False, finite=False)
    if grams is not None:
        grams = _check_sequence(grams, "grams")
        if len(grams) != len(taus):
            raise ValueError(f"{len(grams)} Gram dicts for {len(taus)} task vectors: one per task")
        gram_keys = set(grams[0])
        for t, g in enumerate(grams):
            if set(g) != gram_keys:
                raise ValueError(f"grams[{t}] has other keys than grams[0]: {_names(set(g) ^ gram_keys)}")
            for key, mat in g.items():
                if key not in taus[0]:
                    raise ValueError(f"grams[{t}] has key {key!r}, which the task vectors lack")
                shape = tuple(taus[0][key].shape)
                if len(shape) < 2:
                    raise ValueError(f"grams[{t}][{key!r}]: only an (out, in, ...) weight has a Gram matrix "
                                     f"of its inputs, this one has shape {shape}; leave it out of grams")
                n_in = int(torch.Size(shape[1:]).numel())
                if not isinstance(mat, Tensor) or tuple(mat.shape) != (n_in, n_in):
                    got = tuple(mat.shape) if isinstance(mat, Tensor) else type(mat).__name__
                    raise ValueError(f"grams[{t}][{key!r}] must be a ({n_in}, {n_in}) tensor for the "
                                     f"{shape} weight (the Gram matrix of its inputs), got {got}")
                if not torch.isfinite(mat).all():
                    raise ValueError(f"grams[{t}][{key!r}] contains NaN or inf")
    out: dict[str, Tensor] = {}
    for key, first in taus[0].items():
        work = _work_dtype(first.dtype)
        tau = torch.stack([t[key].to(torch.float64) for t in taus])         # (T, ...)
        m = torch.stack([mk[key].to(tau.device) for mk in masks]).to(torch.float64)
        if grams is None or key not in grams[0]:
            kept = m.sum(dim=0)
            out[key] = ((m * tau).sum(dim=0) / kept.clamp(min=1.0)).to(work)
            continue
        g = torch.stack([gr[key].to(device=tau.device, dtype=torch.float64) for gr in grams])  # (T, in, in)
        tau, m = tau.flatten(2), m.flatten(2)                                  # (T, out, in)
        rows = []
        for start in range(0, tau.shape[1], 64):  # row blocks bound the (rows, in, in) systems' memory
            mr, tr = m[:, start:start + 64], tau[:, start:start + 64]        # (T, R, in)
            a = sum(g[t][None] * (mr[t][:, :, None] * mr[t][:, None, :]) for t in range(len(taus)))
            b = (mr * torch.einsum("tij,trj->tri", g, tr)).sum(dim=0)
            scale = torch.diagonal(a, dim1=-2, dim2=-1).mean(dim=-1).clamp(min=1e-12)
            a = a + (ridge * scale)[:, None, None] * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            rows.append(torch.linalg.solve(a, b))
        out[key] = torch.cat(rows).view(first.shape).to(work)
    return out


@dataclass(frozen=True)
class MaskStats:
    """What the masks keep, over all their entries (``n_params``): ``selfish_fraction`` (kept by
    exactly one task), ``catchall_fraction`` (kept by every task), ``unused_fraction`` (kept by
    none) and each task's mask ``density`` (fraction kept)."""

    n_tasks: int
    n_params: int
    selfish_fraction: float
    catchall_fraction: float
    unused_fraction: float
    density: tuple[float, ...]

    def to_dict(self) -> dict[str, float | int]:
        """Flat dict for metrics files: ``density_<t>`` per task.

        >>> import torch
        >>> mask_stats([{"w": torch.tensor([True, False])}]).to_dict()["density_0"]
        0.5
        """
        out: dict[str, float | int] = {
            "n_tasks": self.n_tasks, "n_params": self.n_params, "selfish_fraction": self.selfish_fraction,
            "catchall_fraction": self.catchall_fraction, "unused_fraction": self.unused_fraction}
        out.update({f"density_{t}": d for t, d in enumerate(self.density)})
        return out


def mask_stats(masks: Sequence[Mapping[str, Tensor]]) -> MaskStats:
    """Selfish / catch-all / unused shares and per-task densities of per-task bool masks
    (same keys and shapes). With no entries at all every share is 0.

    >>> import torch
    >>> s = mask_stats([{"w": torch.tensor([True, True, False, False])},
    ...                 {"w": torch.tensor([True, False, True, False])}])
    >>> s.selfish_fraction, s.catchall_fraction, s.unused_fraction, s.density
    (0.5, 0.25, 0.25, (0.5, 0.5))
    """
    masks = _check_masks(masks)
    n_tasks = len(masks)
    n_params = sum(m.numel() for m in masks[0].values())
    selfish = catchall = unused = 0
    kept = [0] * n_tasks
    for key in masks[0]:
        count = torch.stack([m[key] for m in masks]).sum(dim=0)
        selfish += int((count == 1).sum())
        catchall += int((count == n_tasks).sum())
        unused += int((count == 0).sum())
        for t, m in enumerate(masks):
            kept[t] += int(m[key].sum())
    frac = (lambda n: n / n_params) if n_params else (lambda n: 0.0)
    return MaskStats(n_tasks, n_params, frac(selfish), frac(catchall), frac(unused),
                     tuple(frac(k) for k in kept))


# ---------------------------------------------------------------------------- shared keys and heads
def key_selector(spec: KeySelector) -> Callable[[str], bool]:
    """A predicate on state-dict keys from a predicate, one prefix or a sequence of prefixes.

    >>> key_selector(("head.", "norm."))("head.weight"), key_selector("head.")("body.weight")
    (True, False)
    """
    if callable(spec):
        return spec
    prefixes = (spec,) if isinstance(spec, str) else tuple(spec)
    if not all(isinstance(p, str) for p in prefixes):
        raise TypeError(f"key prefixes must be strings, got {prefixes!r}")
    return lambda key: key.startswith(prefixes)


def _select(keys: Sequence[str], spec: KeySelector | None, what: str) -> set[str]:
    """The keys ``spec`` selects; every prefix given must select at least one key."""
    if spec is None:
        return set()
    if not callable(spec):
        prefixes = (spec,) if isinstance(spec, str) else tuple(spec)
        for p in prefixes:
            if isinstance(p, str) and not any(k.startswith(p) for k in keys):
                raise ValueError(f"{what} prefix {p!r} matches no key of the state dicts (keys look "
                                 f"like {list(keys)[:3]}): check its spelling and the model")
    pred = key_selector(spec)
    return {k for k in keys if pred(k)}


def split_state_dict(state_dict: StateDict, selector: KeySelector) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(selected, rest)``: the keys ``selector`` picks and the others, in their order (tensors
    not copied). A prefix that matches no key is an error (a typo would otherwise select nothing).

    >>> import torch
    >>> sel, rest = split_state_dict({"a.w": torch.zeros(1), "b.w": torch.ones(1)}, "b.")
    >>> list(sel), list(rest)
    (['b.w'], ['a.w'])
    """
    chosen = _select(list(state_dict), selector, "selector")
    return ({k: v for k, v in state_dict.items() if k in chosen},
            {k: v for k, v in state_dict.items() if k not in chosen})


@dataclass
class MergedExperts:
    """What :func:`merge_experts` returns.

    * ``shared``: the merged model without heads: ``theta_0 + tau_MTL`` on the merged keys, the
      mean of the experts on the ``averaged`` keys;
    * ``tau`` (``tau_MTL``), ``masks`` (one bool dict per task) and ``base`` (``theta_0``): on
      the merged keys only;
    * ``heads``: per expert, its own tensors on the head keys;
    * ``stats``: :func:`mask_stats` of the masks; ``keys``: every key, in the base's order;
    * ``refit``: whether ``tau`` was re-fitted to the masks (``merge_experts(grams=...)``).
    """

    shared: dict[str, Tensor]
    tau: dict[str, Tensor]
    masks: list[dict[str, Tensor]]
    base: dict[str, Tensor]
    heads: list[dict[str, Tensor]]
    stats: MaskStats
    keys: tuple[str, ...]
    method: str
    density: float
    scale: float
    lam: float
    refit: bool = False

    @property
    def n_tasks(self) -> int:
        return len(self.heads)

    def state_dict_for(self, task: int, masked: bool = True) -> dict[str, Tensor]:
        """A full state dict (every key, base order) for ``task``: ``theta_0 + mask_t * tau_MTL``
        on the merged keys (``masked=False``: ``theta_0 + tau_MTL``), the averaged keys, and that
        task's head."""
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.n_tasks:
            raise ValueError(f"task must be an index in [0, {self.n_tasks}), got {task!r}")
        merged = apply_mask(self.base, self.tau, self.masks[task]) if masked else {}
        head = self.heads[task]
        return {k: head[k].clone() if k in head else merged[k] if k in merged else self.shared[k].clone()
                for k in self.keys}


def merge_experts(base: StateDict, experts: Sequence[StateDict], *, heads: KeySelector | None,
                  averaged: KeySelector | None = None, method: MergeMethod = "ties",
                  density: float = 0.2, scale: float = 1.0, lam: float = LAMBDA,
                  grams: Sequence[Mapping[str, Tensor]] | None = None, ridge: float = 1e-4
                  ) -> MergedExperts:
    """Merge experts into one shared model plus per-expert heads and per-task TALL masks.

    ``heads`` (prefixes or a predicate, e.g. ``model.expert_head_prefixes()``): keys kept per
    expert. ``averaged`` (e.g. ``model.shared_action_expert_prefixes()``): keys averaged over
    the experts. Every other key is merged with ``method`` (``density``, ``scale``) and masked
    (``lam``). A key may not be both a head and averaged. ``grams`` (one dict per expert, e.g.
    from :func:`input_grams`; ``[{}] * n`` for none): after the masks are made from the merge,
    ``tau_MTL`` is re-fitted to them (:func:`refit_to_masks` with ``ridge``; Gram matrices of
    keys that are not merged are ignored).

    >>> import torch
    >>> base = {"body.w": torch.zeros(2), "head.w": torch.zeros(1)}
    >>> experts = [{"body.w": torch.tensor([1.0, 0.0]), "head.w": torch.tensor([5.0])},
    ...            {"body.w": torch.tensor([1.0, 4.0]), "head.w": torch.tensor([7.0])}]
    >>> m = merge_experts(base, experts, heads="head.", method="ties", density=1.0)
    >>> m.shared, m.heads[1]
    ({'body.w': tensor([1., 4.])}, {'head.w': tensor([7.])})
    >>> m.state_dict_for(0)
    {'body.w': tensor([1., 0.]), 'head.w': tensor([5.])}
    """
    _check_method(method)
    _check_number(scale, "scale")
    _check_number(lam, "lam", minimum=0.0)
    if method == "ties":
        _check_density(density)
    experts = check_state_dicts(base, experts)
    keys = list(base)
    head_keys = _select(keys, heads, "heads")
    avg_keys = _select(keys, averaged, "averaged")
    both = head_keys & avg_keys
    if both:
        raise ValueError(f"keys {_names(both)} are selected as both heads and averaged: a key is "
                         "either kept per expert or averaged, make the selectors disjoint")
    merged_keys = [k for k in keys if k not in head_keys and k not in avg_keys]
    sub_base = {k: base[k] for k in merged_keys}
    taus = task_vectors(sub_base, [{k: sd[k] for k in merged_keys} for sd in experts])
    tau = merged_task_vector(taus, method, density=density, scale=scale) if merged_keys else {}
    masks = tall_masks(taus, tau, lam) if merged_keys else [{} for _ in experts]
    if grams is not None:
        grams = _check_sequence(grams, "grams")
        if len(grams) != len(experts):
            raise ValueError(f"{len(grams)} Gram dicts for {len(experts)} experts: one per expert")
        if merged_keys:
            tau = refit_to_masks(taus, masks, [{k: g[k] for k in g if k in sub_base} for g in grams],
                                 ridge=ridge)
    merged = _add(sub_base, tau)
    averaged_sd = naive_average([{k: sd[k] for k in keys if k in avg_keys} for sd in experts]) \
        if avg_keys else {}
    shared = {k: merged[k] if k in merged else averaged_sd[k] for k in keys if k not in head_keys}
    head_sds = [{k: sd[k].detach().clone() for k in keys if k in head_keys} for sd in experts]
    return MergedExperts(shared=shared, tau=tau, masks=masks,
                         base={k: v.detach().clone() for k, v in sub_base.items()}, heads=head_sds,
                         stats=mask_stats(masks), keys=tuple(keys), method=method,
                         density=float(density), scale=float(scale), lam=float(lam),
                         refit=grams is not None)


# ---------------------------------------------------------------------------- mask files
@dataclass(frozen=True)
class MaskFile:
    """A loaded mask file: one bool dict per task, the task names and the ``lam`` they were made
    with (``None`` when not recorded)."""

    masks: list[dict[str, Tensor]]
    tasks: tuple[str, ...]
    lam: float | None


def save_masks(path: str | Path, masks: Sequence[Mapping[str, Tensor]], *,
               tasks: Sequence[str] | None = None, lam: float | None = None) -> Path:
    """Write per-task bool masks to one :mod:`streammoe.checkpoint` file (safetensors, bool
    tensors, format version, digest), atomically. ``tasks`` names them (default ``task_<t>``).

    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "masks.safetensors"
    >>> _ = save_masks(path, [{"w": torch.tensor([True, False])}], tasks=["reach"], lam=0.6)
    >>> f = load_masks(path, like={"w": torch.zeros(2), "head": torch.zeros(3)})
    >>> f.tasks, f.lam, f.masks[0]["w"]
    (('reach',), 0.6, tensor([ True, False]))
    """
    masks = _check_masks(masks)
    names = [f"task_{t}" for t in range(len(masks))] if tasks is None else list(tasks)
    if len(names) != len(masks) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"tasks must be {len(masks)} names (one per mask), got {names!r}")
    if lam is not None:
        _check_number(lam, "lam", minimum=0.0)
    state = {"masks": [dict(m) for m in masks], "tasks": names,
             "lam": None if lam is None else float(lam)}
    return checkpoint.save(path, state, kind=MASK_FILE_KIND, version=MASK_FILE_VERSION)


def load_masks(path: str | Path, *, like: Mapping[str, Any] | None = None,
               n_tasks: int | None = None) -> MaskFile:
    """Read :func:`save_masks`' file, checking it before returning: a missing file is a
    ``FileNotFoundError``; a corrupt, truncated or foreign file, one whose masks are not bool or
    not alike, or (given ``like``: the model's state dict, or a mapping of key to shape) masks of
    keys the model lacks or of other shapes, or (given ``n_tasks``) another number of tasks, is a
    :class:`streammoe.checkpoint.CheckpointError` naming the file and the problem."""
    path = Path(path)
    label = "MergeVLA mask file"
    ck = checkpoint.load(path, kind=MASK_FILE_KIND, version=MASK_FILE_VERSION, label=label)
    state = ck.state
    if not (isinstance(state, dict) and isinstance(state.get("masks"), list) and state["masks"]
            and isinstance(state.get("tasks"), list) and len(state["tasks"]) == len(state["masks"])):
        raise checkpoint.CheckpointError(f"{path} is malformed: a {label} holds a non-empty list of "
                                         "masks and one task name per mask; re-create it with save_masks")
    try:
        masks = _check_masks(state["masks"])
    except (TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path} is malformed: {err}") from err
    if n_tasks is not None and len(masks) != n_tasks:
        raise checkpoint.CheckpointError(f"{path} holds masks for {len(masks)} tasks, this model has "
                                         f"{n_tasks}: use the mask file made for these experts")
    if like is not None:
        extra = set(masks[0]) - set(like)
        if extra:
            raise checkpoint.CheckpointError(
                f"{path} does not fit this model: it masks keys the model lacks, {_names(extra)} "
                "(written for another model or config?); re-create the masks for this model")
        for key, m in masks[0].items():
            want = like[key]
            want_shape = tuple(want.shape) if isinstance(want, Tensor) else tuple(want)
            if tuple(m.shape) != want_shape:
                raise checkpoint.CheckpointError(
                    f"{path} does not fit this model: the mask of {key!r} has shape {tuple(m.shape)}, "
                    f"the model's tensor {want_shape} (written for another model config?)")
    lam = state.get("lam")
    return MaskFile(masks=[dict(m) for m in masks], tasks=tuple(str(t) for t in state["tasks"]),
                    lam=None if lam is None else float(lam))
