"""Where a MergeVLA merge loses a suite: the merged policy of one suite (its mask and head) with
one part of its weights put back to that suite's expert's, and the expert with one part taken
from the merge, each run on the suite's held-out episodes (oracle suite, the run's episodes for
that suite). Parts: the vision encoder, its patch convolutions (the encoder without the keypoint
branch), its keypoint branch, the backbone. Stages are read from (or trained into)
``mergevla.data_dir``. Each run adds or replaces one entry (``--tag``) of the JSON file ``--out``::

    python scripts/probe_mergevla_merge_parts.py --seed 0 --suite reach_push --tag ties_mask_refit \\
        --out results/mergevla/vision_tuning_seed0/merge_parts.json
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the hybrids: ``(name, start from, the part taken from the other model)``; ``None``: no part
HYBRIDS = (("merged", "merged", None), ("merged + expert's vision encoder", "merged", "vision"),
           ("merged + expert's patch convolutions", "merged", "patches"),
           ("merged + expert's keypoint branch", "merged", "keypoints"),
           ("merged + expert's backbone", "merged", "backbone"),
           ("expert + merged vision encoder", "expert", "vision"), ("expert", "expert", None))


def hybrids(merged: Mapping[str, Any], expert: Mapping[str, Any], model: Any) -> dict[str, dict[str, Any]]:
    """``{name: state dict}`` of :data:`HYBRIDS` from one suite's merged and expert state dicts
    (``model``: a ``TinyVLA`` of the run, which names the parts' key prefixes)."""
    vision, keypoints = model.vision_encoder_prefix(), model.keypoint_branch_prefix()
    selects = {"vision": lambda k: k.startswith(vision), "keypoints": lambda k: k.startswith(keypoints),
               "patches": lambda k: k.startswith(vision) and not k.startswith(keypoints),
               "backbone": lambda k: k.startswith("backbone.")}
    sources = {"merged": merged, "expert": expert}
    out = {}
    for name, first, part in HYBRIDS:
        other = sources["expert" if first == "merged" else "merged"]
        out[name] = {k: (other[k] if part is not None and selects[part](k) else v)
                     for k, v in sources[first].items()}
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_mergevla import _compose, tagged_probe_parser, write_tagged_entry

    ap = tagged_probe_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="the suite whose merge is probed")
    ap.add_argument("--variant", default="ties+mask+refit/oracle",
                    help="the merge whose suite model is probed (its route is not used)")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from streammoe_envs.metaworld import SUITES

    from streammoe.control.mergevla.config import MERGE_METHODS, variant_parts
    from streammoe.control.mergevla.evaluate import SuitePolicy, summarise
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.devices import resolve_device
    from streammoe.runs import format_table

    cfg = _compose(args.experiment, [*args.overrides, f"seed={args.seed}"])
    if args.suite not in cfg.mergevla.suites:
        raise SystemExit(f"--suite {args.suite!r} is not one of the run's suites {list(cfg.mergevla.suites)}")
    parts_of = variant_parts(args.variant)
    if parts_of.merge not in MERGE_METHODS:
        raise SystemExit(f"--variant {args.variant!r} merges nothing; name a merge, e.g. ties+mask+refit/oracle")
    if not cfg.mergevla.vision:
        raise SystemExit("the parts are the vision encoder's and the backbone's: run it on images (vision=true)")
    pipe = Pipeline(cfg.mergevla, args.seed, resolve_device(cfg.device))
    head = "cross_attention"
    t = pipe.suites.index(args.suite)
    _, experts, _ = pipe.experts(head)
    merged = pipe.merge(head, parts_of.merge, parts_of.refit).state_dict_for(t, masked=parts_of.masked)
    models = hybrids(merged, experts[t], pipe.build(head, experts[t]))
    entry: dict[str, Any] = {"overrides": args.overrides, "seed": args.seed, "suite": args.suite,
                             "variant": args.variant, "success": {}, "per_task": {}}
    start = time.perf_counter()
    for name, sd in models.items():
        policy = SuitePolicy([pipe.build(head, sd)], (args.suite,), "single")
        summary = summarise(pipe.run_episodes(policy, tasks=list(SUITES[args.suite]), desc=name), (args.suite,))
        entry["success"][name], entry["per_task"][name] = summary["success"], summary["success_per_task"]
        entry["episodes"] = summary["episodes"]
    entry["seconds"] = time.perf_counter() - start
    write_tagged_entry(args.out, args.tag, entry)
    print(format_table([{"model": n, "success %": round(100 * s, 1)} for n, s in entry["success"].items()],
                       title=f"{args.suite}: {args.variant} and its expert, part by part (seed {args.seed})"))


if __name__ == "__main__":
    main()
