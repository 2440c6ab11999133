"""Rollout video: a real, decodable H.264/yuv420p MP4 with the expected frame count."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from streammoe.video import record_episodes, write_mp4


def _probe(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    n = sum(1 for _ in reader)
    return meta, n


def test_mujoco_rollout_records_every_frame(tmp_path):
    env = gym.make("InvertedPendulum-v5", render_mode="rgb_array", width=96, height=64)
    path, n_frames = record_episodes(env, lambda obs: env.action_space.sample(), tmp_path / "r.mp4",
                                     n_episodes=2, max_steps=7, seed=0)
    env.close()
    assert n_frames <= 2 * 8 and n_frames >= 2 * 2  # reset frame + up to 7 steps, per episode
    meta, decoded = _probe(path)
    assert decoded == n_frames
    assert meta["codec"] == "h264" and "yuv420p" in meta["pix_fmt"]


def test_write_mp4_pads_odd_sizes_and_rejects_bad_frames(tmp_path):
    frames = [np.full((15, 21, 3), i * 20, dtype=np.uint8) for i in range(5)]
    assert write_mp4(frames, tmp_path / "odd.mp4", fps=5) == 5
    meta, n = _probe(tmp_path / "odd.mp4")
    assert n == 5 and tuple(meta["size"]) == (22, 16)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_mp4([np.zeros((4, 4))], tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="no frames"):
        write_mp4([], tmp_path / "empty.mp4")
    assert not (tmp_path / "empty.mp4").exists()


def test_env_must_render_rgb_array(tmp_path):
    env = gym.make("InvertedPendulum-v5")
    with pytest.raises(ValueError, match="rgb_array"):
        record_episodes(env, lambda o: 0, tmp_path / "x.mp4")
