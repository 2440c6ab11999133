"""The SkillBlender high-level policy as an SB3 ``ActorCriticPolicy``.

Per control step, from the task observation the policy outputs

* a goal for every frozen skill, squashed into that skill's goal range, and
* ``K x |A|`` weight logits: a softmax over the K skills *separately for every joint*
  (:func:`~streammoe.routing.softmax_per_dim_gate`).

The action mean is the per-joint weighted sum of the skills' actions
(:func:`~streammoe.routing.dense_mixture`); PPO samples the joint action from
``N(mean, exp(log_std))`` with a state-independent ``log_std``, so log-probabilities are over joint
actions and the PPO loss back-propagates *through* the frozen skills into the goal and weight
heads. Skills are frozen (``requires_grad=False``) and left out of the optimiser.

``selection="hard"`` is the baseline: K logits, one skill drives every joint (argmax forward,
softmax gradient: the straight-through :func:`~streammoe.routing.hard_soft_gate`).

Observations must start with the proprioception block the skills read (``proprio_dim`` numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from streammoe.control.skillblend.skills import MLPSkill, Skill, freeze
from streammoe.routing import dense_mixture, hard_soft_gate, softmax_per_dim_gate
from streammoe.routing.routers import ACTIVATIONS

__all__ = ["SELECTIONS", "SkillBlendPolicy"]

SELECTIONS = ("blend", "hard")


class SkillBlendPolicy(ActorCriticPolicy):
    """PPO actor-critic whose actor blends frozen skills per joint (see module docstring)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Any,
                 skills: Sequence[Skill], proprio_dim: int, selection: str = "blend",
                 gate_temperature: float = 1.0, goal_gain: float = 1.0,
                 hidden_from_blender: Sequence[int] = (), **kwargs: Any) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if not skills:
            raise ValueError("SkillBlendPolicy needs at least one skill")
        if not isinstance(action_space, spaces.Box):
            raise TypeError(f"SkillBlendPolicy needs a Box action space, got {action_space}")
        if kwargs.get("use_sde"):
            raise ValueError("SkillBlendPolicy uses a state-independent log-std; use_sde is not supported")
        if not kwargs.get("share_features_extractor", True):
            raise ValueError("SkillBlendPolicy needs share_features_extractor=True (obs carry the proprio)")
        obs_dim = int(np.prod(observation_space.shape))
        if not 0 < proprio_dim <= obs_dim:
            raise ValueError(f"proprio_dim={proprio_dim} must be in (0, obs dim {obs_dim}]")
        for s in skills:
            if getattr(s, "proprio_dim", proprio_dim) != proprio_dim:
                raise ValueError(f"skill {s.name!r} reads {s.proprio_dim} proprio numbers, the task gives {proprio_dim}")
        # Plain attributes: nn.Module.__init__ has not run yet, and _build (called by the parent
        # constructor) needs them.
        self._init_skills = list(skills)
        self.proprio_dim = int(proprio_dim)
        self.selection = selection
        self.gate_temperature = float(gate_temperature)
        if not goal_gain > 0:
            raise ValueError(f"goal_gain must be > 0, got {goal_gain}")
        self.goal_gain = float(goal_gain)
        hidden = sorted({int(i) for i in hidden_from_blender})
        if hidden and not 0 <= hidden[0] <= hidden[-1] < obs_dim:
            raise ValueError(f"hidden_from_blender indices must be in [0, {obs_dim}), got {hidden}")
        self.hidden_from_blender = tuple(hidden)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    # ------------------------------------------------------------------ construction
    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if not isinstance(self.action_dist, DiagGaussianDistribution):
            raise TypeError("SkillBlendPolicy needs a DiagGaussian action distribution")
        self.skills = nn.ModuleList(freeze(s) for s in self._init_skills)
        del self._init_skills
        self.n_skills = len(self.skills)
        self.action_dim = int(np.prod(self.action_space.shape))
        dims = [s.goal_dim for s in self.skills]
        self.goal_slices = [slice(a, b) for a, b in zip(np.cumsum([0, *dims[:-1]]), np.cumsum(dims))]
        self.goal_total = int(sum(dims))
        # Goal squash of every skill at once: goal = mid + half * tanh(raw).
        self.register_buffer("goal_mid", torch.cat([(s.goal_high + s.goal_low) / 2 for s in self.skills]))
        self.register_buffer("goal_half", torch.cat([(s.goal_high - s.goal_low) / 2 for s in self.skills]))
        self._stack_skills()
        n_logits = self.n_skills * self.action_dim if self.selection == "blend" else self.n_skills
        # The parent built a Gaussian mean head; ours emits goals and weight logits instead.
        self.action_net = nn.Linear(self.mlp_extractor.latent_dim_pi, self.goal_total + n_logits)
        nn.init.orthogonal_(self.action_net.weight, gain=0.01)
        nn.init.zeros_(self.action_net.bias)  # start: goals mid-range, uniform weights
        # Observation entries the blender's actor and critic MLPs do not see (zeroed); the skills
        # still read the whole proprioception.
        mask = torch.ones(int(np.prod(self.observation_space.shape)))
        mask[list(self.hidden_from_blender)] = 0.0
        self.register_buffer("blender_input_mask", mask, persistent=False)
        trainable = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = self.optimizer_class(trainable, lr=lr_schedule(1), **self.optimizer_kwargs)

    def _stack_skills(self) -> None:
        """When all skills are MLPs of one shape, stack their (frozen) layers so the K skills run
        as one batched matmul per layer (``baddbmm``) instead of K separate MLPs: the blender's
        per-step cost is dominated by op count, not FLOPs. Otherwise skills run one by one."""
        skills = list(self.skills)
        configs = [getattr(s, "config", None) for s in skills]
        self.stacked = all(isinstance(s, MLPSkill) for s in skills) and all(c == configs[0] for c in configs) \
            and len({s.goal_dim for s in skills}) == 1
        if not self.stacked:
            return
        layers = [s.linears() for s in skills]
        for i in range(len(layers[0])):
            # non-persistent: derived from the skills, which the state dict already holds
            self.register_buffer(f"stack_w{i}", torch.stack([ls[i].weight.detach().T for ls in layers]),
                                 persistent=False)
            self.register_buffer(f"stack_b{i}", torch.stack([ls[i].bias.detach() for ls in layers]).unsqueeze(1),
                                 persistent=False)
        self.n_stacked_layers = len(layers[0])
        self.stack_activation = ACTIVATIONS[configs[0]["activation"]]()
        self.stack_squash = configs[0]["squash"] == "tanh"

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        out = super().load_state_dict(*args, **kwargs)
        if getattr(self, "stacked", False):  # keep the stacked copies in step with loaded skills
            self._restack()
        return out

    def _restack(self) -> None:
        layers = [s.linears() for s in self.skills]
        with torch.no_grad():
            for i in range(self.n_stacked_layers):
                getattr(self, f"stack_w{i}").copy_(torch.stack([ls[i].weight.T for ls in layers]))
                getattr(self, f"stack_b{i}").copy_(torch.stack([ls[i].bias for ls in layers]).unsqueeze(1))

    def _skill_actions(self, goals: Tensor, proprio: Tensor) -> Tensor:
        """All skills' actions ``(B, K, A)`` for goals ``(B, G_total)`` and proprio ``(B, P)``."""
        if not self.stacked:
            return torch.stack([skill(goals[..., sl], proprio) for skill, sl in zip(self.skills, self.goal_slices)],
                               dim=-2)
        batch = proprio.shape[0]
        x = torch.cat([goals.reshape(batch, self.n_skills, -1).transpose(0, 1),
                       proprio.unsqueeze(0).expand(self.n_skills, -1, -1)], dim=-1)  # (K, B, G+P)
        for i in range(self.n_stacked_layers):
            x = torch.baddbmm(getattr(self, f"stack_b{i}"), x, getattr(self, f"stack_w{i}"))
            if i < self.n_stacked_layers - 1:
                x = self.stack_activation(x)
        if self.stack_squash:
            x = torch.tanh(x)
        return x.transpose(0, 1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(skills=list(self.skills), proprio_dim=self.proprio_dim, selection=self.selection,
                    gate_temperature=self.gate_temperature, goal_gain=self.goal_gain,
                    hidden_from_blender=self.hidden_from_blender)
        return data

    # ------------------------------------------------------------------ the blend
    def blend(self, features: Tensor, latent_pi: Tensor) -> dict[str, Tensor]:
        """Goals ``(B, G)``, weights ``(B, K, A)``, skill actions ``(B, K, A)`` and the mean ``(B, A)``."""
        out = self.action_net(latent_pi)
        raw_goals, logits = out[..., : self.goal_total] * self.goal_gain, out[..., self.goal_total:]
        proprio = features[..., : self.proprio_dim]
        goals = self.goal_mid + self.goal_half * torch.tanh(raw_goals)  # each skill's Skill.clamp_goal
        skill_actions = self._skill_actions(goals, proprio)
        if self.selection == "blend":
            logits = logits.reshape(*logits.shape[:-1], self.n_skills, self.action_dim)
            weights = softmax_per_dim_gate(logits, temperature=self.gate_temperature, expert_dim=-2)
        else:
            weights = hard_soft_gate(logits, temperature=self.gate_temperature)
            weights = weights.unsqueeze(-1).expand_as(skill_actions)
        mean = dense_mixture(weights, skill_actions)
        return {"goals": goals, "weights": weights, "skill_actions": skill_actions,
                "mean": mean}

    def _distribution(self, features: Tensor, latent_pi: Tensor) -> Distribution:
        return self.action_dist.proba_distribution(self.blend(features, latent_pi)["mean"], self.log_std)

    def _blender_view(self, features: Tensor) -> Tensor:
        """The features the blender's MLPs see: ``hidden_from_blender`` entries zeroed."""
        return features * self.blender_input_mask if self.hidden_from_blender else features

    def _latents(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.mlp_extractor(self._blender_view(features))

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        features = self.extract_features(obs)
        latent_pi, latent_vf = self._latents(features)
        distribution = self._distribution(features, latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions.reshape((-1, *self.action_space.shape)), self.value_net(latent_vf), log_prob

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.extract_features(obs)
        latent_pi, latent_vf = self._latents(features)
        distribution = self._distribution(features, latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: Tensor) -> Distribution:
        features = self.extract_features(obs)
        return self._distribution(features, self.mlp_extractor.forward_actor(self._blender_view(features)))

    def predict_values(self, obs: Tensor) -> Tensor:
        """Critic values from what the blender sees (SB3 calls this to bootstrap rollouts)."""
        features = self.extract_features(obs)
        return self.value_net(self.mlp_extractor.forward_critic(self._blender_view(features)))

    @torch.no_grad()
    def blend_details(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """The blend for one or more raw observations, as numpy (for plots and analysis)."""
        obs_t, _ = self.obs_to_tensor(obs)
        features = self.extract_features(obs_t)
        out = self.blend(features, self.mlp_extractor.forward_actor(self._blender_view(features)))
        return {k: v.cpu().numpy() for k, v in out.items()}
