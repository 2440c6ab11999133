"""Gymnasium environments of streammoe. Importing ``envs`` registers every id below.

Each system's environments live in their own module and register themselves on import.
"""
from envs import task_families  # noqa: F401,E402  (T2MIR: PointRobot, CheetahVel)
