"""The DriftMoE paper's six synthetic streams built from MOA's own generators (optional).

The paper ran its streams in MOA through CapyMOA; ``streams.make_stream`` rebuilds them from
River's ports of the same generators. River's generators draw from Python's Mersenne Twister
instead of Java's ``java.util.Random``, so a River stream and a MOA stream with the same settings
are different samples (and, for RBF, different random models). ``make_moa_stream`` gives the MOA
stream next to the River one, with the same interface (``streams.DriftStream``: ``name``,
``n_instances``, ``drifts``, ``drift_width``, ``seed``, iteration over ``(x, y)``), the same drift
centres and widths and the same ``scale``, so the benchmark can run the same learners on both.

What is built (a MOA CLI string, see ``MOADriftStream.cli``):

* LED: ``generators.LEDGeneratorDrift -n 10 -d k`` (10 % noise per segment, 17 irrelevant
  attributes, k = 1 -> 3 -> 5 -> 7 drifting attributes), concept i seeded ``-i seed + i``.
* SEA: ``generators.SEAGenerator -f f -p 10`` with MOA functions 1 -> 2 -> 4 -> 1. MOA numbers
  its functions from 1 (thresholds 8, 9, 7, 9.5), River its variants from 0 (same thresholds),
  so River's variants 0 -> 1 -> 3 -> 0 are MOA's 1 -> 2 -> 4 -> 1. MOA's SEA noise is ``-p``
  (``-n`` is ``numInstancesConcept``).
* RBF: ``generators.RandomRBFGeneratorDrift -c 2 -a 10 -n 50 -k 50 -s speed -r seed
  -i seed + 1`` (speed 1e-4 RBFm, 1e-3 RBFf), no ConceptDriftStream.
* Drifts: MOA's ``ConceptDriftStream`` nested on the old side, ``-p`` the centre, ``-w`` the
  width, ``-r seed + 100 + i``, exactly as ``streams.SigmoidDrift`` mirrors it.

Features come back as ``{0: float, 1: float, ...}`` (River's keys; LED's binary attributes are
0.0 / 1.0), labels as ``int`` (SEA: 0 / 1 where River's SEA gives ``bool``). Needs CapyMOA
(``pip install 'streammoe[moa]'``), which bundles MOA's jar and starts a JVM through JPype, and a
Java runtime. capymoa is imported only when a stream is made, so this module imports without it.
The JVM starts once per process (CapyMOA's ``CAPYMOA_JVM_ARGS``, default ``-Xmx8g -Xss10M``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .streams import STREAMS, DriftStream, StreamSpec, make_stream

__all__ = ["MOA_STREAMS", "MOADriftStream", "make_moa_stream", "moa_classifier", "moa_cli"]

#: The streams with a MOA version: the paper's six (``STREAMS`` may hold more, River-only ones).
MOA_STREAMS = ("LEDa", "LEDg", "SEAa", "SEAg", "RBFm", "RBFf")

INSTALL_HINT = ("MOA streams need CapyMOA and a Java runtime: pip install 'streammoe[moa]' "
                "(CapyMOA ships MOA's jar) and install Java (e.g. `apt install default-jre`, "
                "or point JAVA_HOME at one)")

_LED_DRIFTING = (1, 3, 5, 7)
_SEA_FUNCTIONS = (1, 2, 4, 1)  # MOA's 1-based numbering of River's variants 0 -> 1 -> 3 -> 0
NOISE_PERCENT = 10
CHUNK = 4096


def _load_moa() -> Any:
    """Start CapyMOA's JVM (MOA's jar on the class path) and return MOA's ``ClassOption``.

    Raises ``ImportError`` naming the fix when capymoa, JPype or Java is missing.
    """
    try:
        import capymoa  # noqa: F401  (starts the JVM with MOA's jar)
        from moa.options import ClassOption
    except Exception as e:  # ModuleNotFoundError, CapymoaImportError (no Java), JVM errors
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return ClassOption


def _concept_clis(spec: StreamSpec, seed: int) -> list[str]:
    if spec.family == "led":
        return [f"generators.LEDGeneratorDrift -i {seed + i} -n {NOISE_PERCENT} -d {k}"
                for i, k in enumerate(_LED_DRIFTING)]
    if spec.family == "sea":
        return [f"generators.SEAGenerator -f {f} -i {seed + i} -p {NOISE_PERCENT}"
                for i, f in enumerate(_SEA_FUNCTIONS)]
    return [f"generators.RandomRBFGeneratorDrift -s {spec.change_speed!r} -k 50 -r {seed} "
            f"-i {seed + 1} -c 2 -a 10 -n 50"]


def moa_cli(spec: StreamSpec, drifts: list[int], width: int, seed: int) -> str:
    """The MOA CLI string of a stream: concepts nested in ``ConceptDriftStream`` s on the old
    side, so every position counts instances of the whole stream."""
    concepts = _concept_clis(spec, seed)
    cli = concepts[0]
    for i, (concept, pos) in enumerate(zip(concepts[1:], drifts)):
        cli = (f"ConceptDriftStream -s ({cli}) -d ({concept}) -p {pos} -w {width} "
               f"-r {seed + 100 + i}")
    return cli


@dataclass
class MOADriftStream(DriftStream):
    """``streams.DriftStream``'s interface over a MOA stream. Every iteration builds a fresh MOA
    stream from ``cli`` (so it restarts from the same seed) and reads it in chunks."""

    source = "moa"  # River streams have none; class attribute, not a dataclass field

    @property
    def cli(self) -> str:
        return moa_cli(self.spec, self.drifts, self.drift_width, self.seed)

    def moa_stream(self) -> Any:
        """A fresh MOA ``ExampleStream`` of this stream, prepared for use (from the start: the same
        rows every call); ``nextInstance().getData()`` gives MOA's instances, for MOA's own
        learners (``moa_classifier``)."""
        class_option = _load_moa()
        from moa.streams import ExampleStream

        stream = class_option.cliStringToObject(self.cli, ExampleStream, None)
        stream.prepareForUse()
        return stream

    def iter_arrays(self, chunk_size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(X, y)`` chunks (float64 ``[c, d]``, int64 ``[c]``) of the whole stream, in order.

        One JPype round trip per instance copies MOA's ``toDoubleArray()`` (features then class
        index) into a Java buffer; the buffer crosses to NumPy once per chunk.
        """
        import jpype
        from java.lang import System

        stream = self.moa_stream()
        width = int(stream.getHeader().numAttributes())  # features + class (last)
        buf = jpype.JArray(jpype.JDouble)(chunk_size * width)
        copy, nxt = System.arraycopy, stream.nextInstance
        left = self.n_instances
        while left > 0:
            c = min(chunk_size, left)
            for i in range(c):
                copy(nxt().getData().toDoubleArray(), 0, buf, i * width, width)
            rows = np.array(buf, dtype=np.float64).reshape(chunk_size, width)[:c]
            yield rows[:, :-1], rows[:, -1].astype(np.int64)
            left -= c

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole stream as ``(X, y)`` arrays."""
        chunks = list(self.iter_arrays())
        if not chunks:
            return np.empty((0, 0)), np.empty(0, dtype=np.int64)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def _generator(self) -> Iterator[tuple[dict, Any]]:
        for X, y in self.iter_arrays():
            keys = range(X.shape[1])
            for row, label in zip(X.tolist(), y.tolist()):
                yield dict(zip(keys, row)), label

    def __iter__(self) -> Iterator[tuple[dict, Any]]:
        yield from self._generator()


def moa_classifier(cli: str, header: Any) -> Any:
    """A MOA classifier built from its CLI string (e.g. ``"trees.HoeffdingTree -g 50 -c 1e-7"``,
    relative to ``moa.classifiers``), given ``header`` (a MOA stream's ``getHeader()``) and
    prepared for use: ``getVotesForInstance`` / ``trainOnInstance`` on MOA instances."""
    class_option = _load_moa()
    from moa.classifiers import Classifier

    learner = class_option.cliStringToObject(cli, Classifier, None)
    learner.setModelContext(header)
    learner.prepareForUse()
    return learner


def make_moa_stream(name: str, scale: float = 1.0, seed: int = 1, n_instances: int | None = None
                    ) -> MOADriftStream:
    """The paper's stream ``name`` (one of ``MOA_STREAMS``) from MOA's generators.

    Same arguments, length, drift centres and widths as ``streams.make_stream``; raises
    ``ValueError`` for a name without a MOA version and ``ImportError`` (with the fix) when
    CapyMOA or Java is missing.
    """
    river = make_stream(name, scale=scale, seed=seed, n_instances=n_instances)  # validates
    if name not in MOA_STREAMS:
        raise ValueError(f"no MOA version of stream {name!r}; MOA streams: {list(MOA_STREAMS)}")
    _load_moa()
    return MOADriftStream(river.name, river.n_instances, river.drifts, river.drift_width,
                          river.seed, STREAMS[name])
