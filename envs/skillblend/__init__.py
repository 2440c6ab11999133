"""SkillBlender environments: one mobile manipulator (``assets/robot.xml``), three primitive-skill
envs and three tasks that need both skills. Their ids (``ENV_IDS``) are registered by ``import streammoe_envs``.

>>> import gymnasium as gym
>>> env = gym.make(ENV_IDS["far_reach"])
>>> obs, info = env.reset(seed=0)
>>> obs.shape == env.observation_space.shape, env.action_space.shape
(True, (6,))
"""

from __future__ import annotations

from streammoe_envs import SKILLBLEND_IDS
from streammoe_envs.skillblend.base import (
    ACTION_DIM,
    PROPRIO_DIM,
    PROPRIO_RATES,
    MobileManipulatorEnv,
)
from streammoe_envs.skillblend.skill_envs import ReachEnv, WalkEnv, WalkVelocityEnv
from streammoe_envs.skillblend.tasks import BoxPushEnv, ButtonEnv, ButtonLatchedEnv, FarReachEnv

__all__ = ["ACTION_DIM", "ENV_IDS", "PROPRIO_DIM", "PROPRIO_RATES", "SKILL_ENVS", "TASK_ENVS", "MobileManipulatorEnv"]

ENV_IDS = SKILLBLEND_IDS  # short name -> Gymnasium id (registered by ``import streammoe_envs``)
SKILL_ENVS = {"walk": WalkEnv, "walk_velocity": WalkVelocityEnv, "reach": ReachEnv}
TASK_ENVS = {"far_reach": FarReachEnv, "button": ButtonEnv, "box_push": BoxPushEnv,
             "button_latched": ButtonLatchedEnv}
