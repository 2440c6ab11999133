"""Routers, mixtures, routing losses and statistics."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from streammoe.routing import (
    MLPRouter,
    NoisyTopKRouter,
    RoutingStats,
    SparseMoE,
    bilinear_contrastive_loss,
    cv_squared,
    dense_mixture,
    entropy,
    info_nce_loss,
    load_balance_loss,
    multi_hot_bce,
    router_z_loss,
    sparse_dispatch,
    switch_balance_loss,
    top_k_gate,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------- routers
def test_mlp_router_seeding_is_exact_and_independent_of_global_rng():
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    a = MLPRouter(5, 4, hidden=(16, 8), dropout=0.3, seed=7).train()
    torch.manual_seed(123)  # the global generator must not matter
    torch.randn(100)
    b = MLPRouter(5, 4, hidden=(16, 8), dropout=0.3, seed=7).train()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    torch.testing.assert_close(a(x), b(x))  # dropout masks come from the router's generator
    c = MLPRouter(5, 4, hidden=(16, 8), dropout=0.3, seed=8)
    assert not torch.allclose(a.layers[0].weight, c.layers[0].weight)


def test_mlp_router_init_and_shape_errors():
    r = MLPRouter(3, 6, hidden=(4,), last_layer_init="zeros", seed=0)
    assert (r.layers[-1].weight == 0).all() and (r.layers[0].bias == 0).all()
    torch.testing.assert_close(r(torch.randn(2, 3)), torch.zeros(2, 6))
    bound = math.sqrt(6 / (3 + 4))
    assert r.layers[0].weight.abs().max() <= bound
    with pytest.raises(ValueError, match="expects 3 input features, got 4"):
        r(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="unknown init"):
        MLPRouter(3, 2, init="orthogonal")
    with pytest.raises(ValueError, match="dropout"):
        MLPRouter(3, 2, dropout=1.0)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_routers_survive_pickle_and_deepcopy_with_generator_state(copier):
    r = MLPRouter(4, 3, hidden=(8,), dropout=0.5, seed=3).train()
    r(torch.ones(2, 4))  # advance the generator
    clone = copier(r)
    x = torch.ones(5, 4)
    torch.testing.assert_close(r(x), clone(x))  # same weights, same next dropout mask
    n = NoisyTopKRouter(4, 5, k=2, seed=1).train()
    n2 = copier(n)
    torch.testing.assert_close(n(x).weights, n2(x).weights)


@pytest.mark.parametrize("device", DEVICES)
def test_noisy_top_k_router(device):
    r = NoisyTopKRouter(6, 5, k=2, seed=0).to(device)
    assert (r.w_noise.weight == 0).all()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0)).to(device)
    out = r.train()(x)
    assert out.weights.shape == (32, 5) and out.indices.shape == (32, 2)
    assert ((out.weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(32, device=device))
    assert torch.equal(out.weights.gather(-1, out.indices) > 0, torch.ones(32, 2, dtype=torch.bool, device=device))
    # load is a smooth, differentiable estimate; importance sums to the batch size
    torch.testing.assert_close(out.importance.sum(), torch.tensor(32.0, device=device))
    loss = load_balance_loss(out.importance, out.load)
    loss.backward()
    assert r.w_gate.weight.grad.abs().sum() > 0 and r.w_noise.weight.grad.abs().sum() > 0
    # eval: no noise, deterministic
    r.eval()
    torch.testing.assert_close(r(x).weights, r(x).weights)
    torch.testing.assert_close(r(x).weights, top_k_gate(r.w_gate(x), 2))
    # leading dimensions are kept
    assert r(x.reshape(4, 8, 6)).weights.shape == (4, 8, 5)


# ---------------------------------------------------------------- mixtures
def test_dense_mixture_per_expert_and_per_dim_weights():
    outs = torch.randn(3, 4, 2)
    w = torch.softmax(torch.randn(3, 4), -1)
    torch.testing.assert_close(dense_mixture(w, outs), (w.unsqueeze(-1) * outs).sum(1))
    wd = torch.softmax(torch.randn(3, 4, 2), 1)
    torch.testing.assert_close(dense_mixture(wd, outs), (wd * outs).sum(1))
    with pytest.raises(ValueError, match="match neither"):
        dense_mixture(torch.ones(3, 5), outs)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 12), n_experts=st.integers(1, 5), data=st.data())
def test_sparse_dispatch_equals_dense_and_skips_unselected(batch, n_experts, data):
    k = data.draw(st.integers(1, n_experts))
    g = torch.Generator().manual_seed(batch * 31 + n_experts)
    experts = [nn.Linear(3, 2) for _ in range(n_experts)]
    calls = [0] * n_experts

    def counted(i):
        def f(z):
            calls[i] += z.shape[0]
            return experts[i](z)
        return f

    x = torch.randn(batch, 3, generator=g)
    w = top_k_gate(torch.randn(batch, n_experts, generator=g), k)
    sparse = sparse_dispatch(x, w, [counted(i) for i in range(n_experts)])
    dense = dense_mixture(w, torch.stack([e(x) for e in experts], 1))
    torch.testing.assert_close(sparse, dense)
    assert sum(calls) == int((w > 0).sum())  # each expert ran only on the rows that chose it


def test_sparse_moe_routes_on_route_input_and_backprops():
    torch.manual_seed(0)
    moe = SparseMoE([nn.Linear(4, 3) for _ in range(4)], NoisyTopKRouter(2, 4, k=1, seed=0))
    x, task = torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    y, routed = moe(x, route_input=task)
    assert y.shape == (2, 5, 3) and routed.weights.shape == (2, 5, 4)
    y.sum().backward()
    assert moe.router.w_gate.weight.grad is not None
    with pytest.raises(ValueError, match="leading shape"):
        moe(x, route_input=torch.randn(2, 4, 2))
    with pytest.raises(ValueError, match="4 experts but 2"):
        SparseMoE([nn.Linear(4, 3)] * 2, NoisyTopKRouter(2, 4, k=1))


# ---------------------------------------------------------------- losses
def test_balance_losses():
    assert cv_squared(torch.tensor([1.0, 1.0, 1.0])) == 0
    assert cv_squared(torch.tensor([3.0, 0.0, 0.0])) > 1.9
    assert load_balance_loss(torch.tensor([4.0, 0.0]), torch.tensor([4.0, 0.0])) > load_balance_loss(
        torch.tensor([2.0, 2.0]), torch.tensor([2.5, 1.5]))
    uniform = torch.full((8, 4), 0.25)
    torch.testing.assert_close(switch_balance_loss(uniform, torch.arange(8) % 4), torch.tensor(1.0))
    collapsed = torch.tensor([[1.0, 0, 0, 0]] * 8)
    torch.testing.assert_close(switch_balance_loss(collapsed, torch.zeros(8, dtype=torch.long)), torch.tensor(4.0))


def test_z_loss_entropy_bce():
    torch.testing.assert_close(router_z_loss(torch.zeros(3, 4)), torch.tensor(math.log(4) ** 2))
    torch.testing.assert_close(entropy(torch.full((2, 4), 0.25)), torch.tensor(math.log(4)))
    assert entropy(torch.tensor([[1.0, 0.0]])) < 1e-6
    logits = torch.tensor([[10.0, -10.0]])
    assert multi_hot_bce(logits, torch.tensor([[1, 0]])) < 1e-3 < multi_hot_bce(logits, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="differ"):
        multi_hot_bce(logits, torch.ones(1, 3))


def test_contrastive_losses_prefer_matching_tasks():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    centers = torch.randn(4, 8, generator=g) * 3
    q = centers[ids] + 0.1 * torch.randn(8, 8, generator=g)
    k = centers[ids] + 0.1 * torch.randn(8, 8, generator=g)
    shuffled = k[torch.tensor([1, 2, 3, 0, 5, 6, 7, 4])]
    assert info_nce_loss(q, k, ids) < info_nce_loss(q, shuffled, ids)
    W = torch.eye(8, requires_grad=True)
    good = bilinear_contrastive_loss(q, k, W, ids)
    assert good < bilinear_contrastive_loss(q, shuffled, W, ids)
    good.backward()
    assert W.grad is not None and torch.isfinite(W.grad).all()
    with pytest.raises(ValueError, match="no row has a positive"):
        info_nce_loss(q[:4], k[:4], ids[:4], key_ids=torch.tensor([4, 5, 6, 7]))


def test_bilinear_contrastive_loss_is_the_symmetric_cross_entropy() -> None:
    # One positive per row (distinct ids): exactly CURL's two cross-entropies on q W k^T, rows and
    # columns, with nothing shifted (a per-row max shift would change the column-wise term).
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(6, 5, generator=g) * 3 for _ in range(2))
    W = torch.randn(5, 5, generator=g)
    ids = torch.arange(6)
    scores = q @ W @ k.T
    expected = 0.5 * (torch.nn.functional.cross_entropy(scores, ids)
                      + torch.nn.functional.cross_entropy(scores.T, ids))
    torch.testing.assert_close(bilinear_contrastive_loss(q, k, W, ids), expected)


# ---------------------------------------------------------------- stats
def test_routing_stats_online_and_bounded():
    s = RoutingStats(3, window=10)
    s.update(torch.tensor([0, 0, 1, 1, 2]))
    s.update(np.array([[0.1, 0.8, 0.1]]))
    d = s.to_dict()
    assert d["n_rows"] == 6
    np.testing.assert_allclose(s.utilisation, [2 / 6, 3 / 6, 1 / 6])
    assert d["switch_rate"] == pytest.approx(3 / 5)  # 0,0,1,1,2,1: three switches in five pairs
    assert sum(d[f"weight_share_{i}"] for i in range(3)) == pytest.approx(1.0)
    for _ in range(50):
        s.update(torch.tensor([2]))
    assert len(s._recent) == 10 and s.switch_rate == 0.0
    df = s.to_dataframe()
    assert list(df.columns) == ["expert", "utilisation", "weight_share"] and len(df) == 3
    assert RoutingStats(4).mean_entropy == 0.0
    one_hot = RoutingStats(2)
    one_hot.update(torch.tensor([[1.0, 0.0]]))
    uniform = RoutingStats(2)
    uniform.update(torch.tensor([[0.5, 0.5]]))
    assert one_hot.mean_entropy < 1e-6 and uniform.mean_entropy == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        s.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        s.update(torch.tensor([[float("nan"), 0.0, 1.0]]))
    with pytest.raises(ValueError, match="indices"):
        s.update(torch.tensor([3]))
