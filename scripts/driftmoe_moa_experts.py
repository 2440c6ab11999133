"""Faithful MoE-Data with MOA's Hoeffding trees as its experts (the reference code's experts).

The design note builds DriftMoE's experts from River's ``HoeffdingTreeClassifier``; the paper's
code builds them from CapyMOA's ``HoeffdingTree`` (MOA's Java tree). ``compare_moa_trees.py``
shows the two trees score alike on RBF but not on LED after a drift. This script answers the
question that matters for fidelity: faithful MoE-Data (``DriftMoEData(faithful=True)``, the same
router, targets and top-k learning) with MOA's trees in place of River's, side by side with the
River-tree version on the same rows of a MOA stream, test-then-train, every row counted.

The only change is the experts: ``MOAExpertsDriftMoEData`` overrides ``BaseDriftMoE``'s
``_new_tree`` hook with ``MOATree``, a River-API wrapper (``learn_one`` / ``predict_proba_one``
on dicts) around MOA's tree with the reference's settings (``compare_moa_trees.MOA_TREE_CLI``).

    python scripts/driftmoe_moa_experts.py --stream LEDa --seed 1 --scale 1.0 --learners moa_trees \
        --out results/driftmoe/full_1M_faithful_moa_experts_leda.json

Needs ``pip install 'streammoe[moa]'`` and Java; one core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_moa_trees import MOA_TREE_CLI  # noqa: E402
from river import base  # noqa: E402


class MOATree(base.Classifier):
    """MOA's Hoeffding tree behind River's classifier API, for one MOA stream's header (the
    features are the header's attributes in order, keys ``0 .. d-1``; labels are class indices)."""

    def __init__(self, header: Any, cli: str = MOA_TREE_CLI) -> None:
        from streammoe.stream.moa_streams import moa_classifier

        self.header = header
        self.cli = cli
        self._tree = moa_classifier(cli, header)
        self._d = int(header.numAttributes()) - 1  # the class is the last attribute

    def _instance(self, x: dict, y: int | None) -> Any:
        import jpype
        from com.yahoo.labs.samoa.instances import DenseInstance

        values = [float(x.get(i, 0.0)) for i in range(self._d)] + [float(y or 0)]
        inst = DenseInstance(1.0, jpype.JArray(jpype.JDouble)(values))
        inst.setDataset(self.header)
        return inst

    def learn_one(self, x: dict, y: int, w: float = 1.0) -> None:
        inst = self._instance(x, y)
        inst.setWeight(float(w))
        self._tree.trainOnInstance(inst)

    def predict_proba_one(self, x: dict) -> dict[int, float]:
        votes = list(self._tree.getVotesForInstance(self._instance(x, None)))
        total = sum(votes)
        if not votes or total <= 0:
            return {}
        return {i: v / total for i, v in enumerate(votes) if v > 0}

    @property
    def _raw_memory_usage(self) -> int:  # MOA's own estimate of the Java tree
        return int(self._tree.measureByteSize())


def make_models(header: Any, seed: int) -> dict[str, Any]:
    """Faithful MoE-Data twice, ``{"river_trees": River's trees, "moa_trees": MOA's trees}``, the
    second for the MOA stream whose ``header`` its trees are built on."""
    from streammoe.stream.driftmoe import DriftMoEData

    class MOAExpertsDriftMoEData(DriftMoEData):
        """Faithful MoE-Data whose experts are MOA's trees (``_new_tree`` is the hook)."""

        def _new_tree(self) -> Any:  # type: ignore[override]
            return MOATree(header)

    return {"river_trees": DriftMoEData(faithful=True, seed=seed),
            "moa_trees": MOAExpertsDriftMoEData(faithful=True, seed=seed)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", default="LEDa")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = the paper's 1M instances")
    ap.add_argument("--n-instances", type=int, default=None)
    ap.add_argument("--learners", default="river_trees,moa_trees",
                    help="which of the two (river_trees is bench_driftmoe.py's driftmoe_faithful)")
    ap.add_argument("--out", default="results/driftmoe/faithful_moa_experts.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("CAPYMOA_JVM_ARGS", "-Xmx2g -Xss10M -XX:ActiveProcessorCount=1")

    import torch

    from streammoe.runs import format_table, to_jsonable
    from streammoe.stream.evaluation import prequential
    from streammoe.stream.moa_streams import make_moa_stream

    torch.set_num_threads(1)
    stream = make_moa_stream(args.stream, scale=args.scale, seed=args.seed,
                             n_instances=args.n_instances)
    models = make_models(stream.moa_stream().getHeader(), args.seed)
    wanted = args.learners.split(",")
    if unknown := set(wanted) - set(models):
        raise SystemExit(f"--learners: unknown {sorted(unknown)}; choose from {sorted(models)}")
    models = {k: v for k, v in models.items() if k in wanted}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = out.with_suffix(".progress.csv")
    progress.write_text("instance,wall_s," + ",".join(models) + "\n")
    start = time.time()

    def log(n: int, acc: dict[str, float]) -> None:
        with progress.open("a") as f:
            f.write(f"{n},{time.time() - start:.1f}," + ",".join(f"{acc[k]:.5f}" for k in models) + "\n")

    results = prequential(models, stream, window=max(1000, stream.n_instances // 100),
                          memory_checkpoints=1, desc=f"{args.stream}@moa/{args.seed}", on_window=log)
    rows = [{"learner": name, "accuracy": 100 * r.accuracy, "kappa": 100 * r.kappa,
             "kappa_m": 100 * r.kappa_m, "kappa_t": 100 * r.kappa_t, "inst_per_s": r.inst_per_s}
            for name, r in results.items()]
    print(format_table(rows, title=f"Faithful MoE-Data on MOA's {args.stream}, seed {args.seed}: "
                                   "River's trees vs MOA's trees as experts"))
    out.write_text(json.dumps(to_jsonable({
        "command": " ".join(["python", *sys.argv]), "stream": args.stream, "seed": args.seed,
        "n": stream.n_instances, "drifts": stream.drifts, "moa_tree_cli": MOA_TREE_CLI,
        "rows": rows, "window_accuracy": {k: r.window_accuracy for k, r in results.items()},
        "wall_s": time.time() - start}), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
