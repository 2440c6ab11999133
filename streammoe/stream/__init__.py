"""Online learning on drifting streams: DriftMoE, the paper's streams and prequential evaluation.

>>> from streammoe.stream import STREAMS, DriftMoEClassifier, make_stream, prequential
>>> sorted(STREAMS)
['HYP10', 'HYP50', 'LEDa', 'LEDg', 'RBF50', 'RBFf', 'RBFm', 'SEAa', 'SEAg']
"""

from streammoe.lazy import lazy_exports

# name -> defining module, imported on first use (keeps `import streammoe.cli` fast)
_EXPORTS = {
    "BaseDriftMoE": "streammoe.stream.driftmoe",
    "DriftMoEClassifier": "streammoe.stream.driftmoe",
    "DriftMoEData": "streammoe.stream.driftmoe",
    "DriftMoETask": "streammoe.stream.driftmoe",
    "warm_up_torch": "streammoe.stream.driftmoe",
    "PrequentialResult": "streammoe.stream.evaluation",
    "kappa_stats": "streammoe.stream.evaluation",
    "prequential": "streammoe.stream.evaluation",
    "LEARNERS": "streammoe.stream.learners",
    "make_learner": "streammoe.stream.learners",
    "STREAMS": "streammoe.stream.streams",
    "DriftStream": "streammoe.stream.streams",
    "iter_file": "streammoe.stream.streams",
    "make_stream": "streammoe.stream.streams",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
