"""SkillBlender environments: one mobile manipulator (``assets/robot.xml``), three primitive-skill
envs and three tasks that need both skills. Importing this module registers the ids in ``ENV_IDS``.

>>> import gymnasium as gym
>>> env = gym.make(ENV_IDS["far_reach"])
>>> obs, info = env.reset(seed=0)
>>> obs.shape == env.observation_space.shape, env.action_space.shape
(True, (6,))
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.skillblend.base import ACTION_DIM, PROPRIO_DIM, PROPRIO_RATES, MobileManipulatorEnv
from envs.skillblend.skills import ReachEnv, WalkEnv, WalkVelocityEnv
from envs.skillblend.tasks import BoxPushEnv, ButtonEnv, FarReachEnv

__all__ = ["ACTION_DIM", "ENV_IDS", "PROPRIO_DIM", "PROPRIO_RATES", "SKILL_ENVS", "TASK_ENVS", "MobileManipulatorEnv"]

# name -> (id, class, episode length in control steps of 0.04 s)
_SPECS = {
    "walk": ("streammoe/SkillBlendWalk-v0", WalkEnv, 100),
    "walk_velocity": ("streammoe/SkillBlendWalkVelocity-v0", WalkVelocityEnv, 100),
    "reach": ("streammoe/SkillBlendReach-v0", ReachEnv, 75),
    "far_reach": ("streammoe/SkillBlendFarReach-v0", FarReachEnv, 150),
    "button": ("streammoe/SkillBlendButton-v0", ButtonEnv, 150),
    "box_push": ("streammoe/SkillBlendBoxPush-v0", BoxPushEnv, 150),
}
ENV_IDS = {name: spec[0] for name, spec in _SPECS.items()}
SKILL_ENVS = {"walk": WalkEnv, "walk_velocity": WalkVelocityEnv, "reach": ReachEnv}
TASK_ENVS = {"far_reach": FarReachEnv, "button": ButtonEnv, "box_push": BoxPushEnv}

for _env_id, _cls, _steps in _SPECS.values():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_cls, max_episode_steps=_steps)
