"""The router core: gates, routers, mixtures, routing losses and statistics.

Every streammoe system imports routing from here (``from streammoe.routing import ...``). This
package depends on torch and numpy only and imports no system.
"""

from streammoe.routing.ema import ema_copy, ema_update
from streammoe.routing.gates import (
    GATES,
    get_gate,
    hard_gate,
    hard_soft_gate,
    shrink_to_uniform,
    sigmoid_gate,
    softmax_gate,
    softmax_per_dim_gate,
    top_k_gate,
    top_k_indices,
)
from streammoe.routing.losses import (
    bilinear_contrastive_loss,
    cv_squared,
    entropy,
    info_nce_loss,
    load_balance_loss,
    multi_hot_bce,
    router_z_loss,
    switch_balance_loss,
)
from streammoe.routing.mixtures import SparseMoE, dense_mixture, sparse_dispatch
from streammoe.routing.online import OnlineRouter
from streammoe.routing.routers import MLPRouter, NoisyTopKRouter, RouterOutput, SeededModule
from streammoe.routing.stats import RoutingStats

__all__ = [
    "GATES",
    "MLPRouter",
    "NoisyTopKRouter",
    "OnlineRouter",
    "RouterOutput",
    "RoutingStats",
    "SeededModule",
    "SparseMoE",
    "bilinear_contrastive_loss",
    "cv_squared",
    "dense_mixture",
    "ema_copy",
    "ema_update",
    "entropy",
    "get_gate",
    "hard_gate",
    "hard_soft_gate",
    "info_nce_loss",
    "load_balance_loss",
    "multi_hot_bce",
    "router_z_loss",
    "shrink_to_uniform",
    "sigmoid_gate",
    "softmax_gate",
    "softmax_per_dim_gate",
    "sparse_dispatch",
    "switch_balance_loss",
    "top_k_gate",
    "top_k_indices",
]
