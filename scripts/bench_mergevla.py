"""Benchmark MergeVLA: individual experts vs merged policies, masks on/off, oracle suite vs router.

For every seed, the experiment's stages run (``Pipeline``: demonstrations, base, one expert per
suite; each cached under ``mergevla.data_dir``, so the bench resumes where it stopped and shares
the demonstrations across seeds), then every variant of the grid is evaluated on the held-out
variations (each evaluation is cached too):

* ``experts/oracle`` (each suite's own expert), ``base/single`` (no expert: what pre-training
  alone does), ``naive_full/single`` (every weight averaged, one model);
* ``<merge>[+mask[+refit]]/<route>`` for merge in average, task arithmetic, TIES; without TALL
  masks, with them, and with the shared vector re-fitted to them on each suite's frames
  (``+refit``); with the oracle suite id and with the test-time router (expert heads always per
  suite);
* the self-attention action head (``--ablation``), merged the same way.

Prints a table (success per suite, mean over seeds with the spread and a 95 % interval over
seeds; router accuracy; routing overhead) and writes ``bench.json``, ``bench.md``,
``success.png`` and ``router_confusion.png`` (summed over seeds) into ``--out``; ``--videos DIR`` films one episode per suite of ``--video-variant`` (seed 0).

    python scripts/bench_mergevla.py --experiment mergevla_state --seeds 1 2 3 --jobs 2 --out results/mergevla/state
    python scripts/bench_mergevla.py --seeds 1 2 3 --jobs 2 --out results/mergevla/vision
    python scripts/bench_mergevla.py --experiment mergevla_smoke --seeds 0 --out /tmp/b   # seconds

``--runs DIR [DIR ...]`` makes the same table from finished ``experiment=mergevla`` run folders
(one per seed, same settings; ``metrics.json`` and ``results.json`` hold every episode) instead of
the stage cache, so seeds run in different sessions or on different machines pool into one table:

    python scripts/bench_mergevla.py --runs results/mergevla/vision_seed1 results/mergevla/vision_seed2 results/mergevla/vision_seed3 --out results/mergevla/vision

``--jobs 2`` runs seeds in parallel processes (one torch thread each); with ``--jobs 1`` each
seed's experts and evaluations run in ``mergevla.jobs`` worker processes instead. Extra Hydra
overrides go after ``--``.

``--timing DEVICE [DEVICE ...]`` measures instead, side by side for each device (e.g. ``cpu
cuda``): one expert training step (LoRA + action expert, ``mergevla.expert.batch_size`` frames,
synthetic data of the real shapes) and one evaluation episode (reach-v3, one held-out variation,
an untrained policy: every step of the episode runs); prints a table and writes ``timing.json``:

    python scripts/bench_mergevla.py --timing cpu cuda --out results/mergevla/timing
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

MERGES = ("average", "task_arithmetic", "ties")
GRID = ("experts/oracle", "base/single", "naive_full/single",
        *(f"{m}{mask}/{route}" for m in MERGES for mask in ("", "+mask", "+mask+refit")
          for route in ("oracle", "router")))
ABLATION = ("experts/oracle", "naive_full/single", "ties/oracle", "ties+mask/oracle", "ties+mask/router",
            "ties+mask+refit/router")


def _compose(experiment: str, overrides: list[str]) -> Any:
    from streammoe.cli import compose_config
    from streammoe.config import validate

    cfg = compose_config([f"experiment={experiment}", *overrides])
    validate(cfg)
    return cfg


def tagged_probe_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every seed-0 probe shares: ``--experiment``, ``--seed``, ``--tag`` (the
    entry's name in ``--out``), ``--out`` and the Hydra overrides after ``--``; add a probe's own
    before parsing."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--experiment", default="mergevla")
    ap.add_argument("--seed", type=int, default=0, help="a tuning seed (the bench reports 1-3)")
    ap.add_argument("--tag", required=True, help="the entry's name in --out")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    return ap


def write_tagged_entry(path: Path, tag: str, entry: dict[str, Any]) -> None:
    """Add or replace the entry ``tag`` of the JSON object in ``path`` (created if missing)."""
    out = json.loads(path.read_text()) if path.is_file() else {}
    out[tag] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


def run_seed(experiment: str, overrides: list[str], seed: int, variants: list[str], ablation: list[str],
             threads: int | None) -> dict[str, Any]:
    """Every variant of one seed (stages and evaluations cached); ``{name: summary}``."""
    import torch

    from streammoe.control.mergevla.evaluate import summarise
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.devices import resolve_device, seed_everything

    if threads:
        torch.set_num_threads(threads)
    cfg = _compose(experiment, overrides)
    seed_everything(seed)
    pipe = Pipeline(cfg.mergevla, seed, resolve_device(cfg.device))
    if threads is None:  # one seed at a time: its experts and evaluations in mergevla.jobs processes
        pipe.prepare([("cross_attention", v, None) for v in variants]
                     + [("self_attention", v, None) for v in ablation], int(cfg.mergevla.jobs))
    out: dict[str, Any] = {}
    for head, names in (("cross_attention", variants), ("self_attention", ablation)):
        for variant in names:
            t0 = time.perf_counter()
            result, cached = pipe.evaluate(head, variant)
            s = summarise(result, pipe.suites)
            s["seconds"] = result.seconds
            s["episode_success"] = {f"{e.task}/{e.variation}": bool(e.success) for e in result.episodes}
            key = variant if head == "cross_attention" else f"self_attention:{variant}"
            out[key] = s
            print(f"seed {seed} {key:40s} success {100 * s['success']:5.1f} %"
                  + (f"  router {100 * s['router_accuracy']:5.1f} %" if "router_accuracy" in s else "")
                  + ("  (cached)" if cached else f"  ({time.perf_counter() - t0:.0f} s)"), flush=True)
    merged = {}
    for m in MERGES:
        if any(v.startswith(f"{m}+mask") for v in variants):
            merged[m] = pipe.merge("cross_attention", m).stats.to_dict()
    _, _, info = pipe.demos()
    return {"variants": out, "mask_stats": merged, **info}


# settings that change no result: a run's folder may differ from another's in these
RUN_SETTINGS_WITHOUT_EFFECT = ("data_dir", "jobs", "eval.video", "eval.video_variant", "eval.video_size")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def per_seed_from_runs(run_dirs: list[Path]) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """``(per_seed, mergevla settings)`` read from finished ``experiment=mergevla`` run folders
    (``metrics.json``, ``results.json``, ``config_resolved.yaml``) instead of the stage cache, so a
    table can be made from runs of different sessions or machines. The runs must be of different
    seeds, with the same settings (but ``RUN_SETTINGS_WITHOUT_EFFECT``) and the same variants."""
    from omegaconf import OmegaConf

    per_seed: dict[int, dict[str, Any]] = {}
    settings: dict[str, Any] | None = None
    first: Path | None = None
    for run in run_dirs:
        paths = {n: run / n for n in ("metrics.json", "results.json", "config_resolved.yaml")}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{run} is not a finished mergevla run: missing {missing}")
        try:
            details = json.loads(paths["metrics.json"].read_text())["details"]
            episodes = json.loads(paths["results.json"].read_text())["episodes"]
            cfg = OmegaConf.to_container(OmegaConf.load(paths["config_resolved.yaml"]), resolve=True)
            run_settings = {k: v for k, v in _flatten(cfg["mergevla"]).items()
                            if k not in RUN_SETTINGS_WITHOUT_EFFECT}
            seed = int(cfg["seed"])
            variants = details["variants"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{run}: unreadable mergevla run files ({type(err).__name__}: {err})") from err
        if seed in per_seed:
            raise ValueError(f"{run} and an earlier run are both seed {seed}: give one run per seed")
        if settings is None:
            settings, first = run_settings, run
        elif run_settings != settings:
            keys = sorted(k for k in set(settings) | set(run_settings) if settings.get(k) != run_settings.get(k))
            raise ValueError(f"{run} differs from {first} in mergevla settings {keys}: "
                             "a table pools runs of one configuration")
        if set(variants) != set(episodes):
            raise ValueError(f"{run}: metrics.json and results.json name different variants")
        for name, summary in variants.items():
            summary["episode_success"] = {f"{e['task']}/{e['variation']}": bool(e["success"])
                                          for e in episodes[name]}
        per_seed[seed] = {"variants": variants, "mask_stats": details.get("mask_stats", {}),
                          **{k: details[k] for k in ("expert_success", "dropped_tasks", "demo_file")
                             if k in details}, "run_dir": str(run)}
    names = [set(r["variants"]) for r in per_seed.values()]
    if any(n != names[0] for n in names):
        raise ValueError(f"the runs evaluated different variants: {[sorted(n) for n in names]}")
    assert settings is not None
    return per_seed, settings


def _interval(values: list[float], clip: bool = True) -> tuple[float, float, float, float]:
    """Mean, standard deviation and a 95 % t-interval over seeds (``clip``: for rates, the
    interval clipped to [0, 1])."""
    from scipy import stats

    x = np.asarray(values, float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, 0.0, mean, mean
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1) * sd / np.sqrt(len(x)))
    if clip:
        return mean, sd, max(0.0, mean - half), min(1.0, mean + half)
    return mean, sd, mean - half, mean + half


def ratio_to_reference(per_seed: dict[int, dict[str, Any]], name: str, reference: str = "experts/oracle",
                       n_boot: int = 10_000, seed: int = 0) -> dict[str, Any] | None:
    """A variant's success as a share of ``reference``'s: per seed, the mean over seeds with its
    t-interval, and the pooled ratio (all seeds' episodes) with a 95 % paired bootstrap interval
    (episodes resampled within each seed, the same episodes for both; None without episodes)."""
    seeds = list(per_seed)
    rows = [(per_seed[s]["variants"][name], per_seed[s]["variants"][reference]) for s in seeds]
    if any(ref["success"] == 0 for _, ref in rows):
        return None
    out: dict[str, Any] = {"per_seed": [v["success"] / ref["success"] for v, ref in rows]}
    out["seeds"] = _interval(out["per_seed"], clip=False)
    if not all("episode_success" in v and "episode_success" in ref for v, ref in rows):
        return out
    pairs = []
    for v, ref in rows:
        keys = sorted(ref["episode_success"])
        if set(keys) != set(v["episode_success"]):
            return out
        pairs.append(np.array([[v["episode_success"][k], ref["episode_success"][k]] for k in keys], float))
    rng = np.random.default_rng(seed)
    num = np.zeros(n_boot)
    den = np.zeros(n_boot)
    for pr in pairs:  # resample within each seed
        idx = rng.integers(0, len(pr), (n_boot, len(pr)))
        num += pr[idx, 0].sum(axis=1)
        den += pr[idx, 1].sum(axis=1)
    boot = num[den > 0] / den[den > 0]  # a resample where the reference never succeeds has no ratio
    pooled = float(sum(p[:, 0].sum() for p in pairs) / sum(p[:, 1].sum() for p in pairs))
    out["pooled"] = (pooled, float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
    return out


def aggregate(per_seed: dict[int, dict[str, Any]], suites: list[str]) -> dict[str, Any]:
    names = list(next(iter(per_seed.values()))["variants"])
    table = {}
    for name in names:
        runs = [per_seed[s]["variants"][name] for s in per_seed]
        row: dict[str, Any] = {"success": _interval([r["success"] for r in runs]),
                               "success_per_suite": {su: _interval([r["success_per_suite"][su] for r in runs])
                                                     for su in suites},
                               "per_seed": [r["success"] for r in runs]}
        # the share of the experts' success: of the same action head's experts
        reference = "self_attention:experts/oracle" if name.startswith("self_attention:") else "experts/oracle"
        if reference in names and name != reference:
            ratio = ratio_to_reference(per_seed, name, reference)
            if ratio is not None:
                row["of_experts"] = ratio
        if "router_accuracy" in runs[0]:
            row["router_accuracy"] = _interval([r["router_accuracy"] for r in runs])
            row["router_confusion"] = np.sum([r["router_confusion"] for r in runs], axis=0).tolist()
            row["route_overhead"] = _interval([r["route_overhead"] for r in runs])
            row["route_s_per_episode"] = float(np.mean([r["seconds"]["route"] / r["episodes"] for r in runs]))
            row["episode_s"] = float(np.mean([r["seconds"]["total"] / r["episodes"] for r in runs]))
        table[name] = row
    return table


def markdown(table: dict[str, Any], suites: list[str], title: str) -> str:
    head = ("| variant | success % (mean ± sd, 95 % CI) | % of experts (pooled, 95 % CI) | "
            + " | ".join(suites) + " | router acc % | route overhead % |")
    lines = [f"### {title}", "", head, "|" + "---|" * (len(suites) + 5)]
    for name, r in table.items():
        m, sd, lo, hi = r["success"]
        cells = [f"{100 * r['success_per_suite'][s][0]:.1f}" for s in suites]
        acc = f"{100 * r['router_accuracy'][0]:.1f}" if "router_accuracy" in r else ""
        ovh = f"{100 * r['route_overhead'][0]:.2f}" if "route_overhead" in r else ""
        share = ""
        if "pooled" in r.get("of_experts", {}):
            pm, plo, phi = r["of_experts"]["pooled"]
            share = f"{100 * pm:.0f} [{100 * plo:.0f}, {100 * phi:.0f}]"
        lines.append(f"| {name} | {100 * m:.1f} ± {100 * sd:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {share} | "
                     + " | ".join(cells) + f" | {acc} | {ovh} |")
    return "\n".join(lines) + "\n"


def film(experiment: str, overrides: list[str], variant: str, out: Path) -> dict[str, Any]:
    from streammoe.control.mergevla.evaluate import summarise
    from streammoe.control.mergevla.experiment import Pipeline
    from streammoe.devices import resolve_device

    cfg = _compose(experiment, overrides)
    pipe = Pipeline(cfg.mergevla, 0, resolve_device(cfg.device))
    result, _ = pipe.evaluate("cross_attention", variant, video_dir=out)
    return summarise(result, pipe.suites)


def timing(experiment: str, overrides: list[str], devices: list[str], steps: int = 10) -> list[dict[str, Any]]:
    """Expert training step and evaluation episode wall time per device (see the docstring)."""
    import torch
    from streammoe_envs.metaworld import split_variations

    from streammoe.control.mergevla.data import SuiteData
    from streammoe.control.mergevla.evaluate import SuitePolicy, evaluate
    from streammoe.control.mergevla.experiment import model_config
    from streammoe.control.mergevla.model import TinyVLA
    from streammoe.control.mergevla.train import TrainSettings, train_expert
    from streammoe.devices import resolve_device

    cfg = _compose(experiment, overrides)
    c = cfg.mergevla
    mcfg = model_config(c, "cross_attention", 0)
    n, rng = 256, np.random.default_rng(0)
    first = ({"image": rng.integers(0, 256, (n, c.image_size, c.image_size, 3), dtype=np.uint8)}
             if c.vision else {"state": rng.normal(size=(n, 17)).astype(np.float32)})
    data = SuiteData(suite="reach_push", tasks=("reach-v3",),
                     obs={**first, "proprio": rng.normal(size=(n, 4)).astype(np.float32),
                          "instruction": np.tile(np.array([[2, 1, 12] + [0] * 9]), (n, 1))},
                     actions=rng.uniform(-1, 1, (n, mcfg.chunk, 4)).astype(np.float32),
                     action_valid=np.ones((n, mcfg.chunk), bool), task_index=np.zeros(n, np.int64),
                     episode_index=np.zeros(n, np.int64), step=np.arange(n))
    base = TinyVLA(mcfg).state_dict()
    e = c.expert
    rows = []
    _, heldout = split_variations(int(c.demos.n_heldout), int(c.demos.split_seed))
    for name in devices:
        device = resolve_device(name)
        settings = TrainSettings(steps=steps, batch_size=int(e.batch_size), lr=float(e.lr),
                                 weight_decay=0.0, grad_clip=1.0, shift=int(e.shift), log_every=1)
        _, hist = train_expert(mcfg, base, data, settings, lora_rank=int(e.lora_rank),
                               lora_alpha=float(e.lora_alpha), lora_target=str(e.lora_target),
                               shared_lr_scale=float(e.shared_lr_scale), seed=0, device=device)
        secs = [b["seconds"] - a["seconds"] for a, b in zip(hist, hist[1:])]  # the first step warms up
        model = TinyVLA(mcfg)
        model.load_state_dict(base)
        policy = SuitePolicy([model.to(device).eval()], ("reach_push",), "single")
        t0 = time.perf_counter()
        res = evaluate(policy, ["reach-v3"], [heldout[0]], vision=bool(c.vision), image_size=int(c.image_size),
                       camera=str(c.camera), device=device, desc=f"timing {name}",
                       markers=bool(c.markers))
        rows.append({"device": str(device), "train_step_ms": 1000 * float(np.median(secs)),
                     "episode_s": time.perf_counter() - t0, "episode_steps": res.episodes[0].steps,
                     "policy_s": res.seconds["policy"], "simulation_s": res.seconds["simulation"],
                     "torch_threads": torch.get_num_threads()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="mergevla")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="reporting seeds (seed 0 was the tuning seed)")
    ap.add_argument("--variants", nargs="+", default=list(GRID))
    ap.add_argument("--ablation", nargs="*", default=list(ABLATION),
                    help="variants with the self-attention action head (none: --ablation)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds in parallel processes")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_mergevla"))
    ap.add_argument("--videos", type=Path, default=None, help="film one episode per suite here")
    ap.add_argument("--video-variant", default="ties+mask+refit/router")
    ap.add_argument("--runs", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                    help="make the table from these finished experiment=mergevla run folders "
                         "(one per seed) instead of the stage cache; --seeds/--variants unused")
    ap.add_argument("--timing", nargs="+", default=None, metavar="DEVICE",
                    help="time a training step and an evaluation episode on these devices instead")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.runs and (args.timing or args.videos is not None):
        ap.error("--runs reads finished runs: it does not go with --timing or --videos")
    if args.timing:
        from streammoe.runs import format_table

        rows = timing(args.experiment, args.overrides, args.timing)
        print(format_table(rows, title="MergeVLA timing (one training step, one evaluation episode)"))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "timing.json").write_text(json.dumps({"experiment": args.experiment,
                                                          "overrides": args.overrides, "rows": rows}, indent=1))
        return
    start = time.perf_counter()
    if args.runs:
        per_seed, settings = per_seed_from_runs(args.runs)
        seeds = sorted(per_seed)
        per_seed = {s: per_seed[s] for s in seeds}
        suites = list(settings["suites"])
        title = f"MergeVLA runs {' '.join(str(r) for r in args.runs)} (seeds {seeds})"
        _write_outputs(args, aggregate(per_seed, suites), per_seed, suites, seeds, title,
                       {"runs": [str(r) for r in args.runs], "config": settings}, start)
        return
    cfg = _compose(args.experiment, args.overrides)  # fails early on a bad override
    suites = list(cfg.mergevla.suites)
    if args.jobs > 1:
        # the demonstrations first (shared by every seed), then the seeds in parallel
        from streammoe.control.mergevla.experiment import Pipeline
        from streammoe.devices import resolve_device

        Pipeline(cfg.mergevla, args.seeds[0], resolve_device(cfg.device)).demos()
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            outs = pool.starmap(run_seed, [(args.experiment, args.overrides, s, args.variants,
                                            args.ablation, 1) for s in args.seeds])
    else:
        outs = [run_seed(args.experiment, args.overrides, s, args.variants, args.ablation, None)
                for s in args.seeds]
    per_seed = dict(zip(args.seeds, outs))
    title = f"MergeVLA {args.experiment} {' '.join(args.overrides)} (seeds {args.seeds})"
    _write_outputs(args, aggregate(per_seed, suites), per_seed, suites, args.seeds, title,
                   {"experiment": args.experiment, "overrides": args.overrides,
                    "config": _plain(cfg.mergevla)}, start)


def _write_outputs(args: argparse.Namespace, table: dict[str, Any], per_seed: dict[int, dict[str, Any]],
                   suites: list[str], seeds: list[int], title: str, source: dict[str, Any],
                   start: float) -> None:
    """Print the table; write ``bench.md``, ``bench.json`` and the plots into ``--out`` (and film
    into ``--videos``)."""
    md = markdown(table, suites, title)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    videos = None
    if args.videos is not None:
        videos = film(args.experiment, args.overrides, args.video_variant, args.videos)
    (args.out / "bench.md").write_text(md)
    from streammoe.control.mergevla.evaluate import plot_confusion, plot_success

    means = {n: {"success_per_suite": {s: r["success_per_suite"][s][0] for s in suites},
                 **({"router_confusion": r["router_confusion"]} if "router_confusion" in r else {})}
             for n, r in table.items()}
    plot_success(means, suites, args.out / "success.png", title=f"{title}: mean success per suite")
    plot_confusion(means, suites, args.out / "router_confusion.png")
    (args.out / "bench.json").write_text(json.dumps({
        **source, "seeds": seeds, "suites": suites, "table": table, "per_seed": per_seed,
        "video_run": videos, "wall_seconds": time.perf_counter() - start}, indent=1))


def _plain(c: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(c, resolve=True)


if __name__ == "__main__":
    main()
