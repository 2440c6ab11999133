"""The wheel carries every package, the configs and the env assets under names that are ours."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_folder_is_a_listed_package():
    st = _setuptools()
    dirs = {name: ROOT / folder for name, folder in st["package-dir"].items()}
    expected = set()
    for folder, name in ((ROOT / "streammoe", "streammoe"), (ROOT / "envs", "streammoe_envs")):
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            expected.add(".".join([name, *rel.parts]))
    expected.add("streammoe.conf")
    assert set(st["packages"]) == expected
    assert dirs == {"streammoe_envs": ROOT / "envs", "streammoe.conf": ROOT / "conf"}


def test_env_ids_register_through_string_entry_points_of_our_package():
    import gymnasium as gym
    import streammoe_envs

    for env_id, (entry_point, _) in streammoe_envs.ENV_SPECS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == entry_point and entry_point.startswith("streammoe_envs.")
    env = gym.make(streammoe_envs.TRADING_ID)
    assert type(env.unwrapped).__module__ == "streammoe_envs.trading.env"


def test_config_dir_resolution(tmp_path, monkeypatch):
    from streammoe import cli

    assert (cli.config_dir() / "experiment" / "driftmoe.yaml").is_file()
    monkeypatch.setenv("STREAMMOE_CONF", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="STREAMMOE_CONF"):
        cli.config_dir()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert cli.config_dir() == tmp_path.resolve()
