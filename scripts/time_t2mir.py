"""Time T2MIR's hot path: training steps, cached vs recomputed evaluation, and the MoE dispatch.

Three measurements, on synthetic random inputs (a step's cost does not depend on the values):

1. **Training step**: the median ms of one ``Trainer.train_step`` (sampling, forward, losses,
   backward, AdamW, EMA) for AD and T2MIR-AD at equal width (``d_model``), in fp32 and bf16
   (autocast), measured round-robin in one process (load from other processes hits every
   variant alike), warm-up steps excluded, ``torch.cuda.synchronize()`` around each step on CUDA.
   Target: T2MIR-AD's step <= 1.5x AD's.
2. **Evaluation step**: one cached step (``run_tokens`` on the 3 new tokens ``(a, r, s)`` with a
   KV cache prefilled with ``context_episodes`` episodes) vs recomputing the whole context
   (``run_tokens`` on all the tokens, no cache), as a speed-up ratio. Target: >= 10x.
3. **MoE dispatch**: ``streammoe.routing.sparse_dispatch`` vs the previous implementation (a loop
   with one ``torch.nonzero`` per expert, kept below as :func:`sparse_dispatch_loop`) on the token
   MoE of the preset (``batch x tokens`` rows, top-2 of 6 experts), forward+backward and forward.

Presets: ``default`` is the Cheetah-Vel CPU config (obs 17, act 6, horizon 100, d_model 64, 3
layers, 4 heads, expert hidden 128, 4 episodes = 1,200 tokens, batch 16); ``gpu`` the paper's scale
(horizon 200, d_model 256, 3 layers, 8 heads, expert hidden 256, 4 episodes = 2,400 tokens, batch
24); ``tiny`` is for tests (seconds).

    python scripts/time_t2mir.py --device cpu --out results/t2mir/timing_cpu.json
    python scripts/time_t2mir.py --preset gpu --device cuda --out results/t2mir/timing_cuda.json
    python scripts/time_t2mir.py --quick   # fewer rounds

Prints a table and writes the JSON (device name, torch version, threads, shapes, every median).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streammoe.control.t2mir.data import ContextSampler, History  # noqa: E402
from streammoe.control.t2mir.model import ICRLTransformer, KVCache, ModelConfig, variant_flags  # noqa: E402
from streammoe.control.t2mir.train import TrainConfig, Trainer  # noqa: E402
from streammoe.devices import resolve_device  # noqa: E402
from streammoe.routing import sparse_dispatch, top_k_gate  # noqa: E402
from streammoe.runs import format_table  # noqa: E402

PRESETS: dict[str, dict[str, int]] = {
    "default": dict(obs_dim=17, act_dim=6, horizon=100, d_model=64, n_layers=3, n_heads=4, expert_hidden=128,
                    context_episodes=4, batch_size=16, eval_batch=2),
    "gpu": dict(obs_dim=17, act_dim=6, horizon=200, d_model=256, n_layers=3, n_heads=8, expert_hidden=256,
                context_episodes=4, batch_size=24, eval_batch=5),
    "tiny": dict(obs_dim=3, act_dim=2, horizon=5, d_model=16, n_layers=2, n_heads=2, expert_hidden=16,
                 context_episodes=2, batch_size=4, eval_batch=2),
}
VARIANTS = ("ad", "t2mir")
PRECISIONS = ("fp32", "bf16")
TARGET_TRAIN_RATIO = 1.5  # T2MIR-AD step / AD step, at most
TARGET_EVAL_SPEEDUP = 10.0  # recomputing the context / one cached step, at least


def sparse_dispatch_loop(x: Tensor, weights: Tensor, experts: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
    """The previous ``sparse_dispatch``: one ``torch.nonzero`` (a host synchronisation) per expert."""
    out: Tensor | None = None
    for i, expert in enumerate(experts):
        rows = torch.nonzero(weights[:, i], as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        y = expert(x.index_select(0, rows)) * weights[rows, i].unsqueeze(-1)
        if out is None:
            out = torch.zeros(x.shape[0], y.shape[-1], dtype=y.dtype, device=y.device)
        out = out.index_add(0, rows, y)
    if out is None:
        probe = experts[0](x[:0])
        out = torch.zeros(x.shape[0], probe.shape[-1], dtype=probe.dtype, device=x.device)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall ms of ``fn()``, the device's queue drained before and after."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return 1000.0 * (time.perf_counter() - t0)


def round_robin(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int, warmup: int
                ) -> dict[str, float]:
    """Median ms of every function, called in turn ``warmup + rounds`` times (warm-up not counted)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            ms = _timed(fn, device)
            if r >= warmup:
                times[name].append(ms)
    return {k: statistics.median(v) for k, v in times.items()}


def synthetic_histories(p: dict[str, int], n_tasks: int, seed: int = 0) -> list[History]:
    rng = np.random.default_rng(seed)
    shape = (p["context_episodes"] + 2, p["horizon"])
    return [History(rng.standard_normal((*shape, p["obs_dim"])).astype(np.float32),
                    rng.uniform(-1, 1, (*shape, p["act_dim"])).astype(np.float32),
                    -rng.random(shape).astype(np.float32), np.zeros(1, np.float32))
            for _ in range(n_tasks)]


def model_config(p: dict[str, int], width: int) -> ModelConfig:
    return ModelConfig(obs_dim=p["obs_dim"], act_dim=p["act_dim"], horizon=p["horizon"], d_model=width,
                       n_layers=p["n_layers"], n_heads=p["n_heads"], expert_hidden=p["expert_hidden"])


def time_training(p: dict[str, int], widths: Sequence[int], device: torch.device, rounds: int, warmup: int
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """``{width: {variant: {precision: median ms per train step}}}``."""
    hist = synthetic_histories(p, n_tasks=max(2, p["batch_size"] // 2))
    steps: dict[str, Callable[[], Any]] = {}
    for width in widths:
        for variant in VARIANTS:
            for precision in PRECISIONS:
                tcfg = TrainConfig(steps=10**6, batch_size=p["batch_size"],
                                   context_episodes=p["context_episodes"], warmup_steps=0, precision=precision)
                sampler = ContextSampler(hist, p["context_episodes"], p["batch_size"], 0)
                trainer = Trainer(variant, model_config(p, width), tcfg, device, sampler, seed=0)
                steps[f"{width}/{variant}/{precision}"] = trainer.train_step
    med = round_robin(steps, device, rounds, warmup)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, ms in med.items():
        width, variant, precision = key.split("/")
        out.setdefault(width, {}).setdefault(variant, {})[precision] = ms
    return out


def _copy_cache(c: KVCache) -> KVCache:
    """A cache that shares ``c``'s tensors: running new tokens on it leaves ``c`` as it was."""
    return KVCache(keys=list(c.keys), values=list(c.values), task_sum=c.task_sum, length=c.length)


def time_evaluation(p: dict[str, int], widths: Sequence[int], device: torch.device, rounds: int, warmup: int
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """``{width: {variant: {cached_ms, recompute_ms, speedup}}}`` (fp32, eval mode, no grad)."""
    g = torch.Generator().manual_seed(0)
    b, s = p["eval_batch"], p["context_episodes"] * p["horizon"]
    obs = torch.randn(b, s + 1, p["obs_dim"], generator=g)
    act = torch.rand(b, s + 1, p["act_dim"], generator=g) * 2 - 1
    rew = torch.randn(b, s + 1, generator=g)
    t = torch.arange(s + 1).remainder(p["horizon"]).expand(b, s + 1)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for width in widths:
        fns: dict[str, Callable[[], Any]] = {}
        for variant in VARIANTS:
            token, task, _ = variant_flags(variant)
            cfg = model_config(p, width)
            cfg.token_moe, cfg.task_moe = token, task
            model = ICRLTransformer(cfg).to(device).eval()
            with torch.no_grad():
                # context: context_episodes whole episodes (3 s tokens); then the 3 tokens of one step
                tokens = model.embed_steps(*(z.to(device) for z in (obs, act, rew, t)))
                cache = model.new_cache()
                model.run_tokens(tokens[:, :-3], cache)

            def cached(model: ICRLTransformer = model, tokens: Tensor = tokens, cache: KVCache = cache
                       ) -> None:
                with torch.no_grad():
                    model.run_tokens(tokens[:, -3:], _copy_cache(cache))

            def recompute(model: ICRLTransformer = model, tokens: Tensor = tokens) -> None:
                with torch.no_grad():
                    model.run_tokens(tokens)

            fns[f"{variant}/cached"], fns[f"{variant}/recompute"] = cached, recompute
        med = round_robin(fns, device, rounds, warmup)
        out[str(width)] = {v: {"cached_ms": med[f"{v}/cached"], "recompute_ms": med[f"{v}/recompute"],
                               "speedup": med[f"{v}/recompute"] / med[f"{v}/cached"],
                               "context_tokens": 3 * s, "new_tokens": 3} for v in VARIANTS}
    return out


def time_dispatch(p: dict[str, int], device: torch.device, rounds: int, warmup: int) -> dict[str, Any]:
    """Old vs new ``sparse_dispatch`` on the preset's token MoE (T2MIR: experts of width d/2)."""
    torch.manual_seed(0)
    d, n_experts, k = p["d_model"], 6, 2
    rows = p["batch_size"] * 3 * p["context_episodes"] * p["horizon"]
    hidden = p["expert_hidden"]
    experts = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d // 2))
                            for _ in range(n_experts)).to(device)
    x = torch.randn(rows, d, device=device, requires_grad=True)
    logits = torch.randn(rows, n_experts, device=device, requires_grad=True)
    impls = {"loop_nonzero": sparse_dispatch_loop, "grouped": sparse_dispatch}
    with torch.no_grad():
        w = top_k_gate(logits, k)
        a, b = (impls[n](x, w, list(experts)) for n in impls)
        max_diff = float((a - b).abs().max())

    def fwd_bwd(fn: Callable[..., Tensor]) -> Callable[[], None]:
        def run() -> None:
            experts.zero_grad(set_to_none=True)
            x.grad = logits.grad = None
            fn(x, top_k_gate(logits, k), list(experts)).square().mean().backward()
        return run

    def fwd(fn: Callable[..., Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn(x, w, list(experts))
        return run

    fns = {**{f"{n}/fwd_bwd": fwd_bwd(f) for n, f in impls.items()},
           **{f"{n}/fwd": fwd(f) for n, f in impls.items()}}
    med = round_robin(fns, device, rounds, warmup)
    return {"rows": rows, "d_model": d, "expert_hidden": p["expert_hidden"], "n_experts": n_experts, "k": k,
            "max_abs_diff": max_diff,
            **{key.replace("/", "_") + "_ms": ms for key, ms in med.items()},
            "speedup_fwd_bwd": med["loop_nonzero/fwd_bwd"] / med["grouped/fwd_bwd"],
            "speedup_fwd": med["loop_nonzero/fwd"] / med["grouped/fwd"]}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu | cuda | auto (CUDA when torch sees a GPU)")
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--widths", type=int, nargs="+", default=None,
                    help="d_model values (default: the preset's)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timed rounds per measurement (default 10; --quick 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up")
    ap.add_argument("--out", default=None, help="JSON path (default results/t2mir/timing_<device>.json)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 10)
    warmup = 1 if args.quick else args.warmup
    if rounds < 1 or warmup < 0:
        ap.error(f"--rounds must be >= 1 and --warmup >= 0, got {rounds} and {warmup}")
    p = PRESETS[args.preset]
    widths = args.widths or [p["d_model"]]
    for w in widths:
        if w % p["n_heads"] or w % 2:
            ap.error(f"every width must be even and a multiple of n_heads={p['n_heads']}, got {w}")
    out_path = Path(args.out) if args.out else ROOT / "results" / "t2mir" / f"timing_{device.type}.json"

    t_start = time.perf_counter()
    train = time_training(p, widths, device, rounds, warmup)
    evaluation = time_evaluation(p, widths, device, 3 * rounds, warmup + 1)
    dispatch = time_dispatch(p, device, rounds, warmup)
    wall = time.perf_counter() - t_start

    ratios = {w: {prec: v["t2mir"][prec] / v["ad"][prec] for prec in PRECISIONS} for w, v in train.items()}
    targets = {
        "t2mir_train_step_over_ad": {
            "target": f"<= {TARGET_TRAIN_RATIO}", "values": ratios,
            "met": all(r <= TARGET_TRAIN_RATIO for v in ratios.values() for r in v.values())},
        "cached_eval_speedup": {
            "target": f">= {TARGET_EVAL_SPEEDUP}",
            "values": {w: {v: e[v]["speedup"] for v in VARIANTS} for w, e in evaluation.items()},
            "met": all(e[v]["speedup"] >= TARGET_EVAL_SPEEDUP for e in evaluation.values() for v in VARIANTS)},
    }
    result = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "preset": args.preset,
        "shapes": {**p, "tokens_per_context": 3 * p["context_episodes"] * p["horizon"], "widths": widths},
        "rounds": rounds, "warmup": warmup, "wall_s": wall,
        "train_step_ms": train, "eval_step": evaluation, "sparse_dispatch": dispatch, "targets": targets,
    }
    rows = []
    for w, v in train.items():
        for prec in PRECISIONS:
            rows.append({"width": w, "precision": prec, "ad_ms": v["ad"][prec], "t2mir_ms": v["t2mir"][prec],
                         "t2mir/ad": ratios[w][prec]})
    title = f"training step, median ms ({result['device_name']}, {result['threads']} threads)"
    print(format_table(rows, title))
    rows = [{"width": w, "variant": v, "cached_ms": e[v]["cached_ms"], "recompute_ms": e[v]["recompute_ms"],
             "speedup": e[v]["speedup"]} for w, e in evaluation.items() for v in VARIANTS]
    print(format_table(rows, "evaluation step: 3 new tokens with a KV cache vs the whole context recomputed"))
    print(format_table([{"pass": ps, "loop_nonzero_ms": dispatch[f"loop_nonzero_{ps}_ms"],
                         "grouped_ms": dispatch[f"grouped_{ps}_ms"], "speedup": dispatch[f"speedup_{ps}"]}
                        for ps in ("fwd_bwd", "fwd")], f"sparse_dispatch, {dispatch['rows']} rows"))
    for name, tgt in targets.items():
        print(f"target {name} {tgt['target']}: {'met' if tgt['met'] else 'NOT met'}")
    print(f"{wall:.0f} s in all")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
