"""Gymnasium environments of streammoe. ``import envs`` registers every id below.

Each system's environments live in their own module and register themselves on import:

- ``envs.trading``: MacroHFT's trading env (``streammoe/Trading-v0``)
- ``envs.skillblend``: SkillBlender's skills and tasks (``streammoe/SkillBlend*-v0``)
- ``envs.task_families``: T2MIR's Point-Robot and Cheetah-Vel task families
"""

from envs import skillblend, task_families, trading

__all__ = ["skillblend", "task_families", "trading"]
