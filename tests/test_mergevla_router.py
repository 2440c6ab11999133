"""MergeVLA's test-time task router: value bases, scores, routing on synthetic subspaces,
confusion matrix, statistics, overhead and input validation."""

from __future__ import annotations

import pytest
import torch

from streammoe.control.mergevla.router import (
    Route,
    TestTimeTaskRouter,
    confusion_matrix,
    discriminative_bases,
    route_scores,
    value_basis,
)

D_IN, D_OUT, K, N_TASKS = 32, 24, 4, 4


def _subspace_tasks(seed: int = 0, noise: float = 0.01):
    """Per task a value projection whose top-K right singular vectors span its own block of a
    random orthonormal basis (disjoint across tasks), plus small noise; and those blocks."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g))
    blocks = [q[:, t * K:(t + 1) * K] for t in range(N_TASKS)]
    weights = []
    for v in blocks:
        u, _ = torch.linalg.qr(torch.randn(D_OUT, K, generator=g))
        s = torch.linspace(10.0, 5.0, K)
        weights.append(u @ torch.diag(s) @ v.T + noise * torch.randn(D_OUT, D_IN, generator=g))
    return weights, blocks, g


def test_value_basis_is_the_top_right_singular_subspace():
    weights, blocks, _ = _subspace_tasks()
    for W, v in zip(weights, blocks):
        basis = value_basis(W, K)
        assert basis.shape == (D_IN, K) and basis.dtype == W.dtype
        torch.testing.assert_close(basis.T @ basis, torch.eye(K), atol=1e-5, rtol=0)
        # same subspace as the block: projector equality
        torch.testing.assert_close(basis @ basis.T, v @ v.T, atol=1e-2, rtol=0)
        _, _, vh = torch.linalg.svd(W.double(), full_matrices=False)
        torch.testing.assert_close(basis.abs(), vh[:K].T.abs().float(), atol=1e-5, rtol=0)


def test_k_larger_than_rank_raises():
    g = torch.Generator().manual_seed(1)
    low_rank = torch.randn(D_OUT, 3, generator=g) @ torch.randn(3, D_IN, generator=g)
    assert value_basis(low_rank, 3).shape == (D_IN, 3)
    with pytest.raises(ValueError, match=r"k=4 exceeds the rank 3 of the value projection \(24x32\): choose k <= 3"):
        value_basis(low_rank, 4)
    with pytest.raises(ValueError, match="exceeds the rank 8"):
        value_basis(torch.randn(8, 16, generator=g), 9)
    with pytest.raises(ValueError, match="exceeds the rank 0"):
        value_basis(torch.zeros(4, 4), 1)
    with pytest.raises(ValueError, match="task 1: k=4 exceeds the rank 3"):
        TestTimeTaskRouter.from_value_projections([torch.randn(D_OUT, D_IN, generator=g), low_rank], k=4)


def test_value_basis_validates_its_input():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        value_basis(torch.eye(3), 0)
    with pytest.raises(ValueError, match="must be a 2-D weight"):
        value_basis(torch.ones(3), 1)
    with pytest.raises(TypeError, match="floating point"):
        value_basis(torch.eye(3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="NaN or inf"):
        value_basis(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)


def test_route_scores_follow_the_definition():
    g = torch.Generator().manual_seed(2)
    bases = [torch.linalg.qr(torch.randn(D_IN, K, generator=g))[0] for _ in range(N_TASKS)]
    hs = [torch.randn(2, 5, D_IN, generator=g) for _ in range(N_TASKS)]
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 3:] = False
    scores = route_scores(hs, bases, valid)
    assert scores.shape == (2, N_TASKS)
    for b in range(2):
        for t in range(N_TASKS):
            rows = hs[t][b][valid[b]]
            want = torch.stack([torch.linalg.norm(bases[t].T @ row) for row in rows]).mean()
            torch.testing.assert_close(scores[b, t], want)
    # unbatched, stacked bases, one shared h
    shared = route_scores(hs[0][1], torch.stack(bases))
    assert shared.shape == (N_TASKS,)
    torch.testing.assert_close(shared, torch.stack([route_scores([hs[0][1]] * N_TASKS, bases)[t]
                                                    for t in range(N_TASKS)]))


def test_synthetic_tasks_route_to_their_own_subspace():
    weights, blocks, g = _subspace_tasks(seed=3)
    router = TestTimeTaskRouter.from_value_projections(weights, k=K, tasks=["a", "b", "c", "d"])
    assert (router.n_tasks, router.d_in, router.tasks) == (N_TASKS, D_IN, ("a", "b", "c", "d"))
    truth = []
    for episode in range(12):
        true = episode % N_TASKS
        h = torch.randn(10, K, generator=g) @ blocks[true].T  # tokens in the true task's subspace

        def hidden_under(task: int, h=h) -> torch.Tensor:  # masks perturb the hidden states a little
            return h + 0.05 * torch.randn(h.shape, generator=g)

        route = router.route(hidden_under)
        assert isinstance(route, Route)
        assert route.task == true
        assert route.confidence > 1.0 / N_TASKS
        assert route.confidence == pytest.approx(float(route.probs.max()))
        assert route.seconds >= route.scoring_seconds > 0
        truth.append(true)
    cm = router.confusion_matrix(truth)
    assert torch.equal(cm, 3 * torch.eye(N_TASKS, dtype=torch.long))
    stats = router.to_dict()
    assert stats["n_rows"] == 12 and stats["switch_rate"] == 1.0
    assert [stats[f"utilisation_{t}"] for t in range(N_TASKS)] == [0.25] * N_TASKS
    over = router.overhead()
    assert over["routes"] == 12 and over["route_s_mean"] >= over["scoring_s_mean"] > 0
    router.reset()
    assert router.choices == [] and router.overhead()["routes"] == 0 and router.stats.n_rows == 0


def test_batched_routes_and_temperature():
    weights, blocks, g = _subspace_tasks(seed=4)
    sharp = TestTimeTaskRouter.from_value_projections(weights, k=K, temperature=0.01)
    h = torch.stack([torch.randn(6, K, generator=g) @ blocks[t].T for t in (2, 0, 3)])  # (3, 6, D_IN)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[:, -1] = False
    route = sharp.route(lambda task: h, valid=valid)
    assert route.tasks.tolist() == [2, 0, 3] and route.scores.shape == (3, N_TASKS)
    assert bool((route.confidences > 0.99).all())
    with pytest.raises(ValueError, match="a batch"):
        _ = route.task
    assert sharp.choices == [2, 0, 3] and sharp.stats.n_rows == 3
    flat = TestTimeTaskRouter.from_value_projections(weights, k=K, temperature=1e6)
    assert flat.route(lambda task: h[0]).confidence == pytest.approx(1.0 / N_TASKS, abs=1e-3)


def test_from_state_dicts():
    weights, _, _ = _subspace_tasks(seed=5)
    key = "action_expert.blocks.1.cross_attn.v_proj.weight"
    router = TestTimeTaskRouter.from_state_dicts([{key: w} for w in weights], key, k=K)
    torch.testing.assert_close(router.bases[1], value_basis(weights[1], K))
    with pytest.raises(KeyError, match="expert 0's state dict has no 'other'"):
        TestTimeTaskRouter.from_state_dicts([{key: w} for w in weights], "other")


def test_invalid_inputs_raise_and_record_nothing():
    weights, blocks, g = _subspace_tasks(seed=6)
    router = TestTimeTaskRouter.from_value_projections(weights, k=K)
    good = torch.randn(5, D_IN, generator=g)
    cases = [
        (lambda t: torch.randn(5, D_IN + 1), ValueError, r"must be \(..., tokens, d_in=32\), got shape \(5, 33\)"),
        (lambda t: torch.randn(D_IN), ValueError, "must be \\(..., tokens, d_in=32\\)"),
        (lambda t: good if t else torch.randn(6, D_IN), ValueError, "run the same observation under every mask"),
        (lambda t: good.double().fill_(float("nan")) if t == 2 else good.double(), ValueError,
         "hidden states for task 2 contain NaN or inf"),
        (lambda t: good.long(), TypeError, "must be a floating-point tensor"),
        (lambda t: good.numpy(), TypeError, r"hidden_under\(0\) returned ndarray"),
    ]
    for hidden_under, err, match in cases:
        with pytest.raises(err, match=match):
            router.route(hidden_under)
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(5,\)"):
        router.route(lambda t: good, valid=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid marks no token"):
        router.route(lambda t: good, valid=torch.zeros(5, dtype=torch.bool))
    assert router.choices == [] and router.stats.n_rows == 0 and router.overhead()["routes"] == 0
    with pytest.raises(ValueError, match="a list of 4 tensors"):
        route_scores([good] * 3, router.bases)
    with pytest.raises(ValueError, match="same input space"):
        TestTimeTaskRouter([torch.eye(4)[:, :2], torch.eye(5)[:, :2]])
    with pytest.raises(ValueError, match="2 task names for 4 bases"):
        TestTimeTaskRouter(router.bases, tasks=["a", "b"])
    with pytest.raises(ValueError, match="temperature must be"):
        TestTimeTaskRouter(router.bases, temperature=0.0)
    router.route(lambda t: good)
    with pytest.raises(ValueError, match="2 true task ids for 1 routing choices"):
        router.confusion_matrix([0, 1])
    with pytest.raises(ValueError, match=r"true task ids must be in \[0, 4\)"):
        router.confusion_matrix([4])


def test_confusion_matrix_counts():
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]


def _shared_word_tasks():
    """Two tasks in R^6 whose bases both read a 'common word' direction ``c`` = e5: task 0 spans
    (e0, c); task 1 spans (e1, u) with u half on c. A task-1 instruction is five common words and
    one word of its own (e1)."""
    e = torch.eye(6, dtype=torch.float64)
    u = (e[5] + e[3]) / 2 ** 0.5
    bases = [torch.stack([e[0], e[5]], 1), torch.stack([e[1], u], 1)]
    h = torch.stack([e[5]] * 5 + [e[1]])
    return bases, h, e


def test_discriminative_bases_keep_what_only_their_task_reads():
    bases, h, e = _shared_word_tasks()
    plain = route_scores(h, bases)
    assert int(plain.argmax()) == 0  # the common word, read fully by task 0, outvotes e1
    d = discriminative_bases(bases, k=1)
    assert torch.allclose(d[0].abs().squeeze(1), e[0], atol=1e-6)
    assert torch.allclose(d[1].abs().squeeze(1), e[1], atol=1e-6)
    scores = route_scores(h, d)
    assert int(scores.argmax()) == 1 and float(scores[0]) < 1e-6  # c carries no vote now
    router = TestTimeTaskRouter(d)
    assert router.route(lambda t: h).task == 1
    # two directions: the second is what remains of each basis, now ranked after the distinctive one
    d2 = discriminative_bases(bases, k=2)
    assert all(b.shape == (6, 2) for b in d2)
    assert all(torch.allclose(torch.linalg.vector_norm(b, dim=0), torch.ones(2, dtype=b.dtype)) for b in d2)


def test_discriminative_bases_depend_on_the_subspaces_not_their_coordinates():
    weights, blocks, g = _subspace_tasks(seed=3)
    shared = torch.linalg.qr(torch.randn(D_IN, 2, generator=g))[0]  # two directions every task reads
    bases = [torch.linalg.qr(torch.cat([b[:, :2], shared], 1))[0] for b in blocks]
    rotated = []
    for b in bases:
        q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
        rotated.append(b @ q)  # the same subspace in other coordinates
    a, r = discriminative_bases(bases, k=2), discriminative_bases(rotated, k=2)
    for x, y in zip(a, r):
        assert torch.allclose(x @ x.T, y @ y.T, atol=1e-4)
        assert torch.linalg.vector_norm(shared.T @ x) < 1e-3  # nothing of the shared directions
    # and through the router's constructor: k=2 of each expert's own block
    router = TestTimeTaskRouter.from_value_projections(weights, k=K, discriminative=2)
    assert all(b.shape == (D_IN, 2) for b in router.bases)
    for t, block in enumerate(blocks):
        h = torch.randn(6, K, generator=g) @ block.T
        assert router.route(lambda task, h=h: h).task == t


def test_discriminative_bases_validate_their_input():
    bases, _, _ = _shared_word_tasks()
    with pytest.raises(ValueError, match="choose k <= 2"):
        discriminative_bases(bases, k=3)
    for k in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="k must be an integer"):
            discriminative_bases(bases, k=k)
    for ridge in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="ridge must be a finite number > 0"):
            discriminative_bases(bases, k=1, ridge=ridge)
    with pytest.raises(ValueError, match="NaN or inf"):
        discriminative_bases([bases[0], torch.full_like(bases[1], float("nan"))], k=1)
    weights, _, _ = _subspace_tasks()
    for n in (-1, True, 2.0):
        with pytest.raises(ValueError, match="discriminative must be an integer >= 0"):
            TestTimeTaskRouter.from_value_projections(weights, k=K, discriminative=n)
    with pytest.raises(ValueError, match="choose k <= 4"):
        TestTimeTaskRouter.from_value_projections(weights, k=K, discriminative=K + 1)
