"""streammoe: routing among experts as one shared abstraction.

``streammoe.routing`` is the core every system imports; the systems live in ``streammoe.stream``
(DriftMoE) and ``streammoe.control`` (SkillBlender, MacroHFT, T2MIR).
"""

import os

# MuJoCo renders offscreen through EGL when there is no display; set before mujoco is imported.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

__version__ = "0.1.0"
