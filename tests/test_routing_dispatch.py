"""The grouped sparse dispatch (equal to the dense mixture, values and gradients; traceable by
torch.compile), routers' noise drawn on their own device's generator, the closed-form normal CDF
of the smooth load, and routing in float32 under autocast."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

from streammoe.routing import NoisyTopKRouter, SparseMoE, dense_mixture, sparse_dispatch, top_k_gate
from streammoe.routing.routers import SeededModule

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _experts(n: int, d_in: int = 5, d_out: int = 3, seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(nn.Sequential(nn.Linear(d_in, 7), nn.GELU(), nn.Linear(7, d_out)) for _ in range(n))


def _dense(x, w, experts):
    return dense_mixture(w, torch.stack([e(x) for e in experts], 1))


def _counting(experts):
    calls = [0] * len(experts)

    def wrap(i):
        def f(z):
            calls[i] += 1
            return experts[i](z)
        return f
    return [wrap(i) for i in range(len(experts))], calls


def _random_k_hot(rows: int, n_experts: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Arbitrary (not softmax) non-zero weights, exactly k per row, some negative."""
    pick = torch.rand(rows, n_experts, generator=g).argsort(-1)[:, :k]
    w = torch.zeros(rows, n_experts)
    w.scatter_(1, pick, torch.randn(rows, k, generator=g) + 0.1)
    return w


@pytest.mark.parametrize("k", [1, 2, 4])
def test_dispatch_with_exactly_k_experts_per_row_equals_dense(k):
    g = torch.Generator().manual_seed(k)
    experts = _experts(5)
    x = torch.randn(37, 5, generator=g)
    w = _random_k_hot(37, 5, k, g)
    assert ((w != 0).sum(1) == k).all()
    torch.testing.assert_close(sparse_dispatch(x, w, list(experts)), _dense(x, w, experts))


def test_rows_without_experts_give_zeros_and_unused_experts_never_run():
    g = torch.Generator().manual_seed(1)
    experts = _experts(4)
    x = torch.randn(10, 5, generator=g)
    w = top_k_gate(torch.randn(10, 4, generator=g), 2)
    w[[0, 3, 9]] = 0.0  # three rows select nothing
    w[:, 2] = 0.0  # nobody selects expert 2
    fns, calls = _counting(experts)
    out = sparse_dispatch(x, w, fns)
    torch.testing.assert_close(out, _dense(x, w, experts))
    assert (out[[0, 3, 9]] == 0).all()
    assert calls[2] == 0 and all(c == 1 for i, c in enumerate(calls) if i != 2)  # one call per used expert
    # nothing selected at all: zeros of the experts' output width
    out = sparse_dispatch(x, torch.zeros(10, 4), list(experts))
    assert out.shape == (10, 3) and (out == 0).all()


def test_all_rows_to_one_expert():
    g = torch.Generator().manual_seed(2)
    experts = _experts(3)
    x = torch.randn(16, 5, generator=g)
    w = torch.zeros(16, 3)
    w[:, 1] = torch.rand(16, generator=g) + 0.5
    fns, calls = _counting(experts)
    out = sparse_dispatch(x, w, fns)
    torch.testing.assert_close(out, w[:, 1:2] * experts[1](x))
    assert calls == [0, 1, 0]


def test_dispatch_gradients_equal_the_dense_formula():
    g = torch.Generator().manual_seed(3)
    experts = _experts(6)
    x = torch.randn(40, 5, generator=g, requires_grad=True)
    logits = torch.randn(40, 6, generator=g, requires_grad=True)
    target = torch.randn(40, 3, generator=g)
    grads = []
    for mix in (sparse_dispatch, _dense):
        experts.zero_grad(set_to_none=True)
        x.grad = logits.grad = None
        ((mix(x, top_k_gate(logits, 2), list(experts)) - target) ** 2).sum().backward()
        grads.append([x.grad.clone(), logits.grad.clone(), *(p.grad.clone() for p in experts.parameters())])
    assert grads[0][1].abs().sum() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_dispatch_reads_the_device_once_and_never_calls_nonzero(monkeypatch):
    g = torch.Generator().manual_seed(5)
    experts = _experts(6)
    x = torch.randn(30, 5, generator=g)
    w = top_k_gate(torch.randn(30, 6, generator=g), 2)
    expected = _dense(x, w, experts)
    reads = []

    def spy(name, original):
        def f(*args, **kwargs):
            reads.append(name)
            return original(*args, **kwargs)
        return f

    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))

    def no_nonzero(*args, **kwargs):
        raise AssertionError("sparse_dispatch called nonzero")

    monkeypatch.setattr(torch, "nonzero", no_nonzero)
    monkeypatch.setattr(torch.Tensor, "nonzero", no_nonzero)
    out = sparse_dispatch(x, w, list(experts))
    monkeypatch.undo()
    assert reads == ["tolist"]  # the rows per expert, one copy to the host for all experts
    torch.testing.assert_close(out, expected)


def test_dispatch_errors_name_the_shapes():
    experts = _experts(2)
    with pytest.raises(ValueError, match=r"x \(batch, in_dim\) and weights \(batch, n_experts\)"):
        sparse_dispatch(torch.zeros(3, 5), torch.zeros(4, 2), list(experts))
    with pytest.raises(ValueError, match="weights has 3 experts but 2 were given"):
        sparse_dispatch(torch.zeros(3, 5), torch.zeros(3, 3), list(experts))


def test_dispatch_compiles_to_one_graph(monkeypatch):
    """With scalar outputs captured, torch.compile traces the whole dispatch (no graph break):
    the per-expert sizes are the one value read from the device, no branch depends on them."""
    dynamo = pytest.importorskip("torch._dynamo")
    monkeypatch.setattr(dynamo.config, "capture_scalar_outputs", True)
    dynamo.reset()
    experts = _experts(4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 5, generator=g)
    w = top_k_gate(torch.randn(12, 4, generator=g), 2)
    w[:, 3] = 0.0  # an expert without rows: traced like the others (it runs on an empty slice)
    compiled = torch.compile(lambda x, w: sparse_dispatch(x, w, list(experts)), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w), _dense(x, w, experts))
    dynamo.reset()


# ---------------------------------------------------------------- routers: generators, CDF, precision
def test_cpu_draws_are_those_of_the_seeded_cpu_generator():
    m = SeededModule(seed=11)
    like = torch.zeros(3, 4, dtype=torch.float64)
    a, b = m._randn((3, 4), like), m._rand((2,), like)
    g = torch.Generator().manual_seed(11)
    torch.testing.assert_close(a, torch.randn(3, 4, generator=g).double())
    torch.testing.assert_close(b, torch.rand(2, generator=g).double())
    assert a.dtype == torch.float64
    assert set(m.generators()) == {"cpu"} and m.device_generator("cpu") is m.generator


def test_smooth_load_uses_the_normal_cdf_without_torch_distributions(monkeypatch):
    r = NoisyTopKRouter(6, 5, k=2, seed=0).train()
    with torch.no_grad():
        r.w_noise.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    state = r.generator.get_state()
    # no validating distribution object (a host synchronisation per call) on the hot path
    monkeypatch.setattr(torch.distributions, "Normal", None)
    out = r(x)
    monkeypatch.undo()
    # recompute the paper's formula with torch.distributions from the same noise
    r.generator.set_state(state)
    clean, std = r.w_gate(x), nn.functional.softplus(r.w_noise(x)) + r.min_noise_std
    noisy = clean + r._randn(clean.shape, clean) * std
    torch.testing.assert_close(out.logits, noisy, rtol=0, atol=0)
    top = noisy.topk(3, -1).values
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = torch.where(noisy > top[:, 2:3], normal.cdf((clean - top[:, 2:3]) / std),
                           normal.cdf((clean - top[:, 1:2]) / std)).sum(0)
    torch.testing.assert_close(out.load, expected, rtol=0, atol=0)  # bit for bit the old numbers


def test_router_routes_in_float32_under_bf16_autocast():
    r = NoisyTopKRouter(8, 6, k=2, noisy=False, seed=0).eval()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    ref = r(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = r(x)
        moe = SparseMoE([nn.Linear(8, 4) for _ in range(6)], r)
        y, _ = moe(x)
    assert low.weights.dtype == low.logits.dtype == torch.float32
    torch.testing.assert_close(low.logits, ref.logits)
    assert torch.equal(low.indices, ref.indices)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_generator_states_survive_pickle_including_devices_absent_here():
    r = NoisyTopKRouter(4, 3, k=1, seed=5).train()
    r(torch.ones(2, 4))
    fake = torch.Generator().manual_seed(99).get_state()
    r._pending_states["cuda:7"] = fake  # a device generator saved where that device existed
    for clone in (copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
        assert torch.equal(clone.generator.get_state(), r.generator.get_state())
        if not (torch.cuda.is_available() and torch.cuda.device_count() > 7):
            assert torch.equal(clone._pending_states["cuda:7"], fake)  # kept for when it is there
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(clone(x).weights, copy.deepcopy(r)(x).weights)


@CUDA
def test_router_noise_is_drawn_on_the_gpu_from_its_own_generator():
    r = NoisyTopKRouter(6, 5, k=2, seed=3)
    cpu_state = r.generator.get_state()
    r = r.to("cuda").train()
    gen = r.generators()["cuda:0"]  # created when the module moved, before any draw
    assert gen.device.type == "cuda" and gen.initial_seed() == 3
    before = gen.get_state()
    x = torch.randn(32, 6, device="cuda")
    out = r(x)
    assert out.weights.device.type == "cuda"
    assert not torch.equal(gen.get_state(), before)  # the device generator advanced ...
    assert torch.equal(r.generator.get_state(), cpu_state)  # ... the CPU one did not
    # same state, same noise: restoring the device generator replays the draw
    gen.set_state(before)
    torch.testing.assert_close(r(x).logits, out.logits)
    clone = copy.deepcopy(r)
    torch.testing.assert_close(clone(x).logits, r(x).logits)
    assert math.isfinite(float(out.load.sum()))
