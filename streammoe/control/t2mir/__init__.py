"""T2MIR: in-context RL transformer (AD) with token-wise and task-wise MoE and contrastive task
routing. See docs/t2mir.md; the Hydra entry is :func:`streammoe.control.t2mir.experiment.run`."""

from streammoe.control.t2mir.data import ContextSampler, History, ensure_dataset, load_dataset
from streammoe.control.t2mir.evaluate import EvalResult, evaluate_in_context
from streammoe.control.t2mir.model import VARIANTS, ICRLTransformer, KVCache, ModelConfig
from streammoe.control.t2mir.train import TrainConfig, load_checkpoint, train_variant

__all__ = [
    "VARIANTS",
    "ContextSampler",
    "EvalResult",
    "History",
    "ICRLTransformer",
    "KVCache",
    "ModelConfig",
    "TrainConfig",
    "ensure_dataset",
    "evaluate_in_context",
    "load_checkpoint",
    "load_dataset",
    "train_variant",
]
