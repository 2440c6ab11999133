"""The tiny vision-language-action policy behind MergeVLA: backbone, action expert, LoRA experts.

Tokens, in this order (``T = P + L + 1``):

* **observation**: with ``vision=True`` a small CNN turns the uint8 image ``(B, H, W, 3)`` into
  ``P = (image_size / patch_size) ** 2`` patch tokens (a 3x3 stride-2 convolution, GELU, then a
  convolution with kernel = stride = ``patch_size / 2``) plus a learned 2-D position per patch;
  with ``vision=False`` one linear *state token* from the object state ``(B, state_dim)``;
* **instruction**: token embeddings ``(B, L)`` (id 0 is PAD) plus a learned position; PAD
  positions are masked out of every attention (no token ever attends to them);
* **proprio**: one linear token from ``(B, 4)`` (hand xyz, gripper).

The **backbone** is ``n_layers`` pre-norm transformer encoder layers; attention uses explicit
``nn.Linear`` q/k/v/out projections (PEFT's LoRA can wrap them, and the router can read the
value projection; ``nn.MultiheadAttention``'s fused ``in_proj`` is not an ``nn.Linear``), and
every layer's output is kept (:class:`Encoding`).

The **action expert** has ``n_layers`` blocks over ``chunk`` learned action queries. Block ``i``:

1. cross-attention: the queries attend to ``[backbone layer i's hidden states ; a proprio
   token]`` (the action expert's own linear embedding of the proprio, so each suite's expert owns
   it); the memory is layer-normed per block (``norm_mem``) before its key/value projections;
2. the **task stream** (``task_stream=True``): a second cross-attention from the queries to the
   instruction's token embeddings (word + position, before the backbone: the language of the task
   alone, layer-normed per block) plus one learned *null* key (an all-PAD instruction stays
   defined); its output is scaled by one scalar gate per block,
   ``sigmoid(task_gate)``. The issue's "gate initialised at 0" is read as the gate **parameter**
   initialised at ``task_gate_init = 0.0``, i.e. the stream starts half open (sigmoid = 0.5) with
   the largest gradient through the gate; ``task_gate_init=-6`` starts it nearly closed (0.0025);
3. an FFN.

There is **no self-attention among action tokens**: each query's output depends on its own
query and the memory only (a test checks it). A final LayerNorm and a linear layer give the chunk
``(B, chunk, action_dim)`` through ``tanh``. The *expert head* is the last block, the final norm
and the output layer (:meth:`TinyVLA.expert_head_prefixes`); the queries, the proprio embedding,
the null task key and blocks ``0 .. n_layers-2`` are the *shared* action-expert part.

``action_head="self_attention"`` is the ablation of a standard VLA head: every block attends to the
backbone's **last** hidden states and the proprio token *together with the action tokens
themselves* (keys/values = ``[memory ; action tokens]``), under the same module names, so the
merging code treats both variants alike.

Training signals: :meth:`TinyVLA.action_loss` is the L1 loss on the chunk (as parallel-decoding
chunk policies use: robust to the odd outlying demonstration step, and the tanh output is
bounded); :meth:`TinyVLA.auxiliary_loss` is the MSE of small heads on the mean of the backbone's
final (normed) valid tokens, e.g. hand / object / goal positions, to pre-train a base on
perception and language without the suites' skills. Execution: :class:`ChunkExecutor`, receding
horizon by default (the whole chunk executed, one forward pass per chunk), ACT-style temporal
ensembling as the option.

Experts: :func:`add_lora` wraps the backbone's linear layers with PEFT LoRA in place and leaves
only the LoRA weights and the action expert trainable (:func:`expert_trainable_parameters`);
:func:`fold_lora` merges the adapters into the weights and returns a state dict with the base's
keys. Inputs are used as given (no normalisation buffers, so every expert's state dict holds
weights only): Meta-World positions are O(1) already.

>>> cfg = VLAConfig(image_size=16, patch_size=8, d_model=16, n_layers=2, n_heads=2, chunk=3)
>>> model = TinyVLA(cfg)
>>> obs = {"image": torch.zeros(2, 16, 16, 3, dtype=torch.uint8),
...        "proprio": torch.zeros(2, 4), "instruction": torch.tensor([[5, 6, 0], [7, 0, 0]])}
>>> model.act(obs).shape
torch.Size([2, 3, 4])
>>> model.expert_head_prefixes()
('action_expert.blocks.1.', 'action_expert.norm.', 'action_expert.out.')
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTION_HEADS",
    "ChunkExecutor",
    "Encoding",
    "LORA_MODULES",
    "LORA_TARGETS",
    "TinyVLA",
    "VLAConfig",
    "add_lora",
    "eva_components",
    "expert_head_prefixes",
    "expert_trainable_parameters",
    "fold_lora",
    "has_lora",
    "lora_module_names",
    "shared_block_value_projection",
    "spatial_softmax",
]

ACTION_HEADS = ("cross_attention", "self_attention")

# add_lora targets: full names (re.fullmatch, as PEFT applies a string target_modules) of the
# backbone's nn.Linear layers.
_ATTENTION_MODULES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj")
# the linear modules of one backbone layer that each LoRA target wraps
LORA_MODULES: dict[str, tuple[str, ...]] = {
    "backbone": (*_ATTENTION_MODULES, "ffn.fc1", "ffn.fc2"),
    "backbone_attention": _ATTENTION_MODULES,
}
# PEFT's target_modules: those modules in every backbone layer
LORA_TARGETS: dict[str, str] = {
    target: r"backbone\.layers\.\d+\.(" + "|".join(re.escape(m) for m in modules) + ")"
    for target, modules in LORA_MODULES.items()
}


def lora_module_names(target: str) -> tuple[str, ...]:
    """The modules of one backbone layer that LoRA ``target`` wraps.

    >>> lora_module_names("backbone_attention")
    ('attn.q_proj', 'attn.k_proj', 'attn.v_proj', 'attn.out_proj')
    """
    if target not in LORA_MODULES:
        raise ValueError(f"unknown LoRA target {target!r}; choose one of {list(LORA_MODULES)}")
    return LORA_MODULES[target]

Obs = Mapping[str, Tensor]


def _default_aux_targets() -> dict[str, int]:
    return {"hand_pos": 3, "object_pos": 3, "goal_pos": 3}


@dataclass
class VLAConfig:
    """Sizes of :class:`TinyVLA`; every field is checked on construction (the error names it).

    >>> VLAConfig(d_model=30, n_heads=4)
    Traceback (most recent call last):
    ...
    ValueError: VLAConfig.d_model=30 is not divisible by VLAConfig.n_heads=4; choose d_model as a multiple of n_heads
    """

    vision: bool = True  # True: "image" uint8 (B, H, W, 3); False: "state" float (B, state_dim)
    image_size: int = 64  # square images, image_size x image_size
    patch_size: int = 8  # even; image_size % patch_size == 0; (image_size / patch_size)**2 tokens
    # vision=False: Meta-World's 39-d observation less the current hand xyz and gripper (the
    # proprio); set it from the environment's observation spec.
    state_dim: int = 35
    proprio_dim: int = 4
    vocab_size: int = 256  # instruction token ids in [0, vocab_size); 0 is PAD
    max_instruction_len: int = 16
    d_model: int = 64
    n_layers: int = 3  # backbone layers = action-expert blocks; >= 2 (one shared block at least)
    n_heads: int = 4
    ffn_mult: int = 4  # FFN hidden width = ffn_mult * d_model
    chunk: int = 4  # C: actions predicted per query
    action_dim: int = 4
    action_head: str = "cross_attention"  # or "self_attention" (the ablation)
    task_stream: bool = True
    task_gate_init: float = 0.0  # the gate *parameter*; the stream's weight is sigmoid(this)
    dropout: float = 0.0
    # vision: K > 0 adds one token of K spatial-softmax keypoints (the expected image x, y of each
    # of K learned feature maps, as robomimic's and Levine et al.'s visuomotor encoders do): the
    # image counterpart of the object-state token. 0: patch tokens only
    keypoints: int = 0
    aux_targets: dict[str, int] = field(default_factory=_default_aux_targets)  # name -> dim
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def positive(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"VLAConfig.{name} must be an integer >= {minimum}, got {value!r}")

        for name in ("image_size", "patch_size", "state_dim", "proprio_dim", "max_instruction_len",
                     "d_model", "n_heads", "ffn_mult", "chunk", "action_dim"):
            positive(name)
        positive("vocab_size", 2)
        if isinstance(self.keypoints, bool) or not isinstance(self.keypoints, int) or self.keypoints < 0:
            raise ValueError(f"VLAConfig.keypoints must be an integer >= 0, got {self.keypoints!r}")
        positive("n_layers", 2)
        if self.patch_size % 2:
            raise ValueError(f"VLAConfig.patch_size must be even (the CNN halves the image first), "
                             f"got {self.patch_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"VLAConfig.image_size={self.image_size} is not a multiple of "
                             f"VLAConfig.patch_size={self.patch_size}; change either")
        if self.d_model % self.n_heads:
            raise ValueError(f"VLAConfig.d_model={self.d_model} is not divisible by "
                             f"VLAConfig.n_heads={self.n_heads}; choose d_model as a multiple of n_heads")
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"VLAConfig.action_head={self.action_head!r} is unknown; choose one of "
                             f"{list(ACTION_HEADS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VLAConfig.dropout must be in [0, 1), got {self.dropout}")
        if not math.isfinite(self.task_gate_init):
            raise ValueError(f"VLAConfig.task_gate_init must be finite, got {self.task_gate_init}")
        for name, dim in dict(self.aux_targets).items():
            if not str(name).isidentifier():
                raise ValueError(f"VLAConfig.aux_targets name {name!r} must be a Python identifier")
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise ValueError(f"VLAConfig.aux_targets[{name!r}] must be an integer >= 1, got {dim!r}")

    @property
    def n_obs_tokens(self) -> int:
        if not self.vision:
            return 1
        return (self.image_size // self.patch_size) ** 2 + (1 if self.keypoints else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Encoding:
    """The backbone's view of a batch.

    ``hidden``: every layer's output ``(B, T, d)`` (``n_layers`` entries, residual stream before
    any norm); ``valid``: ``(B, T)`` bool, False at PAD positions; ``words`` / ``words_valid``:
    the instruction's token embeddings ``(B, L, d)`` (word + position, before the backbone) and
    their mask; ``proprio``: the raw proprio ``(B, proprio_dim)`` for the action expert."""

    hidden: list[Tensor]
    valid: Tensor
    words: Tensor
    words_valid: Tensor
    proprio: Tensor


# ----- building blocks ------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with explicit ``nn.Linear`` projections (LoRA- and router-friendly)."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, mem: Tensor, mem_valid: Tensor | None = None) -> Tensor:
        """``x`` (B, t, d) attends to ``mem`` (B, s, d); ``mem_valid`` (B, s) bool, False = ignore."""
        b, t, d = x.shape
        s, h = mem.shape[1], self.n_heads
        q = self.q_proj(x).view(b, t, h, d // h).transpose(1, 2)
        k = self.k_proj(mem).view(b, s, h, d // h).transpose(1, 2)
        v = self.v_proj(mem).view(b, s, h, d // h).transpose(1, 2)
        mask = None if mem_valid is None else mem_valid[:, None, None, :]
        # No dropout on the attention matrix (on a CPU it forces SDPA's slow math kernel).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FFN(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with a key-padding mask."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, cfg.n_heads)
        self.ffn = FFN(d, cfg.ffn_mult * d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, valid))
        return x + self.drop(self.ffn(self.ln2(x)))


class Backbone(nn.Module):
    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)  # for the auxiliary heads only

    def forward(self, x: Tensor, valid: Tensor) -> list[Tensor]:
        hidden = []
        for layer in self.layers:
            x = layer(x, valid)
            hidden.append(x)
        return hidden


class VisionEncoder(nn.Module):
    """uint8 (B, H, W, 3) -> (B, P, d): 3x3 stride-2 conv, GELU, patch conv, 2-D positions; with
    ``cfg.keypoints`` = K > 0 one more token: two 3x3 convs on the half-resolution features give
    K maps, a spatial softmax turns each into its expected (x, y) in [-1, 1], and a linear layer
    embeds the 2K coordinates."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        d, k, c = cfg.d_model, cfg.patch_size // 2, max(cfg.d_model // 2, 8)
        self.conv1 = nn.Conv2d(3, c, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, d, kernel_size=k, stride=k)
        if cfg.keypoints:
            self.kp_conv1 = nn.Conv2d(c, c, kernel_size=3, padding=1)
            self.kp_conv2 = nn.Conv2d(c, cfg.keypoints, kernel_size=3, padding=1)
            self.kp_embed = nn.Linear(2 * cfg.keypoints, d)
        self.pos = nn.Parameter(0.02 * torch.randn(cfg.n_obs_tokens, d))

    def forward(self, image: Tensor) -> Tensor:
        x = image.permute(0, 3, 1, 2).to(self.pos.dtype) / 255.0 - 0.5
        h = F.gelu(self.conv1(x))
        tokens = self.conv2(h).flatten(2).transpose(1, 2)
        if hasattr(self, "kp_conv1"):
            tokens = torch.cat([tokens, self.kp_embed(self.keypoints(h)).unsqueeze(1)], dim=1)
        return tokens + self.pos

    def keypoints(self, h: Tensor) -> Tensor:
        """(B, 2K): the K keypoint maps' expected x, then y (:func:`spatial_softmax`)."""
        return spatial_softmax(self.kp_conv2(F.gelu(self.kp_conv1(h))))


def spatial_softmax(maps: Tensor) -> Tensor:
    """``(B, K, H, W)`` maps -> ``(B, 2K)``: per map, the expected column then row coordinate
    under the softmax over its pixels, in [-1, 1] from the first pixel's centre to the last's
    (all K x's, then all K y's).

    >>> maps = torch.full((1, 1, 5, 5), -1e4)
    >>> maps[0, 0, 1, 4] = 0.0  # row 1, column 4
    >>> spatial_softmax(maps).tolist()
    [[1.0, -0.5]]
    """
    b, n, hh, ww = maps.shape
    p = torch.softmax(maps.flatten(2), dim=-1).view(b, n, hh, ww)
    ys = torch.linspace(-1.0, 1.0, hh, dtype=p.dtype, device=p.device)
    xs = torch.linspace(-1.0, 1.0, ww, dtype=p.dtype, device=p.device)
    return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=1)


class Tokenizer(nn.Module):
    """Observation, instruction and proprio tokens (see the module docstring)."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        d = cfg.d_model
        if cfg.vision:
            self.vision = VisionEncoder(cfg)
        else:
            self.state = nn.Linear(cfg.state_dim, d)
        self.word = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.word_pos = nn.Parameter(0.02 * torch.randn(cfg.max_instruction_len, d))
        self.proprio = nn.Linear(cfg.proprio_dim, d)
        nn.init.normal_(self.word.weight, std=0.02)
        with torch.no_grad():
            self.word.weight[0].zero_()

    def words(self, instruction: Tensor) -> tuple[Tensor, Tensor]:
        return self.word(instruction) + self.word_pos[: instruction.shape[1]], instruction != 0

    def forward(self, obs: Obs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Tokens (B, T, d), their validity (B, T), the words (B, L, d) and theirs (B, L)."""
        if hasattr(self, "vision"):
            first = self.vision(obs["image"])
        else:
            first = self.state(obs["state"]).unsqueeze(1)
        words, words_valid = self.words(obs["instruction"])
        prop = self.proprio(obs["proprio"]).unsqueeze(1)
        b = first.shape[0]
        ones = words_valid.new_ones(b, 1)
        valid = torch.cat([ones.expand(b, first.shape[1]), words_valid, ones], dim=1)
        return torch.cat([first, words, prop], dim=1), valid, words, words_valid


class ActionBlock(nn.Module):
    """One action-expert block: cross-attention, gated task stream, FFN (module docstring)."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attend = cfg.action_head == "self_attention"
        self.norm_q, self.norm_mem, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.n_heads)
        if cfg.task_stream:
            self.norm_task, self.norm_task_mem = nn.LayerNorm(d), nn.LayerNorm(d)
            self.task_attn = Attention(d, cfg.n_heads)
            self.task_gate = nn.Parameter(torch.tensor(float(cfg.task_gate_init)))
        self.ffn = FFN(d, cfg.ffn_mult * d)
        self.drop = nn.Dropout(cfg.dropout)

    def memory(self, mem: Tensor) -> Tensor:
        """The normed memory: the input of this block's key and value projections."""
        return self.norm_mem(mem)

    def forward(self, x: Tensor, mem: Tensor, mem_valid: Tensor,
                task: Tensor | None, task_valid: Tensor | None) -> Tensor:
        q = self.norm_q(x)
        kv, kv_valid = self.memory(mem), mem_valid
        if self.self_attend:  # the ablation: action tokens attend to each other as well
            kv = torch.cat([kv, q], dim=1)
            kv_valid = torch.cat([mem_valid, mem_valid.new_ones(q.shape[:2])], dim=1)
        x = x + self.drop(self.cross_attn(q, kv, kv_valid))
        if task is not None:
            gate = torch.sigmoid(self.task_gate)
            task_mem = self.norm_task_mem(task)
            x = x + gate * self.drop(self.task_attn(self.norm_task(x), task_mem, task_valid))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class ActionExpert(nn.Module):
    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cross = cfg.action_head == "cross_attention"
        self.queries = nn.Parameter(0.02 * torch.randn(cfg.chunk, d))
        self.proprio = nn.Linear(cfg.proprio_dim, d)
        if cfg.task_stream:
            self.task_null = nn.Parameter(0.02 * torch.randn(1, d))
        self.blocks = nn.ModuleList(ActionBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.action_dim)

    def block_memory(self, enc: Encoding, i: int, prop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Block ``i``'s memory before its norm, ``[hidden ; proprio token]``, and its validity."""
        h = enc.hidden[i] if self.cross else enc.hidden[-1]
        if prop is None:
            prop = self.proprio(enc.proprio).unsqueeze(1)
        return (torch.cat([h, prop], dim=1),
                torch.cat([enc.valid, enc.valid.new_ones(h.shape[0], 1)], dim=1))

    def forward(self, enc: Encoding) -> Tensor:
        b = enc.proprio.shape[0]
        task = task_valid = None
        if hasattr(self, "task_null"):
            task = torch.cat([self.task_null.expand(b, 1, -1), enc.words], dim=1)
            task_valid = torch.cat([enc.words_valid.new_ones(b, 1), enc.words_valid], dim=1)
        x = self.queries.expand(b, -1, -1)
        prop = self.proprio(enc.proprio).unsqueeze(1)
        for i, block in enumerate(self.blocks):
            mem, mem_valid = self.block_memory(enc, i, prop)
            x = block(x, mem, mem_valid, task, task_valid)
        return torch.tanh(self.out(self.norm(x)))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was)


# ----- the policy -----------------------------------------------------------------------------
class TinyVLA(nn.Module):
    """Backbone + action expert + auxiliary heads; see the module docstring.

    >>> m = TinyVLA(VLAConfig(vision=False, state_dim=5, d_model=16, n_heads=2, n_layers=2))
    >>> obs = {"state": torch.zeros(3, 5), "proprio": torch.zeros(3, 4),
    ...        "instruction": torch.ones(3, 4, dtype=torch.long)}
    >>> loss = m.action_loss(obs, torch.zeros(3, 4, 4))
    >>> m.hidden_into_last_shared_block(obs).shape  # 1 state + 4 words + proprio, + proprio key
    torch.Size([3, 7, 16])
    """

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left untouched
            torch.manual_seed(cfg.seed)
            self.embed = Tokenizer(cfg)
            self.backbone = Backbone(cfg)
            self.aux = nn.ModuleDict({name: nn.Sequential(
                nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, dim))
                for name, dim in dict(cfg.aux_targets).items()})
            self.action_expert = ActionExpert(cfg)

    # ----- inputs ---------------------------------------------------------------------------
    def check_obs(self, obs: Obs) -> dict[str, Tensor]:
        """Validate a batch against the contract and move it to the model's device.

        Raises ``ValueError`` / ``TypeError`` naming the problem before anything is computed."""
        cfg = self.cfg
        if not isinstance(obs, Mapping):
            raise TypeError(f"obs must be a dict of tensors, got {type(obs).__name__}")
        first = "image" if cfg.vision else "state"
        missing = [k for k in (first, "proprio", "instruction") if k not in obs]
        if missing:
            other = "state" if cfg.vision else "image"
            hint = (f" (the model has vision={cfg.vision}: it reads {first!r}, not {other!r}; "
                    f"set VLAConfig.vision={not cfg.vision} for {other!r} batches)"
                    if other in obs else "")
            raise ValueError(f"obs lacks {missing}{hint}; it has {sorted(obs)}")
        for k in (first, "proprio", "instruction"):
            if not isinstance(obs[k], Tensor):
                raise TypeError(f"obs[{k!r}] must be a torch.Tensor, got {type(obs[k]).__name__}")
        if cfg.vision:
            img = obs["image"]
            if img.dtype != torch.uint8:
                raise TypeError(f"obs['image'] must be uint8 pixels 0..255 (B, H, W, 3), got "
                                f"{img.dtype}; pass the raw camera image")
            if img.dim() != 4 or img.shape[-1] != 3:
                raise ValueError(f"obs['image'] must be (B, H, W, 3) channels-last, got "
                                 f"{tuple(img.shape)}; add a batch dimension (x[None]) or permute")
            if img.shape[1:3] != (cfg.image_size, cfg.image_size):
                raise ValueError(f"obs['image'] is {img.shape[1]}x{img.shape[2]}, the model expects "
                                 f"{cfg.image_size}x{cfg.image_size} (VLAConfig.image_size); render "
                                 f"at that size or build the model with image_size={img.shape[1]}")
        else:
            self._check_float(obs, "state", cfg.state_dim, "VLAConfig.state_dim")
        self._check_float(obs, "proprio", cfg.proprio_dim, "VLAConfig.proprio_dim")
        ins = obs["instruction"]
        if ins.dtype != torch.int64:
            raise TypeError(f"obs['instruction'] must be int64 token ids (B, L), got {ins.dtype}")
        if ins.dim() != 2:
            raise ValueError(f"obs['instruction'] must be (B, L), got {tuple(ins.shape)}")
        if ins.shape[1] > cfg.max_instruction_len:
            raise ValueError(f"obs['instruction'] has {ins.shape[1]} tokens, more than "
                             f"VLAConfig.max_instruction_len={cfg.max_instruction_len}; trim the "
                             f"padding or raise max_instruction_len")
        if ins.numel() and (int(ins.min()) < 0 or int(ins.max()) >= cfg.vocab_size):
            raise ValueError(f"obs['instruction'] ids must be in [0, {cfg.vocab_size}) "
                             f"(VLAConfig.vocab_size), got [{int(ins.min())}, {int(ins.max())}]")
        sizes = {k: obs[k].shape[0] for k in (first, "proprio", "instruction")}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise ValueError(f"obs tensors must share a non-empty batch size, got {sizes}")
        ref = self.action_expert.queries
        return {k: obs[k].to(ref.device, ref.dtype) if obs[k].is_floating_point() else obs[k].to(ref.device)
                for k in (first, "proprio", "instruction")}

    @staticmethod
    def _check_float(obs: Obs, key: str, dim: int, field_name: str) -> None:
        x = obs[key]
        if not x.is_floating_point():
            raise TypeError(f"obs[{key!r}] must be a float tensor (B, {dim}), got {x.dtype}")
        if x.dim() != 2 or x.shape[1] != dim:
            raise ValueError(f"obs[{key!r}] must be (B, {dim}) ({field_name}), got {tuple(x.shape)}"
                             + ("; add a batch dimension (x[None])" if x.dim() == 1 else ""))
        if not torch.isfinite(x).all():
            raise ValueError(f"obs[{key!r}] contains NaN or inf")

    # ----- forward passes -------------------------------------------------------------------
    def encode(self, obs: Obs) -> Encoding:
        """Check the batch and run the backbone (every layer's hidden states)."""
        obs = self.check_obs(obs)
        tokens, valid, words, words_valid = self.embed(obs)
        dtype = tokens.dtype
        return Encoding(self.backbone(tokens, valid), valid, words, words_valid,
                        obs["proprio"].to(dtype))

    def forward(self, obs: Obs) -> Tensor:
        """The action chunk ``(B, chunk, action_dim)`` in [-1, 1]."""
        return self.action_expert(self.encode(obs))

    @torch.no_grad()
    def act(self, obs: Obs) -> Tensor:
        """The chunk for execution: eval mode (no dropout), no gradients; the mode is restored."""
        with _eval_mode(self):
            return self(obs)

    def action_loss(self, obs: Obs, action_chunk: Tensor) -> Tensor:
        """Mean L1 error of the predicted chunk against ``action_chunk`` ``(B, chunk, action_dim)``."""
        cfg = self.cfg
        want = (cfg.chunk, cfg.action_dim)
        if action_chunk.dim() != 3 or tuple(action_chunk.shape[1:]) != want:
            raise ValueError(f"action_chunk must be (B, {cfg.chunk}, {cfg.action_dim}) "
                             f"(VLAConfig.chunk, action_dim), got {tuple(action_chunk.shape)}")
        if not action_chunk.is_floating_point() or not torch.isfinite(action_chunk).all():
            raise ValueError("action_chunk must be finite floats")
        if action_chunk.abs().max() > 1.0 + 1e-6:
            raise ValueError(f"action_chunk leaves [-1, 1] (max |a| = {float(action_chunk.abs().max()):.3g}); "
                             "clip the demonstrations' actions as the environment does")
        pred = self(obs)
        return F.l1_loss(pred, action_chunk.to(pred))

    def auxiliary_predictions(self, obs: Obs) -> dict[str, Tensor]:
        """Every auxiliary head's prediction ``(B, dim)`` from the mean of the backbone's final
        (normed) valid tokens."""
        enc = self.encode(obs)
        h = self.backbone.norm(enc.hidden[-1])
        w = enc.valid.to(h.dtype).unsqueeze(-1)
        pooled = (h * w).sum(1) / w.sum(1)
        return {name: head(pooled) for name, head in self.aux.items()}

    def auxiliary_loss(self, obs: Obs, targets: Mapping[str, Tensor]) -> Tensor:
        """Sum over the given targets of the MSE of their auxiliary heads (``VLAConfig.aux_targets``);
        targets not given are not trained."""
        dims = dict(self.cfg.aux_targets)
        if not targets:
            raise ValueError(f"no auxiliary targets given; pass some of {sorted(dims)}")
        unknown = sorted(set(targets) - set(dims))
        if unknown:
            raise ValueError(f"auxiliary targets {unknown} do not match the heads {sorted(dims)} "
                             f"(VLAConfig.aux_targets); add them there")
        for name, y in targets.items():
            if y.dim() != 2 or y.shape[1] != dims[name] or not y.is_floating_point():
                raise ValueError(f"target {name!r} must be float (B, {dims[name]}), got "
                                 f"{y.dtype} {tuple(y.shape)}")
            if not torch.isfinite(y).all():
                raise ValueError(f"target {name!r} contains NaN or inf")
        pred = self.auxiliary_predictions(obs)
        return sum((F.mse_loss(pred[k], y.to(pred[k])) for k, y in targets.items()),
                   start=torch.zeros((), device=self.action_expert.queries.device))

    def auxiliary_head_prefix(self) -> str:
        """The state-dict key prefix of the auxiliary (position) heads."""
        return "aux."

    # ----- what merging and the router code against -----------------------------------------
    def expert_head_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the per-suite expert head: the last action-expert block, the
        final norm and the output layer. Every other ``action_expert.`` key is shared
        (:meth:`shared_action_expert_prefixes`)."""
        return expert_head_prefixes(self.cfg)

    def shared_action_expert_prefixes(self) -> tuple[str, ...]:
        """Key prefixes of the shared action-expert part: queries, proprio embedding, null task key
        and blocks ``0 .. n_layers-2``."""
        extra = ("action_expert.task_null",) if self.cfg.task_stream else ()
        return ("action_expert.queries", "action_expert.proprio.", *extra,
                *(f"action_expert.blocks.{i}." for i in range(self.cfg.n_layers - 1)))

    def vision_encoder_prefix(self) -> str:
        """The state-dict key prefix of the vision encoder (what ``expert.train_vision`` trains)."""
        return "embed.vision."

    def keypoint_branch_prefix(self) -> str:
        """The key prefix of the vision encoder's keypoint branch (``cfg.keypoints`` > 0): its two
        convolutions and the coordinates' embedding; the rest of the encoder makes the patch tokens."""
        return "embed.vision.kp_"

    def is_expert_head_key(self, key: str) -> bool:
        return key.startswith(self.expert_head_prefixes())

    def value_projection_key(self) -> str:
        """State-dict key of the last shared block's cross-attention value projection weight."""
        return f"action_expert.blocks.{self.cfg.n_layers - 2}.cross_attn.v_proj.weight"

    def shared_block_value_projection(self) -> Tensor:
        """That weight, ``(d_out, d_in)`` (detached); the router uses its top right singular
        vectors, which live in the space of :meth:`hidden_into_last_shared_block`'s rows."""
        return self.action_expert.blocks[self.cfg.n_layers - 2].cross_attn.v_proj.weight.detach()

    def token_valid_mask(self, obs: Obs) -> Tensor:
        """``(B, T)`` bool: which of the backbone's tokens are real (False at instruction PAD)."""
        ins = self.check_obs(obs)["instruction"]
        b = ins.shape[0]
        obs_tokens = ins.new_ones(b, self.cfg.n_obs_tokens, dtype=torch.bool)
        return torch.cat([obs_tokens, ins != 0, ins.new_ones(b, 1, dtype=torch.bool)], dim=1)

    def instruction_token_mask(self, obs: Obs) -> Tensor:
        """``(B, T)`` bool over the backbone's tokens: True at the instruction's real words only."""
        valid = self.token_valid_mask(obs)
        keep = torch.zeros_like(valid)
        n = self.cfg.n_obs_tokens
        keep[:, n:-1] = valid[:, n:-1]
        return keep

    def memory_valid_mask(self, obs: Obs) -> Tensor:
        """``(B, T + 1)`` bool: which rows of :meth:`hidden_into_last_shared_block` are real."""
        valid = self.token_valid_mask(obs)
        return torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)  # + the expert's proprio

    def hidden_into_last_shared_block(self, obs: Obs) -> Tensor:
        """What the last shared block's value projection reads: ``(B, T + 1, d)``, the block's
        normed memory ``norm_mem([backbone layer n_layers-2 ; proprio token])`` (in the
        self-attention ablation the backbone's last layer, and the block's values also take the
        action tokens, not included here). Rows at PAD positions, which no query attends to, are
        zero (:meth:`memory_valid_mask` says which). Eval mode, no gradients."""
        with _eval_mode(self):
            i = self.cfg.n_layers - 2
            enc = self.encode(obs)
            mem, valid = self.action_expert.block_memory(enc, i)
            return self.action_expert.blocks[i].memory(mem) * valid.unsqueeze(-1).to(mem.dtype)

    def backbone_value_key(self, layer: int) -> str:
        """State-dict key of backbone layer ``layer``'s attention value projection weight (its
        LoRA task vector is the router's basis with ``router.source=lora_task_vector``)."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer must be an index in [0, n_layers={self.cfg.n_layers}), got {layer!r}")
        return f"backbone.layers.{layer}.attn.v_proj.weight"

    def hidden_into_backbone_layer(self, obs: Obs, layer: int) -> Tensor:
        """What backbone layer ``layer``'s q/k/v projections read, ``(B, T, d)``: its first
        LayerNorm of the residual stream entering the layer; PAD rows are zero
        (:meth:`token_valid_mask` says which rows are real). Eval mode, no gradients."""
        self.backbone_value_key(layer)  # checks the index
        with _eval_mode(self):
            obs = self.check_obs(obs)
            x, valid, _, _ = self.embed(obs)
            for block in self.backbone.layers[:layer]:
                x = block(x, valid)
            return self.backbone.layers[layer].ln1(x) * valid.unsqueeze(-1).to(x.dtype)


def expert_head_prefixes(model_or_cfg: TinyVLA | VLAConfig) -> tuple[str, ...]:
    """The expert head's state-dict key prefixes (see :meth:`TinyVLA.expert_head_prefixes`).

    >>> expert_head_prefixes(VLAConfig(n_layers=3))
    ('action_expert.blocks.2.', 'action_expert.norm.', 'action_expert.out.')
    """
    cfg = model_or_cfg.cfg if isinstance(model_or_cfg, TinyVLA) else model_or_cfg
    return (f"action_expert.blocks.{cfg.n_layers - 1}.", "action_expert.norm.", "action_expert.out.")


def shared_block_value_projection(model: TinyVLA) -> Tensor:
    """The last shared action-expert block's value projection weight (``(d, d)``, detached).

    >>> shared_block_value_projection(TinyVLA(VLAConfig(d_model=16, n_heads=2))).shape
    torch.Size([16, 16])
    """
    return model.shared_block_value_projection()


# ----- LoRA experts (PEFT) --------------------------------------------------------------------
def _peft() -> Any:
    try:
        import peft
    except ImportError as e:  # an optional extra
        raise ImportError("LoRA experts need PEFT: pip install 'streammoe[vla]' (or peft>=0.11)") from e
    return peft


def _lora_layer_type() -> type | None:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds PEFT LoRA layers (unfolded)."""
    lora = _lora_layer_type()
    return lora is not None and any(isinstance(m, lora) for m in model.modules())


def _check_lora_request(model: TinyVLA, rank: int, target: str, caller: str, has_lora_error: str) -> None:
    """The checks :func:`eva_components` and :func:`add_lora` share (before anything changes)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if target not in LORA_TARGETS:
        raise ValueError(f"unknown LoRA target {target!r}; choose one of {sorted(LORA_TARGETS)}")
    if not isinstance(model, TinyVLA):
        raise TypeError(f"{caller} expects a TinyVLA, got {type(model).__name__}")
    if has_lora(model):
        raise ValueError(has_lora_error)


def eva_components(model: TinyVLA, batches: Iterable[Obs], rank: int = 8, target: str = "backbone",
                   max_batches: int = 500) -> dict[str, Tensor]:
    """PEFT's EVA initialisation (Paischer et al., 2024: "explained variance adaptation"): for
    every layer :func:`add_lora` wraps, the top-``rank`` principal directions of that layer's
    inputs over ``batches`` (incremental PCA until they converge; PAD tokens left out), as the
    ``(rank, d_in)`` rows its LoRA ``A`` starts from (``add_lora(..., eva=...)``). No rank
    redistribution (``rho=1``): every layer keeps ``rank``. ``model`` is the model before LoRA
    (the base); it is not changed. ``batches``: observation batches (e.g. the suite's frames);
    they are cycled, and more than ``max_batches`` forward passes without convergence is an error.

    Why it matters here: PEFT's default ``A`` is random and hardly moves in a short fine-tune, so
    the row space of the LoRA task vector ``B A`` (what the test-time router reads) is random; with
    EVA it is the subspace of the suite's own inputs.

    >>> torch.manual_seed(0) is not None
    True
    >>> m = TinyVLA(VLAConfig(vision=False, state_dim=5, d_model=16, n_heads=2, n_layers=2))
    >>> obs = {"state": torch.randn(32, 5), "proprio": torch.randn(32, 4),
    ...        "instruction": torch.randint(1, 9, (32, 3))}
    >>> comps = eva_components(m, [obs], rank=2)
    >>> sorted(comps)[:2], tuple(comps["backbone.layers.0.attn.v_proj"].shape)
    (['backbone.layers.0.attn.k_proj', 'backbone.layers.0.attn.out_proj'], (2, 16))
    """
    _check_lora_request(model, rank, target, "eva_components",
                        "the model already has LoRA layers: compute EVA components on the base")
    peft = _peft()
    from peft.tuners.lora.eva import get_eva_state_dict

    cached = list(batches)
    if not cached:
        raise ValueError("eva_components needs at least one batch of observations")

    class Capped:  # PEFT cycles its loader until every layer converged: stop it at max_batches
        def __len__(self) -> int:
            return len(cached)

        def __iter__(self) -> Iterator[Obs]:
            for i in range(max_batches):
                yield cached[i % len(cached)]
            raise RuntimeError(f"EVA's principal directions did not converge within {max_batches} "
                               "batches: pass more (or larger) batches, or a larger max_batches")

    config = peft.LoraConfig(r=rank, target_modules=LORA_TARGETS[target], init_lora_weights="eva",
                             eva_config=peft.EvaConfig(rho=1.0))
    was = model.training
    model.eval()
    try:
        comps = get_eva_state_dict(
            model, Capped(), peft_config=config, forward_fn=lambda m, obs: m.encode(obs),
            prepare_model_inputs_fn=lambda obs, _cfg: model.token_valid_mask(obs),
            prepare_layer_inputs_fn=lambda layer_input, valid, _name: layer_input[0][valid],
            show_progress_bar=False)
    finally:
        model.train(was)
    dtype = next(model.parameters()).dtype
    return {name: c.detach().cpu().to(dtype).clone() for name, c in comps.items()}


def add_lora(model: TinyVLA, rank: int = 8, alpha: float = 16.0, target: str = "backbone",
             dropout: float = 0.0, eva: Mapping[str, Tensor] | None = None) -> TinyVLA:
    """Wrap the backbone's ``nn.Linear`` layers with PEFT LoRA, in place, and return ``model``.

    ``target``: ``"backbone"`` (attention q/k/v/out and FFN fc1/fc2 of every layer) or
    ``"backbone_attention"`` (q/k/v/out only). PEFT's ``inject_adapter_in_model`` does the wrapping
    (``LoraConfig(target_modules=<full-name regex>)``), so the model stays a :class:`TinyVLA`; its
    LoRA B matrices start at zero (the outputs are unchanged). ``A`` starts at PEFT's default
    (random), or with ``eva`` (from :func:`eva_components`: one ``(rank, d_in)`` tensor per
    wrapped layer, or for some of them, the rest keeping the default) at the principal
    directions of each layer's inputs. Afterwards only the LoRA weights and
    the action expert are trainable (:func:`expert_trainable_parameters`). Undo with
    :func:`fold_lora`.

    >>> m = add_lora(TinyVLA(VLAConfig(d_model=16, n_heads=2, n_layers=2)), rank=2)
    >>> sorted({n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad})
    ['action_expert', 'backbone']
    """
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    _check_lora_request(model, rank, target, "add_lora",
                        "the model already has LoRA layers; fold_lora(model) first")
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=LORA_TARGETS[target], bias="none")
    if eva is not None:  # checked before the model changes
        wrapped = [n for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and re.fullmatch(LORA_TARGETS[target], n)]
        unknown = sorted(set(eva) - set(wrapped))
        if unknown:
            raise ValueError(f"eva names layers LoRA does not wrap with target={target!r}: {unknown}; "
                             f"compute them with eva_components(model, batches, rank={rank}, "
                             f"target={target!r})")
        wrapped = [n for n in wrapped if n in eva]  # the others keep PEFT's default A
        for n in wrapped:
            c = eva[n]
            d_in = model.get_submodule(n).in_features
            if not isinstance(c, Tensor) or tuple(c.shape) != (rank, d_in) or not bool(torch.isfinite(c).all()):
                got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
                raise ValueError(f"eva[{n!r}] must be a finite ({rank}, {d_in}) tensor (rank x "
                                 f"in_features), got {got}")
    peft.inject_adapter_in_model(config, model)
    if eva is not None:
        with torch.no_grad():
            for n in wrapped:
                a = model.get_submodule(n).lora_A["default"].weight
                a.copy_(eva[n].to(device=a.device, dtype=a.dtype))
    expert_trainable_parameters(model)
    return model


def expert_trainable_parameters(model: TinyVLA) -> list[nn.Parameter]:
    """Set expert fine-tuning's trainable set and return it: the LoRA weights and the action
    expert; everything else (embeddings, backbone weights, auxiliary heads) is frozen.

    >>> m = TinyVLA(VLAConfig(d_model=16, n_heads=2, n_layers=2))
    >>> n = sum(p.numel() for p in expert_trainable_parameters(m))
    >>> n == sum(p.numel() for p in m.action_expert.parameters())
    True
    """
    params = []
    for name, p in model.named_parameters():
        train = "lora_" in name or name.startswith("action_expert.")
        p.requires_grad_(train)
        if train:
            params.append(p)
    return params


def fold_lora(model: TinyVLA) -> dict[str, Tensor]:
    """Merge every LoRA adapter into its base weight, unwrap the layers (in place: ``model`` is a
    plain :class:`TinyVLA` again, all parameters trainable) and return a copy of its state dict,
    with exactly the keys of a model that never had LoRA.

    >>> m = TinyVLA(VLAConfig(d_model=16, n_heads=2, n_layers=2))
    >>> keys = set(m.state_dict())
    >>> set(fold_lora(add_lora(m, rank=2))) == keys
    True
    """
    lora = _lora_layer_type()
    if lora is None or not has_lora(model):
        raise ValueError("the model has no LoRA layers to fold; add_lora(model, ...) first")
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, lora)]
    for name, module in wrapped:
        module.merge(safe_merge=True)  # raises on NaN in the merged weight
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----- execution ------------------------------------------------------------------------------
class ChunkExecutor:
    """One action per environment step from predicted chunks.

    * ``mode="receding"`` (default): query the policy every ``replan_every`` steps (default the
      whole chunk: one forward pass per chunk, open loop in between) and execute the newest
      chunk's actions in order.
    * ``mode="ensemble"``: temporal ensembling (ACT): query every step; the action at step ``t`` is
      the weighted mean of every stored chunk's prediction for ``t``, weights ``exp(-decay * i)``
      with ``i = 0`` for the oldest prediction.

    Vectorised environments must restart together (:meth:`reset`); else use one executor per env.

    >>> ex = ChunkExecutor(chunk=2)
    >>> plan = lambda obs: torch.tensor([[[0.1, 0, 0, 0], [0.2, 0, 0, 0]]])
    >>> [round(float(ex.step(None, plan)[0, 0]), 2) for _ in range(3)]  # re-plans at step 2
    [0.1, 0.2, 0.1]
    """

    def __init__(self, chunk: int, mode: str = "receding", replan_every: int | None = None,
                 decay: float = 0.01) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if mode not in ("receding", "ensemble"):
            raise ValueError(f"unknown execution mode {mode!r}; choose 'receding' or 'ensemble'")
        replan = chunk if replan_every is None else replan_every
        if not 1 <= replan <= chunk:
            raise ValueError(f"replan_every must be in [1, chunk={chunk}], got {replan}")
        if mode == "ensemble" and replan_every is not None:
            raise ValueError("replan_every is for mode='receding'; ensembling queries every step")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.chunk, self.mode, self.replan_every, self.decay = chunk, mode, replan, decay
        self.reset()

    def reset(self) -> None:
        """Forget stored chunks (call at every episode start)."""
        self._plan: Tensor | None = None
        self._index = 0
        self._history: deque[tuple[int, Tensor]] = deque(maxlen=self.chunk)
        self._t = 0

    def _query(self, obs: Any, policy: Callable[[Any], Tensor]) -> Tensor:
        plan = policy(obs)
        if plan.dim() != 3 or plan.shape[1] != self.chunk:
            raise ValueError(f"the policy must return (B, {self.chunk}, action_dim), got {tuple(plan.shape)}")
        old = self._plan if self._plan is not None else (self._history[-1][1] if self._history else None)
        if old is not None and old.shape != plan.shape:
            raise ValueError(f"chunk shape changed from {tuple(old.shape)} to {tuple(plan.shape)} "
                             "without reset()")
        return plan

    def step(self, obs: Any, policy: Callable[[Any], Tensor]) -> Tensor:
        """The action ``(B, action_dim)`` for this step; ``policy(obs)`` is called only when needed."""
        if self.mode == "receding":
            if self._plan is None or self._index >= self.replan_every:
                self._plan, self._index = self._query(obs, policy), 0
            action = self._plan[:, self._index]
            self._index += 1
            return action
        self._history.append((self._t, self._query(obs, policy)))
        preds = torch.stack([c[:, self._t - t0] for t0, c in self._history])  # oldest first
        w = torch.exp(-self.decay * torch.arange(len(preds), dtype=preds.dtype, device=preds.device))
        self._t += 1
        return (preds * (w / w.sum()).view(-1, 1, 1)).sum(0)
