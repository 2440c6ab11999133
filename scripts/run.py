"""Run an experiment: ``python scripts/run.py experiment=<name> [key=value ...]``.

Same as the ``streammoe-run`` console script. ``-m`` sweeps (``hydra/launcher=joblib`` runs the
jobs in parallel locally). See ``conf/`` for experiments and their keys.
"""

from streammoe.cli import main

if __name__ == "__main__":
    main()
