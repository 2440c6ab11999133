"""The Hydra entry point behind ``scripts/run.py`` and the ``streammoe-run`` console script.

An experiment config names its ``entry``: a function ``run(cfg, run_dir) -> dict`` that trains /
evaluates, writes its figures into ``run_dir`` and returns the final metrics. This module only
seeds, resolves the run directory, saves the resolved config and calls the entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from streammoe.devices import seed_everything


def config_dir() -> Path:
    """Where the Hydra configs are: ``$STREAMMOE_CONF`` if set, else the ``conf/`` packaged in the
    wheel (``streammoe/conf``), else the repository's ``conf/`` (source checkouts, editable
    installs). The repository's ``conf/`` is the source; the wheel carries a copy of it."""
    override = os.environ.get("STREAMMOE_CONF")
    if override:
        path = Path(override).expanduser().resolve()
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"STREAMMOE_CONF={override!r} has no config.yaml; point it at a "
                                    "copy of streammoe's conf/ folder or unset it")
        return path
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"streammoe's configs are missing (looked in {here / 'conf'} and "
                            f"{here.parent / 'conf'}); reinstall streammoe or set STREAMMOE_CONF")


CONF_DIR = config_dir()


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Seed, save the resolved config into ``run_dir`` and call the experiment's entry."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    entry = hydra.utils.get_method(cfg.entry)
    return entry(cfg, run_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> Any:
    """Run the configured experiment; return its objective for sweepers."""
    metrics = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    # A sweeper (e.g. Optuna) can optimise the experiment's declared objective.
    objective = cfg.get("objective")
    return metrics.get(objective) if objective and isinstance(metrics, dict) else None


if __name__ == "__main__":
    main()
