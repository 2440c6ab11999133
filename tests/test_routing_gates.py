"""Gates: weights, sparsity, gradients, stability, shapes/dtypes, devices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streammoe.routing import (
    GATES,
    get_gate,
    hard_gate,
    hard_soft_gate,
    shrink_to_uniform,
    sigmoid_gate,
    softmax_gate,
    softmax_per_dim_gate,
    top_k_gate,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

logit_rows = st.integers(1, 6).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=n, max_size=n),
        min_size=1, max_size=5,
    )
)


def _t(rows: list[list[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


@settings(max_examples=60, deadline=None)
@given(rows=logit_rows, temperature=st.floats(0.05, 20))
def test_softmax_gate_is_a_distribution(rows, temperature):
    w = softmax_gate(_t(rows), temperature)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(len(rows)), atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(rows=logit_rows, data=st.data())
def test_top_k_gate_has_exactly_k_nonzeros_summing_to_one(rows, data):
    n = len(rows[0])
    k = data.draw(st.integers(1, n))
    logits = _t(rows) / 10  # keep the renormalised softmax from underflowing to exact zeros
    w = top_k_gate(logits, k)
    assert ((w > 0).sum(-1) == k).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(len(rows)), atol=1e-5, rtol=0)
    # the selected experts are the k highest logits
    sel = w > 0
    assert (logits[sel].reshape(len(rows), k).min(-1).values
            >= logits.masked_fill(sel, float("-inf")).max(-1).values).all()


@settings(max_examples=40, deadline=None)
@given(rows=logit_rows)
def test_hard_gates_are_one_hot_at_argmax(rows):
    logits = _t(rows)
    for w in (hard_gate(logits), hard_gate(logits, straight_through=True), hard_soft_gate(logits)):
        assert ((w == 0) | (w == 1)).all()
        assert (w.sum(-1) == 1).all()
        assert (w.argmax(-1) == logits.argmax(-1)).all()


@settings(max_examples=40, deadline=None)
@given(rows=logit_rows)
def test_sigmoid_gate_is_independent_in_unit_interval(rows):
    logits = _t(rows)
    w = sigmoid_gate(logits)
    assert ((w >= 0) & (w <= 1)).all()
    # changing one logit changes only its own weight
    bumped = logits.clone()
    bumped[:, 0] += 1.0
    torch.testing.assert_close(sigmoid_gate(bumped)[:, 1:], w[:, 1:])


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), e=st.integers(1, 5), d=st.integers(1, 7))
def test_softmax_per_dim_gate_sums_to_one_per_output_dim(b, e, d):
    logits = torch.randn(b, e, d, generator=torch.Generator().manual_seed(b * 100 + e * 10 + d)) * 10
    w = softmax_per_dim_gate(logits)
    assert w.shape == (b, e, d)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(b, d), atol=1e-5, rtol=0)


def test_large_logits_are_stable():
    logits = torch.tensor([[1e4, -1e4, 3e4], [-3e4, -3e4, -3e4]])
    for name in ("softmax", "top_k", "hard", "hard_soft", "sigmoid"):
        w = get_gate(name)(logits, **({"k": 2} if name == "top_k" else {}))
        assert torch.isfinite(w).all(), name
    torch.testing.assert_close(softmax_gate(logits)[0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(top_k_gate(logits, 2)[1].sum(), torch.tensor(1.0))
    assert torch.isfinite(softmax_per_dim_gate(logits.unsqueeze(0) * 10)).all()


def _grad(gate, logits, **kw):
    logits = logits.clone().requires_grad_(True)
    w = gate(logits, **kw)
    # a loss that depends on every weight differently
    (w * torch.arange(1.0, w.shape[-1] + 1)).sum().backward()
    return logits.grad


def test_gradients_flow_where_documented():
    logits = torch.tensor([[0.3, 2.0, -1.0, 0.5]])
    assert _grad(softmax_gate, logits).abs().sum() > 0
    assert _grad(sigmoid_gate, logits).abs().gt(0).all()
    g = _grad(top_k_gate, logits, k=2)
    assert g[0, [0, 2]].abs().sum() == 0, "unselected experts get no gradient"
    assert g[0, [1, 3]].abs().sum() > 0, "selected experts get gradient"
    # hard without straight-through: weights are constants
    assert not hard_gate(logits.clone().requires_grad_(True)).requires_grad
    # straight-through hard gate: identity gradient
    torch.testing.assert_close(_grad(hard_gate, logits, straight_through=True),
                               torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # hard-soft: the softmax's gradient exactly
    torch.testing.assert_close(_grad(hard_soft_gate, logits), _grad(softmax_gate, logits))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(GATES))
def test_shapes_dtypes_devices_are_preserved(name, dtype, device):
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    w = get_gate(name)(logits, **({"k": 2} if name == "top_k" else {}))
    assert w.shape == logits.shape and w.dtype == dtype and w.device.type == device


def test_shrink_to_uniform_mixes_with_uniform_weights():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = softmax_gate(logits)
    for lam in (0.0, 0.3, 1.0):
        s = shrink_to_uniform(w, lam)
        torch.testing.assert_close(s.sum(-1), torch.ones(4))
        torch.testing.assert_close(s, (1 - lam) * w + lam / 5)
    (g_plain,) = torch.autograd.grad(w[:, 0].sum(), logits, retain_graph=True)
    (g_shrunk,) = torch.autograd.grad(shrink_to_uniform(w, 0.25)[:, 0].sum(), logits)
    torch.testing.assert_close(g_shrunk, 0.75 * g_plain)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="shrinkage"):
            shrink_to_uniform(w, bad)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="k must be in"):
        top_k_gate(torch.zeros(2, 3), k=4)
    with pytest.raises(ValueError, match="temperature"):
        softmax_gate(torch.zeros(2, 3), temperature=0)
    with pytest.raises(TypeError, match="floating-point"):
        softmax_gate(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown gate"):
        get_gate("argmaxx")
    with pytest.raises(ValueError, match="n_experts, out_dim"):
        softmax_per_dim_gate(torch.zeros(3))
