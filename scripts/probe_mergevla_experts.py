"""Why MergeVLA's image experts fail: do they overfit the demonstrated variations, and does the
reach policy use the goal it sees?

Two probes of one seed's individual experts (oracle suite), read from ``mergevla.data_dir`` or
trained there under the given overrides:

1. **Training vs held-out variations**: the experts' success on ``--n`` of the variations they
   were trained on and on ``--n`` held-out ones (the evaluation's), per task. Equal rates mean
   the experts do not overfit the demonstrated placements: more variations would not help.
2. **Does the policy go where the goal is?** ``--trace-task`` (default reach-v3) on the held-out
   variations, the policy run closed loop: the hand's final position and the closest it came to
   the target (the goal marker for reach-v3, the object for any other task), next to the
   spread of the targets. Final hand positions that barely vary while
   the goals do mean the policy ignores the goal.

Each run adds or replaces one entry (``--tag``) of the JSON file ``--out``::

    python scripts/probe_mergevla_experts.py --seed 0 --tag workspace \\
        --out results/mergevla/vision_tuning_seed0/experts_probe.json
    python scripts/probe_mergevla_experts.py --seed 0 --tag corner3 \\
        --out results/mergevla/vision_tuning_seed0/experts_probe.json -- mergevla.camera=corner3
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _target(env: Any, task: str) -> Any:
    """Where the trace measures the hand's distance to: the goal marker (reach) or the object."""
    return env._mw._target_pos if task == "reach-v3" else env._mw._get_pos_objects()[:3]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_mergevla import _compose, tagged_probe_parser, write_tagged_entry

    ap = tagged_probe_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="variations per split and task")
    ap.add_argument("--tasks", nargs="+", default=None, help="tasks of probe 1 (default: every suite's)")
    ap.add_argument("--trace-task", default="reach-v3")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import numpy as np
    import torch
    from streammoe_envs.metaworld import SUITES, split_variations
    from streammoe_envs.metaworld.env import MetaWorldTaskEnv

    from streammoe.control.mergevla.evaluate import evaluate
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.devices import resolve_device
    from streammoe.runs import format_table

    cfg = _compose(args.experiment, [*args.overrides, f"seed={args.seed}"])
    c = cfg.mergevla
    if not c.vision:
        raise SystemExit("the probe is for image experts (mergevla.vision=true)")
    device = resolve_device(cfg.device)
    pipe = Pipeline(c, args.seed, device)
    if args.trace_task not in pipe.tasks:
        raise SystemExit(f"--trace-task {args.trace_task!r} is not a task of the suites {list(pipe.suites)}; "
                         f"choose one of {list(pipe.tasks)}")
    tasks = list(pipe.tasks) if args.tasks is None else args.tasks
    unknown = sorted(set(tasks) - set(pipe.tasks))
    if unknown:
        raise SystemExit(f"--tasks {unknown} are not tasks of the suites {list(pipe.suites)}")
    policy, _ = pipe.policy("cross_attention", "experts/oracle")
    train, heldout = split_variations(int(c.demos.n_heldout), int(c.demos.split_seed))
    splits = {"train": list(train[: args.n]), "heldout": list(heldout[: args.n])}
    success: dict[str, dict[str, float]] = {}
    for name, variations in splits.items():
        result = evaluate(policy, tasks, variations, vision=True, image_size=int(c.image_size),
                          camera=str(c.camera), device=device, desc=f"experts on {name} variations",
                          markers=bool(c.markers))
        per_task: dict[str, list[bool]] = {}
        for r in result.episodes:
            per_task.setdefault(r.task, []).append(r.success)
        success[name] = {t: float(np.mean(v)) for t, v in per_task.items()}
        success[name]["mean"] = float(np.mean([r.success for r in result.episodes]))

    task = args.trace_task
    suite = next(s for s in pipe.suites if task in SUITES[s])  # (checked above)
    model = policy.models[pipe.suites.index(suite)]
    trace = []
    for v in splits["heldout"]:
        # a fresh env per episode, as the evaluation builds them: a reused env's reset(options=...)
        # starts push-v3 a hair differently (a pixel value off here and there)
        env = MetaWorldTaskEnv(task, v, vision=True, image_size=int(c.image_size), camera=str(c.camera),
                               markers=bool(c.markers))
        obs, _ = env.reset()
        target = np.array(_target(env, task), float)
        closest, done, info = np.inf, False, {}
        while not done:
            batch = {"image": torch.from_numpy(obs["image"][None]).to(device),
                     "proprio": torch.from_numpy(obs["proprio"][None]).to(device),
                     "instruction": torch.from_numpy(obs["instruction"][None]).to(device)}
            with torch.no_grad():
                plan = model.act(batch).cpu().numpy()[0]
            obs, _, terminated, truncated, info, _ = env.step_chunk(plan)
            closest = min(closest, float(np.linalg.norm(obs["proprio"][:3] - _target(env, task))))
            done = terminated or truncated
        trace.append({"variation": int(v), "success": bool(info["success"]), "target": target.tolist(),
                      "final_hand": obs["proprio"][:3].astype(float).tolist(), "closest_m": closest})
        env.close()
    targets = np.array([t["target"] for t in trace])
    finals = np.array([t["final_hand"] for t in trace])

    def spread(x: Any) -> float:  # mean distance to the mean, cm
        return 100 * float(np.linalg.norm(x - x.mean(0), axis=1).mean())

    entry = {"overrides": args.overrides, "seed": args.seed, "variations": splits, "success": success,
             "trace": {"task": task, "target_spread_cm": spread(targets),
                       "final_hand_spread_cm": spread(finals),
                       "final_hand_to_target_cm": 100 * float(np.linalg.norm(finals - targets, axis=1).mean()),
                       "episodes": trace}}
    write_tagged_entry(args.out, args.tag, entry)
    rows = [{"task": t, "train %": round(100 * success["train"][t], 1),
             "held-out %": round(100 * success["heldout"][t], 1)} for t in [*tasks, "mean"]]
    print(format_table(rows, title=f"MergeVLA image experts, {args.tag} (seed {args.seed})"))
    tr = entry["trace"]
    print(f"{task}: targets spread {tr['target_spread_cm']:.1f} cm, final hand positions spread "
          f"{tr['final_hand_spread_cm']:.1f} cm, final hand to target {tr['final_hand_to_target_cm']:.1f} cm")


if __name__ == "__main__":
    main()
