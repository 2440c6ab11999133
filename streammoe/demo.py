"""Router-core demo (``experiment=router_demo``): a mixture of linear experts on a piecewise-linear
target. One loop, top to bottom: sample a batch, route, mix, step; then evaluate against a
single linear model and check that the router gave each region its own expert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from streammoe.demo_config import validated
from streammoe.devices import resolve_device
from streammoe.routing import (
    MLPRouter,
    RoutingStats,
    dense_mixture,
    get_gate,
    router_z_loss,
    sparse_dispatch,
    switch_balance_loss,
)
from streammoe.runs import RunRecorder, progress, pyplot, save_figure


def make_task(n_regions: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random slopes and intercepts, one linear function per angular sector of the plane."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_regions, 2, generator=g) * 2, torch.randn(n_regions, generator=g)


def sample(n: int, slopes: torch.Tensor, bias: torch.Tensor, noise: float, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` points of the plane with noisy targets and their region index."""
    x = torch.rand(n, 2, generator=g) * 2 - 1
    angle = torch.atan2(x[:, 1], x[:, 0]) + torch.pi  # [0, 2pi]
    region = (angle / (2 * torch.pi) * len(slopes)).long().clamp_max(len(slopes) - 1)
    y = (x * slopes[region]).sum(1) + bias[region] + noise * torch.randn(n, generator=g)
    return x, y.unsqueeze(1), region


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the mixture and the linear baseline; write metrics and the region/expert plot."""
    validated(cfg)  # every key's type and range, device (demo_config.py)
    c = cfg.demo
    device = resolve_device(cfg.device)
    slopes, bias = make_task(c.n_regions, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    router = MLPRouter(2, c.n_experts, hidden=tuple(c.hidden), seed=cfg.seed).to(device)
    experts = nn.ModuleList(nn.Linear(2, 1) for _ in range(c.n_experts)).to(device)
    baseline = nn.Linear(2, 1).to(device)
    opt = torch.optim.Adam([*router.parameters(), *experts.parameters(), *baseline.parameters()], lr=c.lr)
    gate = get_gate(c.gate)
    gate_kwargs = {"k": c.top_k} if c.gate == "top_k" else {}
    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    stats = RoutingStats(c.n_experts, window=c.batch_size)

    def mixture(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = router(x)
        w = gate(logits, **gate_kwargs)
        if c.gate == "softmax":  # dense gate: every expert runs
            y = dense_mixture(w, torch.stack([e(x) for e in experts], dim=1))
        else:  # sparse gate: only selected experts run
            y = sparse_dispatch(x, w, list(experts))
        return y, w, logits

    for step in progress(range(1, c.steps + 1), desc="router_demo"):
        x, y, _ = sample(c.batch_size, slopes, bias, c.noise_std, g)
        x, y = x.to(device), y.to(device)
        pred, w, logits = mixture(x)
        mse = (pred - y).pow(2).mean()
        base_mse = (baseline(x) - y).pow(2).mean()
        probs = torch.softmax(logits, -1)
        balance = switch_balance_loss(probs, w.argmax(-1))
        loss = mse + base_mse + c.balance_weight * balance + c.z_weight * router_z_loss(logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats.update(w)
        if step % c.log_every == 0 or step == c.steps:
            rec.log(step=step, moe_mse=mse.item(), linear_mse=base_mse.item(),
                    balance=balance.item(), switch_rate=stats.switch_rate)

    router.eval()
    with torch.no_grad():
        x, y, region = sample(8192, slopes, bias, c.noise_std, g)
        pred, w, _ = mixture(x.to(device))
        moe_mse = (pred.cpu() - y).pow(2).mean().item()
        linear_mse = (baseline(x.to(device)).cpu() - y).pow(2).mean().item()
    choice = w.argmax(-1).cpu().numpy()
    counts = np.zeros((c.n_regions, c.n_experts), dtype=np.int64)
    np.add.at(counts, (region.numpy(), choice), 1)
    purity = float(counts.max(axis=1).sum() / counts.sum())
    eval_stats = RoutingStats(c.n_experts)
    eval_stats.update(w)
    _plot(counts, run_dir / "region_expert.png")
    metrics = {"moe_mse": moe_mse, "linear_mse": linear_mse, "mse_ratio": moe_mse / linear_mse,
               "routing_purity": purity, "routing_entropy": eval_stats.mean_entropy,
               **{f"utilisation_{i}": u for i, u in enumerate(eval_stats.utilisation)}}
    return rec.finish(metrics, title="router_demo: mixture of linear experts vs one linear model")


def _plot(counts: np.ndarray, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4, 3.2))
    share = counts / counts.sum(1, keepdims=True).clip(min=1)
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("expert")
    ax.set_ylabel("region")
    ax.set_title("share of each region routed to each expert")
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)
