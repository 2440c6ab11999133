"""The Hydra entry point behind ``scripts/run.py`` and the ``streammoe-run`` console script.

An experiment config names its ``entry``: a function ``run(cfg, run_dir) -> dict`` that trains /
evaluates, writes its figures into ``run_dir`` and returns the final metrics. This module only
registers the config schemas, validates, seeds, resolves the run directory, saves the resolved
config and calls the entry.

It is the one module that knows the list of systems: :data:`SCHEMAS` imports each system's
``config`` module (its schema dataclasses, nothing else of the system) and registers them in
Hydra's ConfigStore on import, before any composition (``tests/test_import_direction.py`` allows
this module, and only this one, those imports). See :mod:`streammoe.config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from streammoe.config import RootConfig, config_dir, register_schemas, validate
from streammoe.control.macrohft.config import MacroHFTExperiment
from streammoe.control.mergevla.config import MergeVLAExperiment
from streammoe.control.skillblend.config import SkillBlendExperiment, SkillTrainingExperiment
from streammoe.control.t2mir.config import T2MIRExperiment
from streammoe.demo_config import RouterDemoExperiment
from streammoe.devices import seed_everything
from streammoe.stream.config import DriftMoEExperiment

#: Experiment schemas by the name experiment files give in their defaults list
#: (``- /schema/<name>@_global_``); ``conf/config.yaml`` names ``/schema/root``.
SCHEMAS: dict[str, type[RootConfig]] = {
    "driftmoe": DriftMoEExperiment,
    "macrohft": MacroHFTExperiment,
    "mergevla": MergeVLAExperiment,
    "skillblend": SkillBlendExperiment,
    "skillblend_skills": SkillTrainingExperiment,
    "t2mir": T2MIRExperiment,
    "router_demo": RouterDemoExperiment,
}
register_schemas(SCHEMAS)


CONF_DIR = config_dir()


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``scripts/run.py`` would build from these command-line overrides (e.g.
    ``["experiment=skillblend", "seed=1"]``), composed outside a Hydra run and not yet
    validated (:func:`streammoe.config.validate`, or :func:`run_experiment`, does that)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate (before anything is written), seed, save the resolved config into ``run_dir`` and
    call the experiment's entry."""
    validate(cfg)  # types, ranges, +added keys and device; the error names the key
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
    objective = cfg.objective
    return metrics.get(objective) if objective and isinstance(metrics, dict) else None


if __name__ == "__main__":
    main()
