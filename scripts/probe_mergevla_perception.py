"""How well a MergeVLA base sees: the error of its auxiliary heads (hand, object and goal
positions) on demonstration frames, per suite, for one configuration of the base.

The image experts train LoRA on the backbone and the action expert; the vision encoder stays the
base's, so what the base can locate bounds what every expert can do. This probe trains (or reads
from ``mergevla.data_dir``) the base of a seed under the given overrides and reports, per suite,
the mean Euclidean error (cm) of each auxiliary head on 512 random frames of that suite's
demonstrations (frames the base trained on: a measure of what it has learned to see, not of
generalisation), next to the targets' spread (the mean distance to their mean: what a constant
guess scores). Each run adds or replaces one entry (``--tag``) of the JSON file ``--out``::

    python scripts/probe_mergevla_perception.py --seed 0 --tag default \\
        --out results/mergevla/vision_tuning_seed0/perception.json
    python scripts/probe_mergevla_perception.py --seed 0 --tag keypoints16 \\
        --out results/mergevla/vision_tuning_seed0/perception.json -- mergevla.model.keypoints=16
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_mergevla import _compose, tagged_probe_parser, write_tagged_entry

    ap = tagged_probe_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=512, help="frames per suite")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import numpy as np
    import torch

    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.control.mergevla.train import aux_targets, obs_batch
    from streammoe.devices import resolve_device
    from streammoe.runs import format_table

    cfg = _compose(args.experiment, [*args.overrides, f"seed={args.seed}"])
    if not cfg.mergevla.vision:
        raise SystemExit("the probe is for image bases (mergevla.vision=true): a state base reads "
                         "the positions from its input")
    device = resolve_device(cfg.device)
    pipe = Pipeline(cfg.mergevla, args.seed, device)
    _, data, _ = pipe.demos()
    head = "cross_attention"
    cached = pipe.is_cached("base", head)
    start = time.perf_counter()
    base, _ = pipe.base(head)
    seconds = None if cached else time.perf_counter() - start
    model = pipe.build(head, base)
    rng = np.random.default_rng(args.seed)
    per_suite: dict[str, dict[str, float]] = {}
    for suite, frames in data.items():
        idx = rng.choice(len(frames), size=min(args.frames, len(frames)), replace=False)
        with torch.no_grad():
            pred = model.auxiliary_predictions(obs_batch(frames, idx, True, device))
            target = aux_targets(frames, idx, device)
        row = {}
        for name, y in target.items():
            row[f"{name}_error_cm"] = 100 * float((pred[name] - y).norm(dim=1).mean())
            row[f"{name}_spread_cm"] = 100 * float((y - y.mean(0)).norm(dim=1).mean())
        per_suite[suite] = row
    entry = {"overrides": args.overrides, "seed": args.seed, "frames_per_suite": args.frames,
             "base_train_seconds": seconds, "per_suite": per_suite}
    write_tagged_entry(args.out, args.tag, entry)
    print(format_table([{"suite": s, **{k: round(v, 2) for k, v in r.items()}} for s, r in per_suite.items()],
                       title=f"MergeVLA base perception, {args.tag} (seed {args.seed}), cm"))


if __name__ == "__main__":
    main()
