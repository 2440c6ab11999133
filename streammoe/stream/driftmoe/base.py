"""What both DriftMoE modes share: input checks, the router's inputs, the router, the trees,
test-then-train caching and the drift detector. A mode subclasses :class:`BaseDriftMoE` and
fills in the hooks (as River's ``BaseForest`` does for ARF's classifier and regressor):

* ``_n_out``: how many experts (router outputs) there are now;
* ``_on_new_class(y)``: a label never seen before arrived (task mode adds an expert);
* ``_combine(x, logits)``: unnormalised class scores from the router's logits and the experts;
* ``_learn(x, y, logits, v)``: after the prediction, the router's target and which experts learn.

Test-then-train, one instance at a time: the router (:class:`streammoe.routing.OnlineRouter`, a
NumPy forward per row, one batched Adam step every ``batch_size`` rows) scores the experts, River
Hoeffding trees; ``predict_proba_one``'s expert probabilities and router scores are reused by the
following ``learn_one`` on the same ``x``.

Input policy (checked before any state changes; a rejected call leaves the model as it was):

* features: numbers (``bool`` counts as 0/1), ``None`` = missing; non-numeric, NaN, infinite and
  out-of-range values (``|v| > MAX_ABS_FEATURE = 1e15``) raise ``ValueError`` naming the feature.
  Why a bound: the faithful router sees raw values in float32 and Adam squares their gradients,
  which overflow float32 past about 1e18; 1e15 leaves room for the weights. Rescale larger
  quantities (timestamps in ns, money in cents of large sums) upstream;
* labels: hashable, not ``None`` or NaN, and of the kind of the first label (``bool``, numbers,
  ``str`` or one other type): a ``str`` after ints raises ``ValueError`` instead of becoming a
  class that breaks every later call.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from river import base, drift, tree
from river.forest.adaptive_random_forest import BaseTreeClassifier  # ARF's random-subspace tree

from streammoe.routing import OnlineRouter

__all__ = ["DRIFT_DETECTORS", "MAX_ABS_FEATURE", "BaseDriftMoE", "check_max_features",
           "make_drift_detector"]

MAX_ABS_FEATURE = 1e15
_NUMERIC_KINDS = frozenset("biuf")

# Drift detectors by name, for configs (``drift_detector: adwin``); Python users pass an instance.
DRIFT_DETECTORS: dict[str, Any] = {
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
    "ddm": drift.binary.DDM,
    "hddm_a": drift.binary.HDDMA,
    "none": drift.NoDrift,
}


def make_drift_detector(spec: Any) -> base.DriftDetector | None:
    """A River drift detector from a name of :data:`DRIFT_DETECTORS` (``None`` stays ``None``:
    the model's default), or the detector itself."""
    if spec is None or isinstance(spec, base.DriftDetector):
        return spec
    if isinstance(spec, str) and spec in DRIFT_DETECTORS:
        return DRIFT_DETECTORS[spec]()
    raise ValueError(f"drift_detector must be a river drift detector or one of "
                     f"{sorted(DRIFT_DETECTORS)}, got {spec!r}")


def check_max_features(mf: Any) -> None:
    """``ValueError`` unless ``mf`` is a valid ``max_features``: ``None`` (every feature),
    ``"sqrt"``, ``"log2"``, an int >= 1 or a share in (0, 1]."""
    if not (mf is None or mf in ("sqrt", "log2") or (isinstance(mf, int) and mf >= 1)
            or (isinstance(mf, float) and 0.0 < mf <= 1.0)):
        raise ValueError(f"max_features must be None (every feature), 'sqrt', 'log2', an int "
                         f">= 1 or a share in (0, 1], got {mf!r}")


def _feature_sort_key(name: Hashable) -> tuple[str, str]:
    # New features get router columns in a canonical order, so dict order never matters.
    return type(name).__name__, str(name)


def _label_kind(y: Any) -> str:
    if isinstance(y, (bool, np.bool_)):
        return "bool"
    if isinstance(y, numbers.Number):
        return "number"
    if isinstance(y, str):
        return "str"
    return type(y).__qualname__


class BaseDriftMoE(base.Classifier):
    """Shared machinery of :class:`~streammoe.stream.DriftMoEData` and
    :class:`~streammoe.stream.DriftMoETask` (not used directly).

    ``None`` for ``dropout``, ``batch_size``, ``delta``, ``leaf_prediction``, ``max_features``,
    ``memory_budget_mb`` and ``memory_estimate_period`` means the paper's value when ``faithful``
    and the tuned one otherwise (each mode's ``_PAPER`` and ``_TUNED`` tables,
    ``docs/driftmoe.md``).
    """

    _PAPER: dict[str, Any] = {"dropout": 0.2, "delta": 1e-7, "leaf_prediction": "nba",
                              "memory_budget_mb": None, "memory_estimate_period": 1_000_000,
                              "max_features": None}
    _TUNED: dict[str, Any] = {"dropout": 0.2, "delta": 0.01, "leaf_prediction": "nba",
                              "memory_budget_mb": 16.0, "memory_estimate_period": 10_000,
                              "max_features": None}

    def __init__(self, hidden_sizes: tuple[int, ...], dropout: float | None, lr: float,
                 batch_size: int | None, grace_period: int, delta: float | None, tau: float,
                 leaf_prediction: str | None, max_features: int | float | str | None,
                 memory_budget_mb: float | None, memory_estimate_period: int | None,
                 drift_detector: base.DriftDetector | None, faithful: bool,
                 seed: int | None) -> None:
        drift_detector = make_drift_detector(drift_detector)
        self.hidden_sizes = tuple(hidden_sizes)
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.grace_period = grace_period
        self.delta = delta
        self.tau = tau
        self.leaf_prediction = leaf_prediction
        self.max_features = max_features
        self.memory_budget_mb = memory_budget_mb
        self.memory_estimate_period = memory_estimate_period
        self.drift_detector = drift_detector
        self.faithful = faithful
        self.seed = seed
        self._check_params()

        self._features: list[Hashable] = []  # router input columns, in canonical order
        self._feature_index: dict[Hashable, int] = {}
        self._classes: list[Any] = []  # labels in order of appearance
        self._class_index: dict[Any, int] = {}
        self._label_kind: str | None = None
        self._experts: list[tree.HoeffdingTreeClassifier] = []
        self._n_trees_made = 0  # seeds each random-subspace tree differently
        self._router: OnlineRouter | None = None  # built on the first learn_one (input size known)
        # Running mean / variance of the router's inputs (Welford), used when not faithful.
        self._count = np.zeros(0)
        self._mean = np.zeros(0)
        self._m2 = np.zeros(0)
        self._inv_std = np.zeros(0)
        self._n_learned = 0
        self._n_resets = 0
        self._n_drifts = 0
        self._detector = self._make_detector()
        # Test-then-train cache: what predict_proba_one computed for the last x.
        self._cache_x: dict | None = None
        self._cache_at = -1
        self._cache_logits = np.zeros(0)
        self._cache_probas: dict[int, dict] = {}

    # ----------------------------------------------------------------- settings
    def _check_params(self) -> None:
        if any(not isinstance(h, numbers.Integral) or h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be layer widths >= 1 (() for a linear router), "
                             f"got {self.hidden_sizes}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(f"lr must be > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}")
        if self.leaf_prediction not in (None, "mc", "nb", "nba"):
            raise ValueError(f"leaf_prediction must be mc, nb or nba, got {self.leaf_prediction!r}")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.memory_budget_mb is not None and not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")
        if self.memory_estimate_period is not None and self.memory_estimate_period < 1:
            raise ValueError(f"memory_estimate_period must be >= 1, got {self.memory_estimate_period}")
        check_max_features(self.max_features)
        mf = self.max_features
        if self.faithful and (mf is not None or not isinstance(
                self.drift_detector, (type(None), drift.NoDrift))):
            raise ValueError("faithful=True is the paper's algorithm: every expert sees every "
                             "feature and there is no drift detector (leave max_features and "
                             "drift_detector unset)")

    def _setting(self, name: str) -> Any:
        """A parameter's value, ``None`` read as the paper's (faithful) or the tuned value."""
        value = getattr(self, name)
        if value is not None:
            return value
        return (self._PAPER if self.faithful else self._TUNED)[name]

    def _make_detector(self) -> base.DriftDetector:
        if self.faithful:
            return drift.NoDrift()
        if self.drift_detector is None:
            return drift.ADWIN()
        return self.drift_detector.clone()

    @property
    def _detects(self) -> bool:
        """Whether a drift detector runs (not faithful, not ``NoDrift``)."""
        return not isinstance(self._detector, drift.NoDrift)

    @property
    def _multiclass(self) -> bool:
        return True

    @property
    def _batch_rows(self) -> int:
        return self._setting("batch_size")

    @property
    def _n_out(self) -> int:
        raise NotImplementedError

    # ----------------------------------------------------------------- public state
    @property
    def n_router_updates(self) -> int:
        """Adam steps taken by the router so far."""
        return 0 if self._router is None else self._router.n_updates

    @property
    def n_resets(self) -> int:
        """Times the drift detector restarted experts."""
        return self._n_resets

    @property
    def n_drifts(self) -> int:
        """Changes of the ensemble's error the drift detector flagged, rises and falls."""
        return self._n_drifts

    @property
    def experts(self) -> list[tree.HoeffdingTreeClassifier]:
        """The expert trees."""
        return list(self._experts)

    @property
    def classes(self) -> list[Any]:
        return list(self._classes)

    @property
    def router(self) -> OnlineRouter | None:
        """The router (``None`` until the first ``learn_one`` with a feature)."""
        return self._router

    @property
    def last_expert(self) -> int | None:
        """The router's top-1 expert for the last ``x`` given to ``predict_proba_one``."""
        return int(np.argmax(self._cache_logits)) if self._cache_logits.size else None

    # ----------------------------------------------------------------- experts
    @property
    def _tree_max_size(self) -> float:
        """One tree's share of the memory budget, in MB (River's ``max_size``)."""
        budget = self._setting("memory_budget_mb")
        if budget is None:  # the paper (River's default): 100 MB per tree
            return 100.0
        return budget / max(self._n_out, 1)

    def _new_tree(self) -> tree.HoeffdingTreeClassifier:
        """An expert: River's Hoeffding tree, or ARF's random-subspace one when ``max_features``
        is set (each leaf watches a random subset of the features, as in ARF)."""
        params = dict(grace_period=self.grace_period, delta=self._setting("delta"), tau=self.tau,
                      split_criterion="info_gain", leaf_prediction=self._setting("leaf_prediction"),
                      nb_threshold=0, merit_preprune=False, max_size=self._tree_max_size,
                      memory_estimate_period=self._setting("memory_estimate_period"))
        self._n_trees_made += 1
        if self._setting("max_features") is None:
            return tree.HoeffdingTreeClassifier(**params)
        # The subspace size follows the features seen (set again as new features appear).
        n_sub = self._subspace_size(max(len(self._features), 1))
        seed = (0 if self.seed is None else self.seed) * 100_003 + self._n_trees_made
        return BaseTreeClassifier(max_features=n_sub, rng=random.Random(seed), **params)

    def _subspace_size(self, d: int) -> int:
        mf = self._setting("max_features")
        if mf == "sqrt":
            m = round(math.sqrt(d))
        elif mf == "log2":
            m = round(math.log2(d)) if d > 1 else 1
        elif isinstance(mf, float):
            m = int(mf * d)
        else:
            m = int(mf)
        return min(max(m, 1), d)

    def _expert_proba(self, i: int, x: dict) -> dict:
        p = self._cache_probas.get(i)
        if p is None:
            p = self._experts[i].predict_proba_one(x)
            self._cache_probas[i] = p
        return p

    # ----------------------------------------------------------------- input checks
    def _check_row(self, x: Any) -> dict:
        """``x`` with ``None`` values dropped, or ``ValueError`` naming the bad feature. Reads
        nothing but ``x`` and changes nothing."""
        if not isinstance(x, Mapping):
            raise TypeError(f"x must be a dict of feature -> number, got {type(x).__name__}")
        try:
            arr = np.array(list(x.values())) if x else np.zeros(0)
        except (ValueError, TypeError):  # ragged values (lists): the slow path names the feature
            arr = np.zeros(0, dtype=object)
        # All numbers within range (NaN compares False): x as given; else the slow path names
        # the bad feature.
        if arr.dtype.kind in _NUMERIC_KINDS and arr.ndim == 1 and (np.abs(arr) <= MAX_ABS_FEATURE).all():
            return x
        clean = {}
        for k, v in x.items():
            if v is None:
                continue
            if not isinstance(v, numbers.Number) or isinstance(v, complex):
                raise ValueError(f"feature {k!r} has non-numeric value {v!r} ({type(v).__name__}); "
                                 "encode it first, e.g. river.preprocessing.OneHotEncoder")
            if not math.isfinite(v):
                raise ValueError(f"feature {k!r} is {v}; DriftMoE needs finite numbers "
                                 "(impute upstream, e.g. river.preprocessing.StatImputer)")
            if abs(v) > MAX_ABS_FEATURE:
                raise ValueError(f"feature {k!r} is {v:g}, out of DriftMoE's range |v| <= "
                                 f"{MAX_ABS_FEATURE:g}; rescale it upstream (e.g. "
                                 "river.preprocessing.StandardScaler, or change its unit)")
            clean[k] = v
        return clean

    def _check_label(self, y: Any) -> None:
        """``ValueError`` for a label the model cannot take; changes nothing."""
        if y is None:
            raise ValueError("the label y is None; DriftMoE needs a class label for every row")
        try:
            hash(y)
        except TypeError:
            raise ValueError(f"the label {y!r} is not hashable ({type(y).__name__}); use a str, "
                             "int or bool class label") from None
        if y != y:  # NaN (float, numpy or a Decimal)
            raise ValueError(f"the label is {y!r}; NaN labels would each become a new class: "
                             "drop or impute those rows upstream")
        kind = _label_kind(y)
        if self._label_kind is not None and kind != self._label_kind:
            raise ValueError(f"label {y!r} is a {kind} but the model's classes are "
                             f"{self._label_kind} labels ({self._classes[:5]}...); "
                             "map every label to one type upstream")

    # ----------------------------------------------------------------- router inputs
    def _raw(self, x: dict) -> np.ndarray:
        """Known features in column order; a missing one is NaN."""
        get, nan = x.get, math.nan
        return np.fromiter((get(k, nan) for k in self._features), dtype=np.float64,
                           count=len(self._features))

    def _vector(self, x: dict, raw: np.ndarray | None = None) -> np.ndarray:
        """The router's input: raw values (missing = 0) when faithful, else standardised by the
        running mean / std (missing = the mean, i.e. 0; a feature seen < 2 times reads 0)."""
        v = self._raw(x) if raw is None else raw
        if not self.faithful:
            v = (v - self._mean) * self._inv_std
        if np.isnan(v).any():
            v = np.where(np.isnan(v), 0.0, v)
        return v

    def _add_features(self, x: dict) -> None:
        new = [k for k in x if k not in self._feature_index]
        if not new:
            return
        for k in sorted(new, key=_feature_sort_key):
            self._feature_index[k] = len(self._features)
            self._features.append(k)
        zeros = np.zeros(len(new))
        self._count = np.concatenate([self._count, zeros])
        self._mean = np.concatenate([self._mean, zeros])
        self._m2 = np.concatenate([self._m2, zeros])
        self._inv_std = np.concatenate([self._inv_std, zeros])
        if self._router is not None:
            self._router.grow_inputs(len(self._features))
        if self._setting("max_features") is not None:
            n_sub = self._subspace_size(len(self._features))
            for expert in self._experts:  # leaves made from now on watch n_sub features
                expert.max_features = n_sub

    def _update_scaler(self, raw: np.ndarray) -> None:
        """Welford's running mean / variance over the features present in this row."""
        seen = ~np.isnan(raw)
        self._count += seen
        delta = np.where(seen, raw - self._mean, 0.0)
        self._mean += delta / np.maximum(self._count, 1)
        self._m2 += delta * np.where(seen, raw - self._mean, 0.0)
        std = np.sqrt(self._m2 / np.maximum(self._count - 1, 1))
        self._inv_std = np.where(self._count >= 2, 1.0 / (std + 1e-8), 0.0)

    def _build_router(self) -> None:
        self._router = OnlineRouter(len(self._features), max(self._n_out, 1),
                                    hidden=self.hidden_sizes, dropout=self._setting("dropout"),
                                    lr=self.lr, batch_rows=self._batch_rows, seed=self.seed)

    def _scores(self, x: dict) -> np.ndarray:
        """Router logits for ``x``, from the cache when ``x`` was just scored."""
        if self._cache_at == self._n_learned and self._cache_x == x:
            return self._cache_logits
        self._cache_x = dict(x)  # a copy: never keep a reference to the caller's dict
        self._cache_at = self._n_learned
        self._cache_probas = {}
        if self._router is None:  # no feature seen yet: every expert scores the same
            self._cache_logits = np.zeros(max(self._n_out, 1))
        else:
            self._cache_logits = self._router.scores(self._vector(x))
        return self._cache_logits

    def _push(self, v: np.ndarray, target: np.ndarray) -> None:
        if self._router is not None:
            self._router.push(v, target)

    # ----------------------------------------------------------------- drift
    def _error_rose(self, error: float) -> bool:
        """Feed the ensemble's 0/1 error to the detector; True when it flags a rise. Detectors
        with an ``estimation`` (ADWIN) flag changes both ways, counted in ``n_drifts``; only a
        rise means the experts went stale. Those without one (DDM, HDDM) flag rises only."""
        before = getattr(self._detector, "estimation", None)
        self._detector.update(error)
        if not self._detector.drift_detected:
            return False
        self._n_drifts += 1
        return before is None or self._detector.estimation > before

    # ----------------------------------------------------------------- hooks
    def _on_new_class(self, y: Any) -> None:
        """A label seen for the first time was added to ``classes``."""

    def _combine(self, x: dict, logits: np.ndarray) -> dict:
        """Unnormalised class scores of ``x`` from the router's ``logits`` and the experts."""
        raise NotImplementedError

    def _learn(self, x: dict, y: Any, logits: np.ndarray, v: np.ndarray) -> None:
        """Train the router (``self._push``) and the experts on ``(x, y)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- River API
    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict:
        x = self._check_row(x)
        if not self._classes:
            return {}
        if len(self._classes) == 1:
            return {self._classes[0]: 1.0}
        out = self._combine(x, self._scores(x))
        total = sum(out.values())
        if not total > 0:
            return {c: 1.0 / len(self._classes) for c in self._classes}
        return {c: p / total for c, p in out.items()}

    def learn_one(self, x: dict, y: base.typing.ClfTarget, **kwargs: Any) -> None:
        x = self._check_row(x)
        self._check_label(y)
        # Checked: from here on the row is learned.
        if y not in self._class_index:
            self._class_index[y] = len(self._classes)
            self._classes.append(y)
            if self._label_kind is None:
                self._label_kind = _label_kind(y)
            self._on_new_class(y)
        # The scores the model predicted with (cached when predict_proba_one just saw x), taken
        # before this row updates the scaler, so predicting first never changes what is learned.
        # A new class (task mode) widened the router since: those cached scores are stale.
        if self._cache_logits.shape[0] != max(self._n_out, 1):
            self._cache_x = None
        logits = self._scores(x)
        self._add_features(x)
        raw = self._raw(x)
        if not self.faithful:
            self._update_scaler(raw)
        if self._router is None and self._features:
            self._build_router()
        self._learn(x, y, logits, self._vector(x, raw))
        self._n_learned += 1  # invalidates the cache
        self._cache_x, self._cache_probas = None, {}
        self._cache_logits = np.zeros(0)

    def _mixture(self, probas: list[dict], weights: np.ndarray) -> dict:
        """Weighted sum of expert probabilities (an empty or all-zero answer counts as uniform)."""
        out = dict.fromkeys(self._classes, 0.0)
        for p, w in zip(probas, weights):
            total = sum(p.values())
            if total <= 0:
                p, total = dict.fromkeys(self._classes, 1.0), float(len(self._classes))
            for c, pc in p.items():
                if c in out:
                    out[c] += w * pc / total
        return out
