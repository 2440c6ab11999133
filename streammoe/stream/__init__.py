"""Online learning on drifting streams: DriftMoE, the paper's streams and prequential evaluation.

>>> from streammoe.stream import DriftMoEClassifier, make_stream, prequential
>>> sorted(STREAMS)
['LEDa', 'LEDg', 'RBFf', 'RBFm', 'SEAa', 'SEAg']
"""

from streammoe.stream.driftmoe import DriftMoEClassifier, warm_up_torch
from streammoe.stream.evaluation import PrequentialResult, kappa_stats, prequential
from streammoe.stream.learners import LEARNERS, make_learner
from streammoe.stream.streams import STREAMS, DriftStream, iter_file, make_stream

__all__ = [
    "LEARNERS",
    "STREAMS",
    "DriftMoEClassifier",
    "DriftStream",
    "PrequentialResult",
    "iter_file",
    "kappa_stats",
    "make_learner",
    "make_stream",
    "prequential",
    "warm_up_torch",
]
