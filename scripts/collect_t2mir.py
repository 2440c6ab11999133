"""Collect (or find) the learning histories an experiment trains on, and summarise them.

    python scripts/collect_t2mir.py experiment=t2mir_pointrobot
    python scripts/collect_t2mir.py experiment=t2mir_cheetahvel t2mir.n_episodes=200

Takes the same Hydra overrides as ``scripts/run.py``. The dataset goes to
``<t2mir.data_dir>/<family>_<collector>_<hash>/`` (one ``task_XXX.npz`` per training task and a
``manifest.json``); every run with the same settings reuses it. Running the experiment collects it
too; this script only lets you do it ahead of time (e.g. SB3 histories before a GPU job).
"""

from __future__ import annotations

import sys

import numpy as np

from streammoe.cli import compose_config
from streammoe.control.t2mir.data import ensure_dataset
from streammoe.control.t2mir.experiment import collector_spec, family_from_config
from streammoe.runs import format_table


def main(overrides: list[str]) -> None:
    cfg = compose_config(overrides)
    c = cfg.t2mir
    fam = family_from_config(c)
    folder, manifest, hist = ensure_dataset(c.data_dir, fam, c.n_episodes, collector_spec(c), c.data_seed)
    rows = [{"task": ", ".join(f"{x:.3f}" for x in h.task), "first_return": float(h.returns[0]),
             "last_return": float(h.returns[-1]), "best_return": float(h.returns.max())} for h in hist]
    print(format_table(rows, title=f"{folder}: {len(hist)} tasks x {manifest['n_episodes']} episodes"))
    r = np.stack([h.returns for h in hist])
    print(f"mean return: first episode {r[:, 0].mean():.2f}, last episode {r[:, -1].mean():.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
