"""SkillBlender: frozen goal-conditioned skills blended per joint by a PPO policy (MuJoCo + SB3).

* :mod:`~streammoe.control.skillblend.skills`: the frozen-skill interface and checkpoints;
* :mod:`~streammoe.control.skillblend.policy`: the blender, an SB3 ``ActorCriticPolicy``;
* :mod:`~streammoe.control.skillblend.experiment`: the Hydra entries (skills, then task policies);
* :mod:`~streammoe.control.skillblend.evaluate`: metrics, blend-weight plots, rollout videos;
* :mod:`~streammoe.control.skillblend.checkpoint`: periodic PPO checkpoints, bitwise-exact resume;
* :mod:`~streammoe.control.skillblend.diagnose`: a scripted blender (can the skills do a task?).

Environments live in :mod:`streammoe_envs.skillblend`. See ``docs/skillblender.md``.
"""

from streammoe.lazy import lazy_exports

# name -> defining module, imported on first use (keeps `import streammoe.cli` fast)
_EXPORTS = {
    "SkillBlendPolicy": "streammoe.control.skillblend.policy",
    "MLPSkill": "streammoe.control.skillblend.skills",
    "Skill": "streammoe.control.skillblend.skills",
    "freeze": "streammoe.control.skillblend.skills",
    "load_skill": "streammoe.control.skillblend.skills",
    "save_skill": "streammoe.control.skillblend.skills",
    "skill_from_sb3": "streammoe.control.skillblend.skills",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
