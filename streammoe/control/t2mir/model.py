"""The in-context RL decision transformer (AD) with T2MIR's dual mixture of experts.

Tokens are interleaved ``(s_t, a_t, r_t)`` over a context of several episodes of one task; each
modality has its own linear embedder and the three tokens of a step share a learned
within-episode timestep embedding (there is no absolute position: attention is causal and the
timestep resets at each episode, which marks episode boundaries). The action for step ``t`` is
predicted from the hidden state at ``s_t`` as a Gaussian (tanh mean, learned std).

The last block's feed-forward layer is, by variant:

* ``ad``: a dense FFN (Algorithm Distillation),
* ``t2mir``: a **token-wise** MoE (noisy top-k on each token's hidden state, balance loss) and a
  **task-wise** MoE (top-k without noise on a causal task representation: the running mean of the
  hidden states over the prefix) side by side, each producing ``d_model / 2`` features, concatenated,
* ``token_moe``: the token-wise MoE alone (full width),
* the contrastive task-routing loss lives in :mod:`streammoe.control.t2mir.train` (the
  ``t2mir_no_cl`` ablation is ``t2mir`` with that loss off).

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` (``is_causal`` for whole
sequences, an explicit mask when new tokens attend to a :class:`KVCache`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streammoe.routing import NoisyTopKRouter, RouterOutput, SparseMoE

__all__ = ["VARIANTS", "FFNOutput", "ICRLTransformer", "KVCache", "ModelConfig", "variant_flags"]

# variant -> (token-wise MoE, task-wise MoE, contrastive loss)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "ad": (False, False, False),
    "t2mir": (True, True, True),
    "token_moe": (True, False, False),
    "t2mir_no_cl": (True, True, False),
}


def variant_flags(variant: str) -> tuple[bool, bool, bool]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown T2MIR variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


@dataclass
class ModelConfig:
    obs_dim: int
    act_dim: int
    horizon: int  # episode length: size of the timestep embedding table
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.05
    ffn_mult: int = 4  # dense FFN hidden = ffn_mult * d_model
    expert_hidden: int = 128  # hidden width of each MoE expert
    token_moe: bool = False
    task_moe: bool = False
    n_token_experts: int = 6
    token_k: int = 2
    n_task_experts: int = 8
    task_k: int = 2
    min_log_std: float = -5.0
    max_log_std: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, and the running sum behind the
    causal task representation. Built by :meth:`ICRLTransformer.new_cache`."""

    keys: list[Tensor | None]
    values: list[Tensor | None]
    task_sum: Tensor | None = None
    length: int = 0


@dataclass
class FFNOutput:
    out: Tensor
    token: RouterOutput | None = None
    task: RouterOutput | None = None
    task_repr: Tensor | None = None  # (B, T, d) causal running mean
    extra: dict[str, Tensor] = field(default_factory=dict)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class DenseFFN(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp(d, hidden, d)

    def forward(self, h: Tensor, cache: KVCache | None) -> FFNOutput:
        return FFNOutput(self.net(h))


class DualMoE(nn.Module):
    """Token-wise and/or task-wise sparse MoE on the same input, outputs concatenated."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        if not (cfg.token_moe or cfg.task_moe):
            raise ValueError("DualMoE needs token_moe or task_moe")
        both = cfg.token_moe and cfg.task_moe
        if both and d % 2:
            raise ValueError(f"d_model must be even to split it between two MoE branches, got {d}")
        width = d // 2 if both else d
        self.token: SparseMoE | None = None
        self.task: SparseMoE | None = None
        if cfg.token_moe:
            self.token = SparseMoE(
                [_mlp(d, cfg.expert_hidden, width) for _ in range(cfg.n_token_experts)],
                NoisyTopKRouter(d, cfg.n_token_experts, cfg.token_k, noisy=True, seed=cfg.seed + 101),
            )
        if cfg.task_moe:
            self.task = SparseMoE(
                [_mlp(d, cfg.expert_hidden, width) for _ in range(cfg.n_task_experts)],
                NoisyTopKRouter(d, cfg.n_task_experts, cfg.task_k, noisy=False, seed=cfg.seed + 202),
            )

    def forward(self, h: Tensor, cache: KVCache | None) -> FFNOutput:
        outs: list[Tensor] = []
        result = FFNOutput(h)
        if self.token is not None:
            y, result.token = self.token(h)
            outs.append(y)
        if self.task is not None:
            # Causal task representation: mean of the hidden states up to and including each
            # position (the reference pools over the whole sequence, which leaks the future).
            prev = cache.task_sum if cache is not None else None
            cums = torch.cumsum(h, dim=1)
            if prev is not None:
                cums = cums + prev.unsqueeze(1)
            start = cache.length if cache is not None else 0
            counts = torch.arange(start + 1, start + h.shape[1] + 1, device=h.device, dtype=h.dtype)
            task_repr = cums / counts.view(1, -1, 1)
            if cache is not None:
                cache.task_sum = cums[:, -1].detach()
            y, result.task = self.task(h, route_input=task_repr)
            result.task_repr = task_repr
            outs.append(y)
        result.out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return result


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d_model={d} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for z in self.qkv(x).split(d, dim=-1))
        past = cache.length if cache is not None else 0
        if cache is not None:
            if cache.keys[layer] is not None:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k.detach(), v.detach()
        # No dropout on the attention matrix: on a CPU it forces SDPA's slow math kernel (a
        # bernoulli draw per score); dropout acts on the residual branches instead.
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new token i (absolute position past + i) sees every cached token and itself
            mask = torch.arange(past + t, device=x.device)[None, :] <= (
                torch.arange(t, device=x.device)[:, None] + past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: nn.Module) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads)
        self.ffn = ffn
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> tuple[Tensor, FFNOutput]:
        x = x + self.drop(self.attn(self.ln1(x), cache, layer))
        f = self.ffn(self.ln2(x), cache)
        return x + self.drop(f.out), f


class ICRLTransformer(nn.Module):
    """AD / T2MIR-AD over interleaved (s, a, r) tokens; see the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Seeded weights, global RNGs left untouched: the weights are drawn on the CPU, so only the
        # CPU generator is seeded (torch.manual_seed would also reseed every GPU's generator).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(cfg.seed)
            self._build(cfg)

    def _build(self, cfg: ModelConfig) -> None:
        d = cfg.d_model
        self.embed_obs = nn.Linear(cfg.obs_dim, d)
        self.embed_act = nn.Linear(cfg.act_dim, d)
        self.embed_rew = nn.Linear(1, d)
        self.embed_t = nn.Embedding(cfg.horizon, d)
        blocks = []
        for i in range(cfg.n_layers):
            last = i == cfg.n_layers - 1
            moe = last and (cfg.token_moe or cfg.task_moe)
            blocks.append(Block(cfg, DualMoE(cfg) if moe else DenseFFN(d, cfg.ffn_mult * d)))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2 * cfg.act_dim)
        # Normalisation from the training data (set by the trainer, saved in the state dict).
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))
        self.register_buffer("rew_mean", torch.zeros(()))
        self.register_buffer("rew_std", torch.ones(()))

    # ----- embeddings -------------------------------------------------------------------------
    # The embedders check nothing (a check reads the data back to the host, once per call: per env
    # step in evaluation); validate a batch or an episode once with :meth:`check_inputs`.
    def check_inputs(self, obs: Tensor | None = None, act: Tensor | None = None, rew: Tensor | None = None,
                     t: Tensor | None = None) -> None:
        """Raise ``ValueError`` naming the input if steps are unusable: features per step
        (``obs (..., obs_dim)``, ``act (..., act_dim)``), leading shapes that disagree (``rew`` and
        ``t`` are ``obs``'s without its last dimension; ``t`` may broadcast), NaN or inf, timesteps
        that are not integers in ``[0, horizon)``. Any subset may be given; costs one host
        synchronisation for all of them."""
        lead: list[tuple[str, tuple[int, ...]]] = []
        for name, x, last in (("observations", obs, self.cfg.obs_dim), ("actions", act, self.cfg.act_dim)):
            if x is None:
                continue
            if x.dim() < 1 or x.shape[-1] != last:
                raise ValueError(f"{name} has {x.shape[-1] if x.dim() else 'no'} features, the model "
                                 f"expects {last} (shape (batch, steps, {last}))")
            lead.append((name, tuple(x.shape[:-1])))
        if rew is not None:
            lead.append(("rewards", tuple(rew.shape)))
        for (name_a, a), (name_b, b) in zip(lead, lead[1:]):
            if a != b:
                raise ValueError(f"{name_a} and {name_b} disagree on (batch, steps): {a} vs {b}")
        if t is not None:
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
            if lead:
                try:
                    shape = torch.broadcast_shapes(tuple(t.shape), lead[0][1])
                except RuntimeError:
                    shape = None
                if shape != lead[0][1]:
                    raise ValueError(f"timesteps of shape {tuple(t.shape)} do not broadcast to the "
                                     f"{lead[0][0]}' (batch, steps) {lead[0][1]}")
        named = [(n, x) for n, x in (("observations", obs), ("actions", act), ("rewards", rew))
                 if x is not None and x.numel()]
        flags = [torch.isfinite(x).all() for _, x in named]
        if t is not None and t.numel():
            flags += [t.min(), t.max()]
        if not flags:
            return
        values = torch.stack([f.to(torch.float64) for f in flags]).tolist()  # the one sync
        for (name, _), ok in zip(named, values):
            if not ok:
                raise ValueError(f"{name} contains NaN or inf")
        if t is not None and t.numel():
            lo, hi = int(values[-2]), int(values[-1])
            if lo < 0 or hi >= self.cfg.horizon:
                raise ValueError(f"timesteps must be in [0, {self.cfg.horizon}) (the model's horizon), "
                                 f"got [{lo}, {hi}]")

    def embed_state(self, obs: Tensor, t: Tensor) -> Tensor:
        return self.embed_obs((obs - self.obs_mean) / self.obs_std) + self.embed_t(t)

    def embed_action(self, act: Tensor, t: Tensor) -> Tensor:
        return self.embed_act(act) + self.embed_t(t)

    def embed_reward(self, rew: Tensor, t: Tensor) -> Tensor:
        return self.embed_rew(((rew - self.rew_mean) / self.rew_std).unsqueeze(-1)) + self.embed_t(t)

    def embed_steps(self, obs: Tensor, act: Tensor, rew: Tensor, t: Tensor) -> Tensor:
        """(B, S, ·) steps -> (B, 3S, d) tokens ordered s_0, a_0, r_0, s_1, ... (unchecked)."""
        tokens = torch.stack([self.embed_state(obs, t), self.embed_action(act, t),
                              self.embed_reward(rew, t)], dim=2)
        return tokens.flatten(1, 2)

    # ----- transformer ------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        n = len(self.blocks)
        return KVCache(keys=[None] * n, values=[None] * n)

    def run_tokens(self, tokens: Tensor, cache: KVCache | None = None) -> tuple[Tensor, FFNOutput]:
        """Hidden states (B, T, d) after the final layer norm, and the last block's FFN output."""
        x = tokens
        f: FFNOutput | None = None
        for i, block in enumerate(self.blocks):
            x, f = block(x, cache, i)
        if cache is not None:
            cache.length += tokens.shape[1]
        assert f is not None
        return self.ln_f(x), f

    def action_dist(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian mean (tanh, in the action box) and log-std from hidden states."""
        mean, log_std = self.head(hidden).chunk(2, dim=-1)
        log_std = log_std.clamp(self.cfg.min_log_std, self.cfg.max_log_std)
        return torch.tanh(mean), log_std

    def forward(self, obs: Tensor, act: Tensor, rew: Tensor, t: Tensor, check: bool = True
                ) -> tuple[Tensor, Tensor, FFNOutput]:
        """Whole-context pass: action mean and log-std at every state token, (B, S, act_dim).

        ``check``: validate the inputs first (:meth:`check_inputs`, one host synchronisation);
        pass ``False`` for data validated already (the training batches come from checked files)."""
        if check:
            self.check_inputs(obs, act, rew, t)
        hidden, f = self.run_tokens(self.embed_steps(obs, act, rew, t))
        mean, log_std = self.action_dist(hidden[:, 0::3])
        return mean, log_std, f

    def router_generators(self) -> dict[str, torch.Generator]:
        """The routers' own generators (their state belongs in a checkpoint for exact resume): the
        CPU one under the router's module name, one on each device it was moved to under
        ``"<name>@<device>"`` (e.g. ``blocks.2.ffn.token.router@cuda:0``)."""
        out: dict[str, torch.Generator] = {}
        for name, m in self.named_modules():
            if isinstance(m, NoisyTopKRouter):
                for device, gen in m.generators().items():
                    out[name if device == "cpu" else f"{name}@{device}"] = gen
        return out

    @property
    def task_router(self) -> NoisyTopKRouter | None:
        ffn = self.blocks[-1].ffn
        return ffn.task.router if isinstance(ffn, DualMoE) and ffn.task is not None else None


def gaussian_nll(mean: Tensor, log_std: Tensor, target: Tensor) -> Tensor:
    """Mean negative log-likelihood (up to a constant) of ``target`` under N(mean, exp(log_std))."""
    return (0.5 * ((target - mean) / log_std.exp()).pow(2) + log_std).mean()
