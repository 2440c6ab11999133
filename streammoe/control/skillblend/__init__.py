"""SkillBlender: frozen goal-conditioned skills blended per joint by a PPO policy (MuJoCo + SB3).

* :mod:`~streammoe.control.skillblend.skills`: the frozen-skill interface and checkpoints;
* :mod:`~streammoe.control.skillblend.policy`: the blender, an SB3 ``ActorCriticPolicy``;
* :mod:`~streammoe.control.skillblend.experiment`: the Hydra entries (skills, then task policies);
* :mod:`~streammoe.control.skillblend.evaluate`: metrics, blend-weight plots, rollout videos;
* :mod:`~streammoe.control.skillblend.checkpoint`: periodic PPO checkpoints, bitwise-exact resume;
* :mod:`~streammoe.control.skillblend.diagnose`: a scripted blender (can the skills do a task?).

Environments live in :mod:`streammoe_envs.skillblend`. See ``docs/skillblender.md``.
"""

from streammoe.control.skillblend.policy import SkillBlendPolicy
from streammoe.control.skillblend.skills import (
    MLPSkill,
    Skill,
    freeze,
    load_skill,
    save_skill,
    skill_from_sb3,
)

__all__ = ["MLPSkill", "Skill", "SkillBlendPolicy", "freeze", "load_skill", "save_skill", "skill_from_sb3"]
