"""Routers: modules that map a context to one score (logit) per expert.

Both routers own a ``torch.Generator``: weight init, dropout and gate noise draw from it and never
from torch's global generator, so two routers built with the same ``seed`` behave identically
whatever else the process does (River's ``check_estimator`` tests exactly that). A router moved to
a GPU draws there, from a generator of its own on that device (:class:`SeededModule`). The
generators' states travel with ``pickle`` and ``copy.deepcopy`` (``state_dict`` holds weights only).

>>> import torch
>>> r = MLPRouter(4, n_experts=3, hidden=(8,), seed=0)
>>> r(torch.zeros(2, 4)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from streammoe.routing.gates import top_k_gate, top_k_indices

__all__ = ["ACTIVATIONS", "MLPRouter", "NoisyTopKRouter", "RouterOutput", "SeededModule"]

# Activation by name: the one table of streammoe (routers here, SkillBlender's skills too).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


class SeededModule(nn.Module):
    """An ``nn.Module`` with its own ``torch.Generator`` that survives pickling and copying.

    ``generator`` is a CPU generator (weight init, and every draw while the module works on the
    CPU). When the module's parameters move to another device (``.to("cuda")``), it also gets a
    generator on that device, seeded like the CPU one at its creation (``seed``, or the CPU
    generator's initial seed), so noise and dropout masks are drawn where they are used, without a
    host-to-device copy per forward. Draws on CPU tensors always come from ``generator``, so the
    numbers on a CPU are those of a module that never moved; a device's stream is its own
    (another algorithm) and not equal to the CPU's. :meth:`generators` lists them all by device,
    for checkpoints.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._device_generators: dict[str, torch.Generator] = {}
        self._pending_states: dict[str, Tensor] = {}  # unpickled where the device was absent

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state()
        states = {**self._pending_states,
                  **{dev: g.get_state() for dev, g in self._device_generators.items()}}
        state.pop("_device_generators", None)
        state["_pending_states"] = states
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        gen_state = state.pop("generator")
        state.setdefault("_pending_states", {})
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(gen_state)
        self._device_generators = {}
        for dev in list(self._pending_states):
            if _device_available(torch.device(dev)):
                self.device_generator(torch.device(dev))  # takes the pending state

    def device_generator(self, device: torch.device | str) -> torch.Generator:
        """The module's generator on ``device`` (``generator`` on the CPU), created on first use."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.generator
        if device.index is None and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        gen = self._device_generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            pending = self._pending_states.pop(key, None)
            if pending is not None:
                gen.set_state(pending)
            else:
                gen.manual_seed(self.generator.initial_seed())
            self._device_generators[key] = gen
        return gen

    def generators(self) -> dict[str, torch.Generator]:
        """Every generator of the module by device: ``{"cpu": generator, "cuda:0": ..., ...}``."""
        return {"cpu": self.generator, **self._device_generators}

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> SeededModule:
        # .to() / .cuda() end here: give the module a generator where its parameters now live,
        # so that it exists (and can take a checkpoint's state) before the first forward.
        super()._apply(fn, *args, **kwargs)
        param = next(self.parameters(), None)
        if param is not None and param.device.type != "cpu" and _device_available(param.device):
            self.device_generator(param.device)
        return self

    def _rand(self, shape: Sequence[int] | torch.Size, like: Tensor) -> Tensor:
        """Uniform [0, 1) draws from the module's generator, on ``like``'s device and dtype."""
        if like.device.type == "cpu":
            return torch.rand(tuple(shape), generator=self.generator).to(like.dtype)
        # drawn in float32 as on the CPU (the same numbers whatever ``like``'s precision)
        gen = self.device_generator(like.device)
        return torch.rand(tuple(shape), generator=gen, device=like.device).to(like.dtype)

    def _randn(self, shape: Sequence[int] | torch.Size, like: Tensor) -> Tensor:
        """Standard normal draws from the module's generator, on ``like``'s device and dtype."""
        if like.device.type == "cpu":
            return torch.randn(tuple(shape), generator=self.generator).to(like.dtype)
        gen = self.device_generator(like.device)
        return torch.randn(tuple(shape), generator=gen, device=like.device).to(like.dtype)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        """Inverted dropout whose mask comes from the module's generator (active in training)."""
        if not self.training or p == 0.0:
            return x
        keep = (self._rand(x.shape, x) >= p).to(x.dtype)
        return x * keep / (1.0 - p)


def _device_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "meta":
        return False
    return True


def _init_linear(layer: nn.Linear, init: str, generator: torch.Generator) -> None:
    with torch.no_grad():
        fan_in, fan_out = layer.in_features, layer.out_features
        if init == "xavier_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
        elif init == "kaiming_uniform":
            bound = math.sqrt(6.0 / fan_in)
        elif init == "zeros":
            bound = 0.0
        else:
            raise ValueError(f"unknown init {init!r}; choose xavier_uniform, kaiming_uniform or zeros")
        w = (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
        layer.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.zero_()


class MLPRouter(SeededModule):
    """Multi-layer perceptron from a context vector to ``n_experts`` logits.

    Parameters
    ----------
    in_dim
        Size of the context vector.
    n_experts
        Number of experts (output logits).
    hidden
        Hidden layer sizes; ``()`` gives a linear router.
    dropout
        Dropout after every hidden activation (mask from the router's own generator).
    activation
        ``relu``, ``gelu``, ``tanh`` or ``silu``.
    init
        ``xavier_uniform`` (weights) with zero biases, ``kaiming_uniform`` or ``zeros``.
    last_layer_init
        Init of the output layer; ``zeros`` makes every expert start equally likely.
    seed
        Seed of the router's generator (``None``: nondeterministic).
    """

    def __init__(
        self,
        in_dim: int,
        n_experts: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        activation: str = "relu",
        init: str = "xavier_uniform",
        last_layer_init: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if in_dim < 1 or n_experts < 1:
            raise ValueError(f"in_dim and n_experts must be >= 1, got {in_dim}, {n_experts}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.in_dim, self.n_experts, self.dropout = in_dim, n_experts, dropout
        sizes = [in_dim, *hidden, n_experts]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()
        for i, layer in enumerate(self.layers):
            is_last = i == len(self.layers) - 1
            _init_linear(layer, (last_layer_init or init) if is_last else init, self.generator)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(..., n_experts)`` for contexts ``(..., in_dim)``."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"router expects {self.in_dim} input features, got {x.shape[-1]}")
        for layer in self.layers[:-1]:
            x = self._dropout(self.act(layer(x)), self.dropout)
        return self.layers[-1](x)

    def dropout_keep_masks(self, n_rows: int) -> list[Tensor]:
        """The dropout masks (``True`` kept; CPU bool tensors) that a training-mode :meth:`forward`
        of ``n_rows`` rows would draw now, one per hidden layer in the forward's order, taken from
        the module's generator: what a hand-written backward pass needs to reproduce the forward
        (:class:`~streammoe.routing.OnlineRouter`). With ``dropout=0`` no draw is made and every
        mask is all ones."""
        sizes = [layer.out_features for layer in self.layers[:-1]]
        if self.dropout == 0.0:
            return [torch.ones(n_rows, h, dtype=torch.bool) for h in sizes]
        like = torch.empty(0)
        return [self._rand((n_rows, h), like) >= self.dropout for h in sizes]


@dataclass
class RouterOutput:
    """What a sparse router returns.

    ``weights`` are dense ``(batch, n_experts)`` with exact zeros outside the selected experts;
    ``importance`` (sum of weights per expert) and ``load`` (differentiable expected number of
    rows routed to each expert) feed :func:`streammoe.routing.losses.load_balance_loss`.
    """

    logits: Tensor
    weights: Tensor
    indices: Tensor
    importance: Tensor
    load: Tensor


class NoisyTopKRouter(SeededModule):
    """Noisy top-k gating (Shazeer et al., 2017) with a learned noise scale.

    ``H(x) = x W_g + eps * (softplus(x W_noise) + min_noise_std)`` during training, ``eps ~ N(0,1)``
    from the router's generator; weights = softmax over the top-k of ``H``. ``W_noise`` starts at
    zero so the initial noise std is ``log 2 + min_noise_std``. ``load`` is the smooth estimate
    ``P(H_i(x) in top-k)`` from the paper, so the balance loss has a gradient. Under
    ``torch.autocast`` the router still computes in its parameters' precision (float32).
    """

    def __init__(
        self,
        in_dim: int,
        n_experts: int,
        k: int,
        noisy: bool = True,
        min_noise_std: float = 0.01,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if not 1 <= k <= n_experts:
            raise ValueError(f"k must be in [1, n_experts={n_experts}], got {k}")
        self.in_dim, self.n_experts, self.k = in_dim, n_experts, k
        self.noisy, self.min_noise_std = noisy, min_noise_std
        self.w_gate = nn.Linear(in_dim, n_experts, bias=False)
        _init_linear(self.w_gate, "xavier_uniform", self.generator)
        self.w_noise = nn.Linear(in_dim, n_experts, bias=False)
        nn.init.zeros_(self.w_noise.weight)

    def forward(self, x: Tensor) -> RouterOutput:
        """Route contexts ``(..., in_dim)``; noise only in training mode."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"router expects {self.in_dim} input features, got {x.shape[-1]}")
        flat = x.reshape(-1, self.in_dim)
        if torch.is_autocast_enabled(flat.device.type):
            # Route in the parameters' precision (float32), not autocast's bfloat16 / float16:
            # low precision turns near ties between experts into different top-k choices (the
            # Switch Transformer keeps its router in float32 for the same reason).
            with torch.autocast(flat.device.type, enabled=False):
                return self._route(flat.to(self.w_gate.weight.dtype), x.shape[:-1])
        return self._route(flat, x.shape[:-1])

    def _route(self, flat: Tensor, batch_shape: torch.Size) -> RouterOutput:
        clean = self.w_gate(flat)
        use_noise = self.noisy and self.training
        if use_noise:
            std = nn.functional.softplus(self.w_noise(flat)) + self.min_noise_std
            logits = clean + self._randn(clean.shape, clean) * std
        else:
            logits = clean
        indices = top_k_indices(logits, self.k)
        weights = top_k_gate(logits, self.k, indices=indices)
        if use_noise and self.k < self.n_experts:
            load = self._smooth_load(clean, logits, std)
        else:
            load = (weights > 0).to(weights.dtype).sum(0)
        return RouterOutput(
            logits=logits.reshape(*batch_shape, self.n_experts),
            weights=weights.reshape(*batch_shape, self.n_experts),
            indices=indices.reshape(*batch_shape, self.k),
            importance=weights.sum(0),
            load=load,
        )

    def _smooth_load(self, clean: Tensor, noisy: Tensor, std: Tensor) -> Tensor:
        # P(expert i stays in the top-k if its own noise were redrawn): compare with the k-th
        # (if i is outside) or (k+1)-th (if inside) noisy logit of the other experts.
        top = torch.topk(noisy, self.k + 1, dim=-1).values
        threshold_in = top[:, self.k : self.k + 1]
        threshold_out = top[:, self.k - 1 : self.k]
        is_in = noisy > threshold_in
        prob_in = _normal_cdf((clean - threshold_in) / std)
        prob_out = _normal_cdf((clean - threshold_out) / std)
        return torch.where(is_in, prob_in, prob_out).sum(0)


def _normal_cdf(z: Tensor) -> Tensor:
    """Standard normal CDF, in closed form: ``torch.distributions.Normal(0, 1).cdf`` computes exactly
    this, but first validates its argument (a device-to-host synchronisation per call)."""
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
