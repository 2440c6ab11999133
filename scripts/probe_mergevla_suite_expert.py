"""One MergeVLA suite expert, alone: train it (or read it from ``mergevla.data_dir``) for a seed
under the given overrides and run it on that suite's held-out episodes (one per task and
evaluation variation, the run's episodes for that suite). A quick way to tune what one expert
needs (the image experts' reach_push suite) without training and evaluating the other suites.
Each run adds or replaces one entry (``--tag``) of the JSON file ``--out``::

    python scripts/probe_mergevla_suite_expert.py --seed 0 --suite reach_push --tag markers \\
        --out results/mergevla/vision_tuning_seed0/reach_push_expert.json -- mergevla.markers=true
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
    ap.add_argument("--suite", required=True, help="the suite whose expert is probed")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from streammoe_envs.metaworld import SUITES

    from streammoe.control.mergevla.evaluate import SuitePolicy, summarise
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.devices import resolve_device
    from streammoe.runs import format_table

    cfg = _compose(args.experiment, [*args.overrides, f"seed={args.seed}"])
    if args.suite not in cfg.mergevla.suites:
        raise SystemExit(f"--suite {args.suite!r} is not one of the run's suites {list(cfg.mergevla.suites)}")
    pipe = Pipeline(cfg.mergevla, args.seed, resolve_device(cfg.device))
    head = "cross_attention"
    cached = pipe.is_cached("expert", head, args.suite)
    start = time.perf_counter()
    expert, _ = pipe.expert(head, args.suite)
    seconds = None if cached else time.perf_counter() - start
    policy = SuitePolicy([pipe.build(head, expert)], (args.suite,), "single")
    result = pipe.run_episodes(policy, tasks=list(SUITES[args.suite]), desc=f"{args.suite} expert")
    summary = summarise(result, (args.suite,))  # one suite: its success is the mean over its tasks
    entry = {"overrides": args.overrides, "seed": args.seed, "suite": args.suite,
             "episodes": summary["episodes"], "success": summary["success"],
             "per_task": summary["success_per_task"], "expert_train_seconds": seconds}
    write_tagged_entry(args.out, args.tag, entry)
    print(format_table([{"task": t, "success %": round(100 * s, 1)} for t, s in entry["per_task"].items()]
                       + [{"task": "mean", "success %": round(100 * entry["success"], 1)}],
                       title=f"{args.suite} expert, {args.tag} (seed {args.seed})"))


if __name__ == "__main__":
    main()
