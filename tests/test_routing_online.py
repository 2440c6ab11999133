"""OnlineRouter (the router core's online MLP): NumPy path = torch path, growing keeps scores and
Adam's state, buffered steps, pickling."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from streammoe.routing import OnlineRouter


def _trained(seed: int = 0, rows: int = 40) -> OnlineRouter:
    r = OnlineRouter(4, 3, hidden=(16, 8), dropout=0.1, lr=1e-2, batch_rows=8, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(rows):
        x = rng.normal(size=4)
        r.push(x, np.eye(3)[int(x[0] > 0) + int(x[1] > 0)])
    return r


def test_numpy_scores_equal_the_torch_forward() -> None:
    r = _trained()
    x = np.random.default_rng(1).normal(size=(5, 4))
    torch_out = r.forward_torch(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(np.stack([r.scores(row) for row in x]), torch_out, rtol=1e-4, atol=1e-5)


def test_steps_once_per_full_buffer_and_learns() -> None:
    r = OnlineRouter(2, 2, hidden=(8,), lr=5e-2, batch_rows=4, seed=0)
    stepped = [r.push(np.array([1.0, -1.0]), np.array([1.0, 0.0])) for _ in range(40)]
    assert stepped == [False, False, False, True] * 10 and r.n_updates == 10 and r.buffered == 0
    s = r.scores(np.array([1.0, -1.0]))
    assert s[0] > 0 > s[1]  # learned the target


def test_growing_keeps_scores_and_pads_adams_moments() -> None:
    r = _trained()
    x = np.random.default_rng(2).normal(size=4)
    before = r.scores(x)
    state = r.optimizer_state()["state"]
    first_w, last_w = state[0]["exp_avg"], state[len(state) - 2]["exp_avg"]
    r.grow_inputs(6)
    r.grow_outputs(5)
    after = r.scores(np.concatenate([x, [3.0, -2.0]]))
    np.testing.assert_allclose(after[:3], before, rtol=1e-6)
    np.testing.assert_allclose(after[3:], 0.0, atol=1e-12)  # the new experts start undecided
    grown = r.optimizer_state()["state"]
    np.testing.assert_array_equal(grown[0]["exp_avg"][:, :4], first_w)
    assert grown[0]["exp_avg"].shape == (16, 6) and not grown[0]["exp_avg"][:, 4:].any()
    new_last = grown[len(grown) - 2]["exp_avg"]
    assert new_last.shape == (5, 8) and not new_last[3:].any()
    np.testing.assert_array_equal(new_last[:3], last_w)
    assert all(float(s["step"]) == r.n_updates for s in grown.values())  # the step count is kept
    r.push(np.ones(6), np.eye(5)[4])  # and it still trains at the new size
    for _ in range(7):
        r.push(np.ones(6), np.eye(5)[4])
    assert r.n_updates == 6 and r.weights_finite()
    with pytest.raises(ValueError, match="cannot shrink"):
        r.grow_inputs(3)


def test_pickle_and_deepcopy_resume_identically_and_pickles_are_deterministic() -> None:
    r = _trained(rows=44)  # 4 rows in the buffer
    assert pickle.dumps(r) == pickle.dumps(r)
    twins = [pickle.loads(pickle.dumps(r)), copy.deepcopy(r)]
    rng = np.random.default_rng(3)
    for _ in range(30):
        x = rng.normal(size=4)
        for m in (r, *twins):
            m.push(x, np.eye(3)[0])  # dropout draws come from the router's own generator
    for twin in twins:
        assert twin.n_updates == r.n_updates
        np.testing.assert_array_equal(twin.scores(np.ones(4)), r.scores(np.ones(4)))


def test_rejects_what_the_numpy_path_cannot_compute() -> None:
    with pytest.raises(ValueError, match="relu"):
        OnlineRouter(3, 2, activation="tanh")
    with pytest.raises(ValueError, match="batch_rows"):
        OnlineRouter(3, 2, batch_rows=0)


def test_numpy_backward_gives_autograds_gradient_and_training() -> None:
    """The default NumPy backward pass (same dropout masks from the router's generator) gives
    autograd's gradient, and a router trained with it, growing on the way, stays with one trained
    by autograd (float32 rounding only); pickles carry the switch."""
    routers = {flag: OnlineRouter(4, 3, hidden=(16, 8), dropout=0.2, lr=1e-2, batch_rows=5,
                                  backward="numpy" if flag else "autograd", seed=4)
               for flag in (True, False)}
    rng = np.random.default_rng(5)
    for i in range(120):
        x, target = rng.normal(size=4 + (i >= 60)) * 3, (rng.random(3 + (i >= 60)) > 0.5) * 1.0
        for r in routers.values():
            if i == 60:
                r.grow_inputs(5)
                r.grow_outputs(4)
            r.push(x, target)
        if i == 4:  # right after the first step: the gradients themselves
            grads = {flag: [p.grad.numpy().copy() for p in r._net.parameters()]
                     for flag, r in routers.items()}
            for a, b in zip(grads[True], grads[False]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    fast, slow = routers[True], routers[False]
    assert fast.n_updates == slow.n_updates == 24
    x = rng.normal(size=5)
    np.testing.assert_allclose(fast.scores(x), slow.scores(x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(fast.scores(x), OnlineRouter(5, 4, hidden=(16, 8), seed=4).scores(x))
    assert pickle.loads(pickle.dumps(slow)).numpy_backward is False
    assert fast.numpy_backward and OnlineRouter(2, 2, batch_rows=4).numpy_backward
    assert not OnlineRouter(2, 2, batch_rows=256).numpy_backward  # "auto": autograd for big buffers
    with pytest.raises(ValueError, match="backward"):
        OnlineRouter(2, 2, backward="jax")


def test_dropout_keep_masks_are_the_forwards_masks() -> None:
    from streammoe.routing import MLPRouter

    a, b = MLPRouter(3, 2, hidden=(6, 5), dropout=0.5, seed=7), MLPRouter(3, 2, hidden=(6, 5), dropout=0.5, seed=7)
    a.train()
    x = torch.ones(4, 3)
    h = torch.relu(a.layers[0](x))
    masks = b.dropout_keep_masks(4)
    assert [tuple(m.shape) for m in masks] == [(4, 6), (4, 5)] and masks[0].dtype == torch.bool
    first = a._dropout(h, 0.5)  # the forward's first draw
    torch.testing.assert_close(first, h * masks[0] / 0.5)
    assert all(m.all() for m in MLPRouter(3, 2, hidden=(6, 5), seed=7).dropout_keep_masks(2))
