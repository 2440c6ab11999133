"""MJCF assets of the SkillBlender robot and scenes (a package only so that wheels ship the XML)."""
