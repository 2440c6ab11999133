"""Rollout videos for any Gymnasium env built with ``render_mode="rgb_array"``.

Frames are encoded to MP4 (H.264, yuv420p: plays in browsers and slides) by imageio-ffmpeg,
offscreen: ``streammoe`` sets ``MUJOCO_GL=egl`` when no display is present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["record_episodes", "write_mp4"]


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: int = 30) -> int:
    """Encode RGB uint8 frames ``(H, W, 3)`` to an H.264/yuv420p MP4; returns the frame count.

    Odd frame sizes are padded to even (yuv420p needs even sides) rather than rescaled.
    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    writer = imageio.get_writer(
        path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1,
        ffmpeg_log_level="error", output_params=["-movflags", "+faststart"],
    )
    try:
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be (H, W, 3) RGB arrays, got {frame.shape}")
            pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            writer.append_data(frame.astype(np.uint8, copy=False))
            n += 1
    finally:
        writer.close()
    if n == 0:
        path.unlink(missing_ok=True)
        raise ValueError("no frames to write")
    return n


def record_episodes(
    env: gym.Env,
    policy: Callable[[Any], Any],
    path: str | Path,
    n_episodes: int = 1,
    max_steps: int | None = None,
    seed: int | None = None,
    fps: int | None = None,
) -> tuple[Path, int]:
    """Play ``n_episodes`` with ``policy(obs) -> action`` and write them to one MP4.

    Returns ``(path, n_frames)``: one frame after each reset and one after each step.
    """
    if env.render_mode != "rgb_array":
        raise ValueError(f"env must be created with render_mode='rgb_array', got {env.render_mode!r}")
    fps = fps or int(env.metadata.get("render_fps", 30))

    def frames() -> Iterable[np.ndarray]:  # streamed to the encoder, never all in memory
        for episode in range(n_episodes):
            obs, _ = env.reset(seed=None if seed is None else seed + episode)
            yield env.render()
            steps, done = 0, False
            while not done and (max_steps is None or steps < max_steps):
                obs, _, terminated, truncated, _ = env.step(policy(obs))
                yield env.render()
                done = terminated or truncated
                steps += 1

    n = write_mp4(frames(), path, fps=fps)
    return Path(path), n
