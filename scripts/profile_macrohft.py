"""Time a MacroHFT run before and after a code change, side by side, and profile the current one.

The "before" code is a git revision checked out into a temporary worktree (``--before``, e.g. the
commit before the speed work); both runs use this environment's packages, run one after the
other in fresh processes (alternating when ``--repeats > 1``, so load on the machine affects
both alike), and the ratio of their wall times is reported. Two "after" runs are timed:

- ``same_split``: the current code on the old default split (train 0.7 / val 0.15, one fold), the
  like-for-like comparison (the current run also does per-epoch validation and the
  shrinkage x margin selection, which the old one did not);
- ``default``: the current default (the last walk-forward fold: a shorter training window).

Then one ``cProfile`` of the current default run (top functions by cumulative and own time).

    python scripts/profile_macrohft.py --before e971429 --out results/macrohft/profile.json

Writes a table to stdout and the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streammoe.runs import format_table  # noqa: E402

SAME_SPLIT = ["macrohft.splits.folds=1", "macrohft.splits.train=0.7", "macrohft.splits.val=0.15"]


def _timed_run(tree: Path, overrides: list[str], run_dir: Path) -> float:
    """Wall seconds of ``scripts/run.py experiment=macrohft`` run from ``tree``'s code."""
    env = dict(os.environ, PYTHONPATH=str(tree))  # the tree's packages before the installed ones
    cmd = [sys.executable, str(tree / "scripts" / "run.py"), "experiment=macrohft", "tensorboard=false",
           f"hydra.run.dir={run_dir}", *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    # the env package is importable as streammoe_envs from the tree's own envs/ folder
    (where / "streammoe_envs").symlink_to(where / "envs", target_is_directory=True)
    return where


def _profile(overrides: list[str], run_dir: Path, top: int = 15) -> dict[str, str]:
    from streammoe.cli import compose_config, run_experiment

    cfg = compose_config(["experiment=macrohft", "tensorboard=false", *overrides])
    prof = cProfile.Profile()
    prof.runcall(run_experiment, cfg, run_dir)
    out = {}
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(top)
        out[key] = buf.getvalue()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision of the code before the change")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "macrohft" / "profile.json")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {"before": [], "after_same_split": [], "after_default": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        before = _worktree(args.before, tmp_path / "before")
        try:
            for i in range(args.repeats):
                times["before"].append(_timed_run(before, args.overrides, tmp_path / f"b{i}"))
                times["after_same_split"].append(
                    _timed_run(ROOT, [*SAME_SPLIT, *args.overrides], tmp_path / f"s{i}"))
                times["after_default"].append(_timed_run(ROOT, args.overrides, tmp_path / f"d{i}"))
                print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
        profile = None if args.no_profile else _profile(args.overrides, tmp_path / "profile")
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    rows = [{"run": k, "mean_s": mean[k], "runs_s": ", ".join(f"{t:.1f}" for t in v),
             "before / this": mean["before"] / mean[k]} for k, v in times.items()]
    print(format_table(rows, title=f"MacroHFT run time, before = {args.before}"))
    report = {"before_rev": args.before, "overrides": args.overrides, "seconds": times, "mean_seconds": mean,
              "speedup_same_split": mean["before"] / mean["after_same_split"],
              "speedup_default": mean["before"] / mean["after_default"], "cpu_count": os.cpu_count(),
              "profile_current_default": profile}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
