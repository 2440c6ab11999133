"""Gymnasium environments of streammoe, installed as the ``streammoe_envs`` package.

The folder is ``envs/`` in the repository; it installs and imports as ``streammoe_envs`` (a name
that is ours on PyPI). ``import streammoe_envs`` registers every id in :data:`ENV_SPECS` through
string entry points, so registering imports neither MuJoCo nor any system; ``gymnasium.make``
imports the env's module on first use.

- ``streammoe_envs.trading``: the trading market (data, features, reward, teacher) and its env
- ``streammoe_envs.skillblend``: SkillBlender's mobile manipulator, skill and task envs
- ``streammoe_envs.task_families``: T2MIR's Point-Robot and Cheetah-Vel task families
- ``streammoe_envs.metaworld``: MergeVLA's suites of Meta-World v3 tasks (instructions, camera
  images or object state, proprioception); needs the ``vla`` extra (metaworld)

The environments import no part of ``streammoe`` (a test checks): systems import environments,
never the other way round.

>>> import gymnasium as gym
>>> import streammoe_envs
>>> sorted(i for i in streammoe_envs.ENV_SPECS if "Trading" in i)
['streammoe/Trading-v0']
>>> all(env_id in gym.registry for env_id in streammoe_envs.ENV_SPECS)
True
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__all__ = [
    "CHEETAH_VEL_ID",
    "ENV_SPECS",
    "METAWORLD_ID",
    "POINT_ROBOT_ID",
    "SKILLBLEND_IDS",
    "TRADING_ID",
]

TRADING_ID = "streammoe/Trading-v0"
POINT_ROBOT_ID = "streammoe/PointRobot-v0"
CHEETAH_VEL_ID = "streammoe/CheetahVel-v0"
# MergeVLA: one id for every Meta-World task of its suites (make it with task=..., variation=...)
METAWORLD_ID = "streammoe/MetaWorldTask-v0"
# SkillBlender's short names (used in configs) -> ids
SKILLBLEND_IDS = {
    "walk": "streammoe/SkillBlendWalk-v0",
    "walk_velocity": "streammoe/SkillBlendWalkVelocity-v0",
    "reach": "streammoe/SkillBlendReach-v0",
    "far_reach": "streammoe/SkillBlendFarReach-v0",
    "button": "streammoe/SkillBlendButton-v0",
    "button_latched": "streammoe/SkillBlendButtonLatched-v0",
    "box_push": "streammoe/SkillBlendBoxPush-v0",
}

# id -> (entry point "module:Class", episode length in steps or None). SkillBlender's control
# step is 0.04 s. MetaWorldTask truncates itself after its task's max_steps (they differ by task).
ENV_SPECS: dict[str, tuple[str, int | None]] = {
    TRADING_ID: ("streammoe_envs.trading.env:TradingEnv", None),
    SKILLBLEND_IDS["walk"]: ("streammoe_envs.skillblend.skill_envs:WalkEnv", 100),
    SKILLBLEND_IDS["walk_velocity"]: ("streammoe_envs.skillblend.skill_envs:WalkVelocityEnv", 100),
    SKILLBLEND_IDS["reach"]: ("streammoe_envs.skillblend.skill_envs:ReachEnv", 75),
    SKILLBLEND_IDS["far_reach"]: ("streammoe_envs.skillblend.tasks:FarReachEnv", 150),
    SKILLBLEND_IDS["button"]: ("streammoe_envs.skillblend.tasks:ButtonEnv", 150),
    SKILLBLEND_IDS["button_latched"]: ("streammoe_envs.skillblend.tasks:ButtonLatchedEnv", 150),
    SKILLBLEND_IDS["box_push"]: ("streammoe_envs.skillblend.tasks:BoxPushEnv", 150),
    POINT_ROBOT_ID: ("streammoe_envs.task_families:PointRobotEnv", 20),
    CHEETAH_VEL_ID: ("streammoe_envs.task_families:CheetahVelEnv", 200),
    METAWORLD_ID: ("streammoe_envs.metaworld.env:MetaWorldTaskEnv", None),
}

for _env_id, (_entry_point, _steps) in ENV_SPECS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, max_episode_steps=_steps)
