"""Frozen primitive skills behind one interface: ``skill(goal, proprio) -> action for all joints``.

A skill is an ``nn.Module`` with a goal range (``goal_low``/``goal_high`` buffers) and a
deterministic action (the mean of the PPO policy it came from). Skills are trained with SB3 PPO
(:func:`skill_from_sb3` copies the actor out of an SB3 model), saved with :func:`save_skill` as
``<name>.safetensors`` (:mod:`streammoe.checkpoint`'s format: weights, goal range and architecture;
nothing in it is unpickled) and loaded frozen with :func:`load_skill`.

>>> import torch
>>> s = MLPSkill("demo", in_dim=5, action_dim=2, goal_low=[-1.0], goal_high=[1.0], hidden=(8,))
>>> s(torch.zeros(4, 1), torch.zeros(4, 4)).shape
torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from streammoe import checkpoint as ckpt
from streammoe.routing.routers import ACTIVATIONS

__all__ = ["MLPSkill", "Skill", "freeze", "load_skill", "save_skill", "skill_from_sb3", "skill_path"]

CHECKPOINT_KIND = "streammoe.skillblend.skill"
CHECKPOINT_VERSION = 2  # 1: a torch.save dict (<name>.pt)
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"
_FIELDS = ("name", "config", "goal_low", "goal_high", "state_dict")


class Skill(nn.Module):
    """Base class: ``forward(goal (..., G), proprio (..., P)) -> action (..., A)``."""

    name: str

    def __init__(self, name: str, goal_low: Sequence[float], goal_high: Sequence[float]) -> None:
        super().__init__()
        low = torch.as_tensor(goal_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(goal_high, dtype=torch.float32).reshape(-1)
        if low.shape != high.shape or not torch.all(high > low):
            raise ValueError(f"skill {name!r}: goal range needs low < high elementwise, got {low} / {high}")
        self.name = name
        self.register_buffer("goal_low", low)
        self.register_buffer("goal_high", high)

    @property
    def goal_dim(self) -> int:
        return int(self.goal_low.numel())

    def clamp_goal(self, raw: Tensor) -> Tensor:
        """Map an unbounded output into the goal range smoothly (tanh), so gradients never die
        at the bounds the way a hard clamp's would."""
        mid = (self.goal_high + self.goal_low) / 2
        half = (self.goal_high - self.goal_low) / 2
        return mid + half * torch.tanh(raw)


class MLPSkill(Skill):
    """An MLP actor on ``[goal, proprio]``; the architecture of SB3's ``MlpPolicy`` actor.

    ``squash="tanh"`` (default) maps the actor's mean into the action box [-1, 1]. PPO trains the
    skill with an unbounded mean that the env clips; a blend of unbounded means would leave the
    box for small goal changes, where the blender's exploration noise is clipped away and its
    policy gradient carries no signal. ``squash="none"`` keeps the raw mean.
    """

    def __init__(self, name: str, in_dim: int, action_dim: int, goal_low: Sequence[float],
                 goal_high: Sequence[float], hidden: Sequence[int] = (64, 64),
                 activation: str = "tanh", squash: str = "tanh") -> None:
        super().__init__(name, goal_low, goal_high)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if in_dim <= self.goal_dim:
            raise ValueError(f"in_dim={in_dim} must exceed the goal dim {self.goal_dim} (goal + proprio)")
        if squash not in ("tanh", "none"):
            raise ValueError(f"squash must be 'tanh' or 'none', got {squash!r}")
        self.config = {"in_dim": in_dim, "action_dim": action_dim, "hidden": list(hidden),
                       "activation": activation, "squash": squash}
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), ACTIVATIONS[activation]()]
            last = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(last, action_dim)

    @property
    def proprio_dim(self) -> int:
        return self.config["in_dim"] - self.goal_dim

    def linears(self) -> list[nn.Linear]:
        """The affine layers in order: the body's, then the head."""
        return [*(m for m in self.body if isinstance(m, nn.Linear)), self.head]

    def forward(self, goal: Tensor, proprio: Tensor) -> Tensor:
        if goal.shape[-1] != self.goal_dim or proprio.shape[-1] != self.proprio_dim:
            raise ValueError(f"skill {self.name!r} takes goal (..., {self.goal_dim}) and proprio "
                             f"(..., {self.proprio_dim}), got {tuple(goal.shape)} and {tuple(proprio.shape)}")
        action = self.head(self.body(torch.cat([goal, proprio], dim=-1)))
        return torch.tanh(action) if self.config["squash"] == "tanh" else action


def freeze(skill: Skill) -> Skill:
    """No parameter of a frozen skill is trained; gradients still flow *through* it."""
    skill.eval()
    for p in skill.parameters():
        p.requires_grad_(False)
    return skill


def skill_from_sb3(model: Any, name: str, goal_low: Sequence[float], goal_high: Sequence[float],
                   squash: str = "tanh") -> MLPSkill:
    """Copy the deterministic actor (``mlp_extractor.policy_net`` + ``action_net``) of an SB3
    PPO ``MlpPolicy`` into an :class:`MLPSkill` (no SB3 object is kept)."""
    policy = model.policy
    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    act = type(policy.activation_fn()).__name__.lower()
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {act!r} in the SB3 policy")
    in_dim = int(policy.observation_space.shape[0])
    skill = MLPSkill(name, in_dim, int(policy.action_space.shape[0]), goal_low, goal_high,
                     hidden=[lin.out_features for lin in linears], activation=act, squash=squash)
    src = [*linears, policy.action_net]
    with torch.no_grad():
        for s, d in zip(src, skill.linears()):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)
    return skill.cpu()


def skill_path(directory: str | Path, name: str) -> Path:
    """``<directory>/<name>.safetensors``; raises if only an older streammoe's ``<name>.pt`` (a
    torch.save pickle, never loaded) is there, rather than training a new skill next to it."""
    path = Path(directory) / f"{name}{SUFFIX}"
    ckpt.refuse_legacy(path, path.with_suffix(LEGACY_SUFFIX), "skill checkpoint")
    return path


def save_skill(skill: MLPSkill, path: str | Path) -> Path:
    """Write ``skill`` (weights, goal range, architecture) to ``path`` atomically."""
    state = {"name": skill.name, "config": skill.config, "goal_low": skill.goal_low.tolist(),
             "goal_high": skill.goal_high.tolist(), "state_dict": skill.state_dict()}
    return ckpt.save(path, state, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION)


def load_skill(path: str | Path, map_location: str | torch.device = "cpu") -> MLPSkill:
    """Load a skill checkpoint, frozen. Missing, corrupt or incompatible files raise a clear error."""
    path = Path(path)
    state = ckpt.load(path, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION, label="skill checkpoint").state
    missing = set(_FIELDS) - set(state) if isinstance(state, dict) else set(_FIELDS)
    if missing:
        raise ckpt.CheckpointError(f"{path} is not a skill checkpoint (missing {sorted(missing)})")
    try:
        skill = MLPSkill(state["name"], goal_low=state["goal_low"], goal_high=state["goal_high"], **state["config"])
    except (TypeError, ValueError) as exc:
        raise ckpt.CheckpointError(f"{path}: not a usable skill architecture: {exc}") from exc
    try:
        skill.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ckpt.CheckpointError(f"{path}: weights do not fit the saved architecture: {exc}") from exc
    return freeze(skill.to(map_location))
