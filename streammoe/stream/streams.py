"""The DriftMoE paper's six synthetic drifting streams, built from River generators, and a loader
for a user's own CSV / ARFF stream (Electricity, Airlines, CovType, ...).

Drifts are nested ``river.datasets.synth.ConceptDriftStream`` s whose ``position`` is the centre
of the sigmoid. The nesting is on the *old* side (``CDS(CDS(s0, s1, p1), s2, p2)``) so that every
position counts instances of the whole stream: an inner stream only advances when the outer one
draws from it, which before the outer drift is every instance.

``scale`` shortens a stream proportionally: ``scale=0.1`` gives 100,000 instances with drift
centres (and gradual widths) multiplied by 0.1; abrupt drifts keep their width of 50.

Besides the paper's six, three wide streams (10-50 features) drift continuously, with no drift
centres (``drifts == []`` as RBFm/RBFf), to benchmark DriftMoE where the router's input is wide:
HYP10 / HYP50 (``synth.Hyperplane``: a rotating hyperplane, all 10 / 10 of 50 weights moving) and
RBF50 (``synth.RandomRBFDrift``, 50 features, 5 classes). Their parameters and why: ``STREAMS``.

>>> s = make_stream("SEAa", scale=0.001, seed=1)
>>> s.n_instances, s.drifts
(1000, [250, 500, 750])
>>> sum(1 for _ in s)
1000
>>> w = make_stream("HYP50", scale=0.1, seed=1)
>>> w.n_instances, w.drifts, len(next(iter(w))[0])
(100000, [], 50)
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from river.datasets import synth

__all__ = ["STREAMS", "DriftStream", "iter_file", "make_stream"]

FULL_LENGTH = 1_000_000
ABRUPT = ([249_975, 499_975, 749_975], 50)  # centres, width (the paper's "a" streams)
GRADUAL = ([225_000, 475_000, 725_000], 50_000)  # the paper's "g" streams


@dataclass(frozen=True)
class StreamSpec:
    family: str  # led | sea | rbf | hyperplane
    drift: str  # abrupt | gradual | continuous
    change_speed: float = 0.0  # rbf: centroid speed; hyperplane: weight change per instance
    description: str = ""
    n_features: int = 10  # rbf / hyperplane (LED has 24, SEA 3: fixed by their generators)
    n_classes: int = 2  # rbf (hyperplane is binary)
    n_drift_features: int = 0  # hyperplane: the first n_drift_features weights move


STREAMS: dict[str, StreamSpec] = {
    "LEDa": StreamSpec("led", "abrupt", description="LED 24 attrs, 10% noise, drifting attrs 1->3->5->7 (MOA's, nested), abrupt"),
    "LEDg": StreamSpec("led", "gradual", description="LED as LEDa, gradual drifts (width 50k)"),
    "SEAa": StreamSpec("sea", "abrupt", description="SEA functions 0->1->3->0, 10% noise, abrupt"),
    "SEAg": StreamSpec("sea", "gradual", description="SEA as SEAa, gradual drifts (width 50k)"),
    "RBFm": StreamSpec("rbf", "continuous", 1e-4, "RandomRBFDrift 50 centroids all moving, speed 1e-4"),
    "RBFf": StreamSpec("rbf", "continuous", 1e-3, "RandomRBFDrift 50 centroids all moving, speed 1e-3"),
    # Wide streams (not in the paper). Hyperplane: MOA's classic moving-hyperplane setting
    # (mag_change 1e-3, reversal sigma 0.1, noise 0.05, which River applies as 4 % flipped labels):
    # each moving weight random-walks by ~0.45 per 20k instances (weights start in [0, 1]): a
    # slow, continuous rotation. HYP50 moves 10 of its 50 weights: most features keep their role
    # and the drift hides among stable ones.
    "HYP10": StreamSpec("hyperplane", "continuous", 1e-3, "Hyperplane 10 features, all 10 weights "
                        "moving by 1e-3 (sigma 0.1), 5% noise", n_features=10, n_drift_features=10),
    "HYP50": StreamSpec("hyperplane", "continuous", 1e-3, "Hyperplane 50 features, 10 weights "
                        "moving by 1e-3 (sigma 0.1), 5% noise", n_features=50, n_drift_features=10),
    # RBF50: RBFf widened to 50 features, with 5 classes and speed 3e-3. In 50 dimensions the
    # clusters barely overlap (a sample's offset from its centroid spreads over 50 coordinates),
    # so RBFf's 2 classes at 1e-3 become easy (ARF ~98 % on 20k instances); 5 classes and a
    # 3x faster move keep ARF near 90 % and give DriftMoE's task mode 5 experts.
    "RBF50": StreamSpec("rbf", "continuous", 3e-3, "RandomRBFDrift 50 features, 5 classes, 50 "
                        "centroids all moving, speed 3e-3", n_features=50, n_classes=5),
}


def _moa_led_seeds(seed: int, n: int) -> list[int]:
    """``n`` distinct seeds for ``synth.LEDDrift`` whose drifting attributes are MOA's.

    MOA's ``LEDGeneratorDrift`` (which the paper used) always swaps relevant attribute i with
    irrelevant attribute 7 + i (its random start and offset are fixed at 0), so the concepts
    1 -> 3 -> 5 -> 7 are nested: each drift moves two more segments. River's ``LEDDrift`` draws
    the start and offset from its seeded generator before the first instance; the seeds returned
    here are the first ones, counting up from ``1000 * seed``, that draw 0 for both.
    """
    found: list[int] = []
    candidate = 1000 * seed
    while len(found) < n:
        draws = random.Random(candidate)
        if draws.randint(0, 6) == 0 and draws.randint(0, synth.LEDDrift._N_IRRELEVANT_ATTRIBUTES - 1) == 0:
            found.append(candidate)
        candidate += 1
    return found


def _concepts(spec: StreamSpec, seed: int) -> list[Any]:
    if spec.family == "led":
        seeds = _moa_led_seeds(seed, 4)
        return [synth.LEDDrift(seed=s, noise_percentage=0.11, irrelevant_features=True,
                               n_drift_features=n) for s, n in zip(seeds, (1, 3, 5, 7))]
    if spec.family == "sea":
        return [synth.SEA(variant=v, noise=0.1, seed=seed + i) for i, v in enumerate((0, 1, 3, 0))]
    if spec.family == "hyperplane":
        return [synth.Hyperplane(seed=seed, n_features=spec.n_features,
                                 n_drift_features=spec.n_drift_features,
                                 mag_change=spec.change_speed, sigma=0.1, noise_percentage=0.05)]
    return [synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, n_classes=spec.n_classes,
                                 n_features=spec.n_features, n_centroids=50,
                                 change_speed=spec.change_speed, n_drift_centroids=50)]


@dataclass
class SigmoidDrift:
    """``river.datasets.synth.ConceptDriftStream``'s sampling rule (draw from the new concept with
    probability ``sigmoid(4 (t - position) / width)``, same ``random.Random(seed)`` draws), with a
    sigmoid that cannot overflow: River's raises ``OverflowError`` once ``position - t`` exceeds
    about 177 widths (any abrupt drift past instance ~9,000)."""

    stream: Iterable[tuple[dict, Any]]
    drift_stream: Iterable[tuple[dict, Any]]
    position: int
    width: int
    seed: int

    def __iter__(self) -> Iterator[tuple[dict, Any]]:
        rng = random.Random(self.seed)
        old, new = iter(self.stream), iter(self.drift_stream)
        t = 0
        while True:
            t += 1
            z = 4.0 * (t - self.position) / self.width
            p_new = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
            try:
                yield next(new) if rng.random() <= p_new and p_new > 0 else next(old)
            except StopIteration:
                return


@dataclass
class DriftStream:
    """An iterable of ``(x, y)`` with its length and drift centres (in instances)."""

    name: str
    n_instances: int
    drifts: list[int]
    drift_width: int
    seed: int
    spec: StreamSpec = field(repr=False)

    def _generator(self) -> Iterable[tuple[dict, Any]]:
        concepts = _concepts(self.spec, self.seed)
        stream: Iterable[tuple[dict, Any]] = concepts[0]
        for i, (concept, pos) in enumerate(zip(concepts[1:], self.drifts)):
            stream = SigmoidDrift(stream, concept, pos, self.drift_width, seed=self.seed + 100 + i)
        return stream

    def __iter__(self) -> Iterator[tuple[dict, Any]]:
        yield from itertools.islice(self._generator(), self.n_instances)


def make_stream(name: str, scale: float = 1.0, seed: int = 1, n_instances: int | None = None
                ) -> DriftStream:
    """One of the synthetic streams (``STREAMS``: the paper's six, three wide ones), shortened by
    ``scale``.

    ``n_instances`` overrides the length without moving the drifts (e.g. a quick look at the
    start of a stream).
    """
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; choose one of {sorted(STREAMS)}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    spec = STREAMS[name]
    if spec.drift == "continuous":
        drifts, width = [], 1
    else:
        centres, width = ABRUPT if spec.drift == "abrupt" else GRADUAL
        drifts = [round(c * scale) for c in centres]
        width = max(1, round(width * scale)) if spec.drift == "gradual" else width
    n = n_instances if n_instances is not None else round(FULL_LENGTH * scale)
    return DriftStream(name, n, drifts, width, seed, spec)


def _parse_value(v: str) -> Any:
    try:
        return float(v)
    except ValueError:
        return v


def iter_file(path: str | Path, target: str | None = None, n_instances: int | None = None,
              drop: tuple[str, ...] = ()) -> Iterator[tuple[dict, Any]]:
    """Stream ``(x, y)`` from a local CSV (header row) or ARFF file, in file order.

    ``target`` names the label column (default: the last one); numeric-looking values become
    floats, others stay strings (encode them before DriftMoE, e.g. with a OneHotEncoder);
    empty cells and ``?`` are missing (left out of ``x``). Works for the paper's Electricity,
    Airlines and CovType files when a user has them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stream file {path} not found")
    with path.open(newline="") as f:  # closed when the stream ends or is dropped
        if path.suffix.lower() == ".arff":
            rows, names = _arff_rows(f)
        else:
            rows = csv.reader(f)
            names = next(rows)
        target = target if target is not None else names[-1]
        if target not in names:
            raise ValueError(f"target column {target!r} not in {path.name} columns {names}")
        t = names.index(target)
        keep = [i for i, n in enumerate(names) if i != t and n not in drop]
        for row in itertools.islice(rows, n_instances):
            if not row:
                continue
            if len(row) != len(names):
                raise ValueError(f"{path.name}: row with {len(row)} fields, header has {len(names)}")
            x = {names[i]: _parse_value(row[i]) for i in keep if row[i] not in ("", "?")}
            yield x, row[t]  # labels stay strings: "1" and "1.0" are different classes in a file


def _arff_rows(lines: Iterator[str]) -> tuple[Iterator[list[str]], list[str]]:
    """(data rows, attribute names) of an ARFF file's lines."""
    names: list[str] = []
    for line in lines:
        low = line.strip().lower()
        if low.startswith("@attribute"):
            names.append(line.split()[1].strip("'\""))
        elif low.startswith("@data"):
            break
    data = (line.strip() for line in lines if line.strip() and not line.startswith("%"))
    return (next(csv.reader([line], skipinitialspace=True, quotechar="'")) for line in data), names
