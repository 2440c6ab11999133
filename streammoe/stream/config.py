"""Schema of ``experiment=driftmoe`` / ``driftmoe_smoke`` (``cfg.driftmoe``), see
:mod:`streammoe.config` for how schemas are registered and checked.

``driftmoe.stream`` (``conf/stream/``) and ``driftmoe.baselines`` are typed. ``driftmoe.model.params``
stays a free-form dict: it is the keyword arguments of the learner ``driftmoe.model.kind`` names,
and those differ per class (DriftMoE's ``n_experts``/``top_k``/``hidden_sizes``/..., ARF's
``n_models``...). :func:`check_learner_params` checks them before any work: for the DriftMoE kinds
every key must be an argument of the mode's class (``DriftMoEData``/``DriftMoETask``, or ``mode``) and the known ones must have the right type
and range; for River's learners ``n_models``, and River's constructor rejects the rest when the
entry builds the learner (still before the stream starts). ``+driftmoe.model.params.<arg>=...``
is the way to set an argument the YAML does not list.

``device``: DriftMoE runs on the CPU. Its experts are River Hoeffding trees (CPU, pure Python) and
its router (an MLP, ``streammoe.routing.MLPRouter``) predicts one row at a time and learns from
small batches interleaved with the trees: on CUDA each row would pay a host-device round trip
larger than the router's whole CPU time. So ``device=auto``/``cpu`` run everything on the CPU, and
``device=cuda`` is an error (``cuda`` without a GPU fails as in every system), not silently ignored.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING, DictConfig

# The stream modules (River) are imported inside the checks, not here: the CLI imports every
# schema module at start.
from streammoe.config import (
    ConfigError,
    RootConfig,
    at_least,
    cpu_only_device,
    greater_than,
    in_range,
    integer,
    number,
    one_of,
    validate,
)

__all__ = ["DriftMoEConfig", "DriftMoEExperiment", "LearnerConfig", "StreamConfig",
           "check_learner_params", "driftmoe_device", "validated"]

FILE_STREAM = "file"
# DriftMoE arguments the run sets (the run's seed)
_SET_BY_RUN = ("seed",)


@dataclass
class StreamConfig:
    """``conf/stream/<name>.yaml``."""

    name: str = MISSING             # LEDa | LEDg | SEAa | SEAg | RBFm | RBFf | file
    scale: float = MISSING          # share of the paper's 1M instances (synthetic streams)
    n_instances: int | None = MISSING
    path: str | None = MISSING      # the CSV / ARFF file of stream=file
    target: str | None = MISSING    # its label column (None: the last one)

    def check(self, at: str) -> None:
        from streammoe.stream.streams import STREAMS

        one_of(f"{at}name", self.name, [*STREAMS, FILE_STREAM])
        if self.name == FILE_STREAM:
            if not self.path:
                raise ConfigError(f"{at}path must name a CSV or ARFF file when {at}name=file")
        else:
            in_range(f"{at}scale", self.scale, 0.0, 1.0, low_open=True)
        if self.n_instances is not None:
            at_least(f"{at}n_instances", self.n_instances, 1)


@dataclass
class LearnerConfig:
    """``conf/model/<name>.yaml``: a learner by name and its keyword arguments."""

    kind: str = MISSING
    params: dict[str, Any] = MISSING

    def check(self, at: str) -> None:
        one_of(f"{at}kind", self.kind, _learner_names())
        check_learner_params(self.kind, self.params, f"{at}params.")


@dataclass
class DriftMoEConfig:
    """``cfg.driftmoe``."""

    stream: StreamConfig = MISSING
    model: LearnerConfig = MISSING
    baselines: list[str] = MISSING   # learners run side by side with the model (no params)
    window: int = MISSING            # instances per point of the accuracy curve
    memory_checkpoints: int = MISSING
    plots: bool = MISSING

    def check(self, at: str) -> None:
        for i, name in enumerate(self.baselines):
            one_of(f"{at}baselines[{i}]", name, _learner_names())
        at_least(f"{at}window", self.window, 1)
        at_least(f"{at}memory_checkpoints", self.memory_checkpoints, 1)


@dataclass
class DriftMoEExperiment(RootConfig):
    """Schema ``schema/driftmoe``."""

    driftmoe: DriftMoEConfig = MISSING

    def check(self, at: str) -> None:
        super().check(at)
        driftmoe_device(self.device)


def driftmoe_device(name: str) -> torch.device:
    """Always the CPU; ``cuda`` is an error (see the module doc)."""
    return cpu_only_device(name, "DriftMoE", "River trees and a router updated row by row")


def _learner_names() -> list[str]:
    from streammoe.stream.learners import LEARNERS

    return list(LEARNERS)


def check_learner_params(kind: str, params: dict[str, Any], at: str) -> None:
    """Keys and values of ``driftmoe.model.params`` for the learner ``kind`` (``at``: key prefix)."""
    if kind.startswith("driftmoe"):
        from streammoe.stream.driftmoe import MODES
        from streammoe.stream.learners import driftmoe_preset

        mode = params.get("mode", driftmoe_preset(kind).get("mode"))
        one_of(f"{at}mode", mode, list(MODES))
        cls = MODES[mode]
        known = ["mode", *(p for p in inspect.signature(cls).parameters if p not in _SET_BY_RUN)]
        for key in params:
            if key not in known:
                raise ConfigError(f"{at}{key} is not an argument of {cls.__name__} ({kind}, "
                                  f"mode={mode}); known: {', '.join(known)}")
        _check_driftmoe_params(cls, params, at)
    elif "n_models" in params:
        integer(f"{at}n_models", params["n_models"], 1)


def _check_driftmoe_params(cls: type, p: dict[str, Any], at: str) -> None:
    from streammoe.stream.driftmoe.base import DRIFT_DETECTORS, check_max_features

    defaults = {k: v.default for k, v in inspect.signature(cls).parameters.items()}
    if "n_experts" in p:
        integer(f"{at}n_experts", p["n_experts"], 1)
    if "top_k" in p:
        integer(f"{at}top_k", p["top_k"], 1)
    if "top_k" in defaults:
        n_experts = p.get("n_experts", defaults["n_experts"])
        top_k = p.get("top_k", defaults["top_k"])
        if top_k > n_experts:
            raise ConfigError(f"{at}top_k must be <= {at}n_experts ({n_experts}), got {top_k}")
    if "hidden_sizes" in p:
        sizes = p["hidden_sizes"]
        if not isinstance(sizes, (list, tuple)):
            raise ConfigError(f"{at}hidden_sizes must be a list of layer widths ([] : a linear "
                              f"router), got {sizes!r}")
        for i, width in enumerate(sizes):
            integer(f"{at}hidden_sizes[{i}]", width, 1)
    if "batch_size" in p:
        integer(f"{at}batch_size", p["batch_size"], 1, optional=True)
    if p.get("dropout") is not None:
        number(f"{at}dropout", p["dropout"])
        in_range(f"{at}dropout", p["dropout"], 0.0, 1.0, high_open=True)
    for key in ("lr", "tau"):
        if key in p:
            number(f"{at}{key}", p[key])
            greater_than(f"{at}{key}", p[key], 0.0)
    if "grace_period" in p:
        integer(f"{at}grace_period", p["grace_period"], 1)
    if p.get("delta") is not None:
        number(f"{at}delta", p["delta"])
        in_range(f"{at}delta", p["delta"], 0.0, 1.0, low_open=True, high_open=True)
    if p.get("leaf_prediction") is not None:
        one_of(f"{at}leaf_prediction", p["leaf_prediction"], ("mc", "nb", "nba"))
    try:
        check_max_features(p.get("max_features"))
    except ValueError as err:
        raise ConfigError(f"{at}{err}") from None
    if p.get("memory_budget_mb") is not None:
        number(f"{at}memory_budget_mb", p["memory_budget_mb"])
        greater_than(f"{at}memory_budget_mb", p["memory_budget_mb"], 0.0)
    if "memory_estimate_period" in p:
        integer(f"{at}memory_estimate_period", p["memory_estimate_period"], 1, optional=True)
    if p.get("drift_detector") is not None:
        one_of(f"{at}drift_detector", p["drift_detector"], sorted(DRIFT_DETECTORS))
    if "faithful" in p and not isinstance(p["faithful"], bool):
        raise ConfigError(f"{at}faithful must be true or false, got {p['faithful']!r}")


def validated(cfg: DictConfig) -> DriftMoEExperiment:
    """``cfg`` checked against :class:`DriftMoEExperiment` (the entry's first line)."""
    return validate(cfg, DriftMoEExperiment)
