"""Gymnasium environments of streammoe. Importing ``envs`` registers every id below.

Each system's environments live in their own module and register themselves on import.
"""
