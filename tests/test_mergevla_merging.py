"""MergeVLA merging: equality with PEFT's merge utilities on random tensors, invariants, TALL masks,
expert heads, mask files and input validation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streammoe.checkpoint import CheckpointError
from streammoe.control.mergevla.merging import (
    LAMBDA,
    apply_mask,
    check_state_dicts,
    disjoint_mean,
    elect_sign,
    input_grams,
    load_masks,
    mask_stats,
    merge_experts,
    merged_task_vector,
    naive_average,
    refit_to_masks,
    save_masks,
    split_state_dict,
    tall_masks,
    task_arithmetic,
    task_vectors,
    ties_merge,
    ties_tensor,
    trim,
)

SHAPES = [(7,), (3, 5), (2, 3, 4), ()]
PROPS = settings(max_examples=25, deadline=None)


def _peft_merge_utils():
    """PEFT's ``peft/utils/merge_utils.py`` (it imports torch only), loaded on its own: importing
    the ``peft`` package pulls in transformers and takes seconds."""
    spec = importlib.util.find_spec("peft")
    if spec is None or spec.origin is None:
        pytest.skip("peft is not installed (the [vla] extra)")
    path = Path(spec.origin).parent / "utils" / "merge_utils.py"
    mod_spec = importlib.util.spec_from_file_location("_peft_merge_utils", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peft_mu():
    return _peft_merge_utils()


def _state_dicts(seed: int, n_experts: int, dtype=torch.float32, zero_frac: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    base = {f"layer{i}.w": torch.randn(s, generator=g, dtype=dtype) for i, s in enumerate(SHAPES)}
    experts = []
    for _ in range(n_experts):
        sd = {}
        for k, b in base.items():
            delta = torch.randn(b.shape, generator=g, dtype=dtype)
            if zero_frac:
                delta = delta * (torch.rand(b.shape, generator=g) >= zero_frac)
            sd[k] = b + delta
        experts.append(sd)
    return base, experts


def _close(a: dict, b: dict, **kw) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **kw)


seeds = st.integers(0, 2**31 - 1)
n_experts = st.integers(1, 4)
densities = st.floats(0.05, 1.0)
scales = st.floats(0.1, 2.0)


# ---------------------------------------------------------------------------- equality with PEFT
@PROPS
@given(seed=seeds, density=st.floats(0.0, 0.99), shape=st.sampled_from(SHAPES))
def test_trim_equals_peft_magnitude_pruning(peft_mu, seed, density, shape):
    tau = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    ours = trim(tau, density) if density > 0 else torch.zeros_like(tau)
    assert torch.equal(ours, peft_mu.prune(tau, density, method="magnitude"))
    assert int((ours != 0).sum()) == int(density * tau.numel())


@PROPS
@given(seed=seeds, n=n_experts, zero_frac=st.sampled_from([0.0, 0.5]))
def test_sign_election_and_disjoint_mean_equal_peft(peft_mu, seed, n, zero_frac):
    _, experts = _state_dicts(seed, n, zero_frac=zero_frac)
    for key in experts[0]:
        taus = torch.stack([sd[key] for sd in experts])
        sign = elect_sign(taus)
        peft_mask = peft_mu.calculate_majority_sign_mask(taus, method="total")
        assert torch.equal(taus.sign() == sign, peft_mask)
        assert torch.equal(disjoint_mean(taus, sign), peft_mu.disjoint_merge(taus, peft_mask))


@PROPS
@given(seed=seeds, n=n_experts, density=densities, scale=scales)
def test_ties_merge_equals_peft_ties(peft_mu, seed, n, density, scale):
    base, experts = _state_dicts(seed, n)
    taus = task_vectors(base, experts)
    ours = ties_merge(base, experts, density=density, scale=scale)
    import warnings

    with warnings.catch_warnings():  # PEFT warns when density >= 1 (no pruning)
        warnings.simplefilter("ignore")
        theirs = {k: base[k] + scale * peft_mu.ties([t[k] for t in taus], torch.ones(n), density)
                  for k in base}
    _close(ours, theirs)
    for k in base:  # the unscaled TIES vector itself is PEFT's, bit for bit
        stacked = torch.stack([t[k] for t in taus])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.equal(ties_tensor(stacked, density),
                               peft_mu.ties([t[k] for t in taus], torch.ones(n), density))


@PROPS
@given(seed=seeds, n=n_experts, scale=scales)
def test_task_arithmetic_equals_peft(peft_mu, seed, n, scale):
    base, experts = _state_dicts(seed, n)
    taus = task_vectors(base, experts)
    theirs = {k: base[k] + peft_mu.task_arithmetic([t[k] for t in taus], torch.full((n,), scale))
              for k in base}
    _close(task_arithmetic(base, experts, scale=scale), theirs)


# ---------------------------------------------------------------------------- invariants
@PROPS
@given(seed=seeds)
def test_one_expert_at_scale_one_is_returned(seed):
    base, (expert,) = _state_dicts(seed, 1)
    _close(task_arithmetic(base, [expert], 1.0), expert)
    _close(ties_merge(base, [expert], density=1.0, scale=1.0), expert)
    _close(naive_average([expert]), expert, rtol=0, atol=0)
    taus = task_vectors(base, [expert])
    masks = tall_masks(taus, merged_task_vector(taus, "ties", density=1.0))
    assert all(bool(m.all()) for m in masks[0].values())  # random taus are non-zero everywhere


@PROPS
@given(seed=seeds, n=n_experts)
def test_naive_average_is_the_mean_and_task_arithmetic_at_one_over_n(seed, n):
    base, experts = _state_dicts(seed, n)
    avg = naive_average(experts)
    _close(avg, {k: sum(sd[k] for sd in experts) / n for k in base})
    _close(avg, task_arithmetic(base, experts, scale=1.0 / n))
    _close(avg, {k: base[k] + v for k, v in merged_task_vector(task_vectors(base, experts), "average").items()})


@PROPS
@given(seed=seeds, n=st.integers(2, 4), density=densities, data=st.data())
def test_permutation_invariance(seed, n, density, data):
    base, experts = _state_dicts(seed, n)
    perm = data.draw(st.permutations(range(n)))
    permuted = [experts[i] for i in perm]
    _close(ties_merge(base, experts, density), ties_merge(base, permuted, density))
    _close(task_arithmetic(base, experts, 0.5), task_arithmetic(base, permuted, 0.5))
    _close(naive_average(experts), naive_average(permuted))
    taus, taus_p = task_vectors(base, experts), task_vectors(base, permuted)
    masks = tall_masks(taus, merged_task_vector(taus, "ties", density=density))
    masks_p = tall_masks(taus_p, merged_task_vector(taus_p, "ties", density=density))
    for j, i in enumerate(perm):
        for k in base:
            assert torch.equal(masks_p[j][k], masks[i][k])
    s, s_p = mask_stats(masks), mask_stats(masks_p)
    assert (s.selfish_fraction, s.catchall_fraction, s.unused_fraction) == \
        (s_p.selfish_fraction, s_p.catchall_fraction, s_p.unused_fraction)
    assert s_p.density == tuple(s.density[i] for i in perm)


@PROPS
@given(seed=seeds, n=n_experts, density=densities, zero_frac=st.sampled_from([0.0, 0.3]))
def test_identical_experts_give_all_true_masks_where_tau_is_nonzero(seed, n, density, zero_frac):
    base, (expert,) = _state_dicts(seed, 1, zero_frac=zero_frac)
    experts = [expert] * n
    taus = task_vectors(base, experts)
    for method in ("ties", "average"):
        masks = tall_masks(taus, merged_task_vector(taus, method, density=density))
        for m in masks:
            for k, mk in m.items():
                assert mk.dtype == torch.bool
                assert torch.equal(mk, taus[0][k] != 0), (method, k)
    stats = mask_stats(masks)
    assert stats.catchall_fraction == pytest.approx(1.0 - stats.unused_fraction)
    assert stats.selfish_fraction == pytest.approx(1.0 - stats.unused_fraction if n == 1 else 0.0)


@PROPS
@given(seed=seeds, n=n_experts, lam=st.floats(0.0, 2.0))
def test_tall_masks_follow_their_definition_and_apply(seed, n, lam):
    base, experts = _state_dicts(seed, n)
    taus = task_vectors(base, experts)
    tau = merged_task_vector(taus, "task_arithmetic", scale=0.7)
    masks = tall_masks(taus, tau, lam)
    for t, m in enumerate(masks):
        applied = apply_mask(base, tau, m)
        for k in base:
            assert m[k].dtype == torch.bool
            assert torch.equal(m[k], taus[t][k].abs() > lam * (tau[k] - taus[t][k]).abs())
            torch.testing.assert_close(applied[k], torch.where(m[k], base[k] + tau[k], base[k]))
    stats = mask_stats(masks)
    assert 0.0 <= stats.selfish_fraction <= 1.0 and 0.0 <= stats.catchall_fraction <= 1.0
    assert stats.n_params == sum(b.numel() for b in base.values())


def test_mask_stats_on_known_masks():
    masks = [{"a": torch.tensor([True, True, False, False]), "b": torch.tensor([[True], [False]])},
             {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([[True], [False]])},
             {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[False], [False]])}]
    s = mask_stats(masks)
    # kept-by counts: a -> 3, 1, 1, 0; b -> 2, 0
    assert (s.n_tasks, s.n_params) == (3, 6)
    assert s.selfish_fraction == pytest.approx(2 / 6)
    assert s.catchall_fraction == pytest.approx(1 / 6)
    assert s.unused_fraction == pytest.approx(2 / 6)
    assert s.density == pytest.approx((3 / 6, 3 / 6, 1 / 6))
    assert s.to_dict()["density_2"] == pytest.approx(1 / 6)


def test_ties_steps_on_a_worked_example():
    taus = torch.tensor([[0.5, -2.0, 0.1, 3.0],
                         [1.0, 1.0, -0.2, -0.1],
                         [-4.0, 0.5, 0.3, 2.0]])
    trimmed = torch.stack([trim(t, 0.5) for t in taus])
    assert torch.equal(trimmed, torch.tensor([[0.0, -2.0, 0.0, 3.0],
                                              [1.0, 1.0, 0.0, 0.0],
                                              [-4.0, 0.0, 0.0, 2.0]]))
    sign = elect_sign(trimmed)  # sums -3, -1, 0, 5 -> 0 counts as +
    assert torch.equal(sign, torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert torch.equal(disjoint_mean(trimmed, sign), torch.tensor([-4.0, -2.0, 0.0, 2.5]))


def test_half_precision_is_merged_in_float32_and_returned_in_its_dtype():
    base, experts = _state_dicts(0, 3, dtype=torch.bfloat16)
    merged = ties_merge(base, experts, density=0.5)
    assert all(v.dtype == torch.bfloat16 for v in merged.values())
    assert all(t.dtype == torch.float32 for t in task_vectors(base, experts)[0].values())
    ref = ties_merge({k: v.float() for k, v in base.items()},
                     [{k: v.float() for k, v in sd.items()} for sd in experts], density=0.5)
    _close({k: v.float() for k, v in merged.items()}, {k: v.bfloat16().float() for k, v in ref.items()})


def test_inputs_are_not_modified():
    base, experts = _state_dicts(1, 3)
    copies = [{k: v.clone() for k, v in sd.items()} for sd in (base, *experts)]
    merge_experts(base, experts, heads="layer3", averaged="layer0", density=0.3)
    ties_merge(base, experts, 0.3)
    for sd, copy in zip((base, *experts), copies):
        _close(sd, copy, rtol=0, atol=0)


# ---------------------------------------------------------------------------- expert heads
def test_merge_experts_keeps_heads_averages_shared_blocks_and_masks_the_rest():
    base, experts = _state_dicts(2, 3)
    m = merge_experts(base, experts, heads=["layer2."], averaged="layer0.", method="ties",
                      density=0.4, scale=1.0)
    assert m.n_tasks == 3 and m.keys == tuple(base)
    assert list(m.shared) == ["layer0.w", "layer1.w", "layer3.w"]
    assert sorted(m.tau) == sorted(m.base) == ["layer1.w", "layer3.w"]
    assert [list(h) for h in m.heads] == [["layer2.w"]] * 3
    for t, sd in enumerate(experts):
        assert torch.equal(m.heads[t]["layer2.w"], sd["layer2.w"])
        assert m.heads[t]["layer2.w"].data_ptr() != sd["layer2.w"].data_ptr()  # a copy
    torch.testing.assert_close(m.shared["layer0.w"], sum(sd["layer0.w"] for sd in experts) / 3)
    _close({k: m.shared[k] for k in m.tau}, {k: v for k, v in ties_merge(base, experts, 0.4).items() if k in m.tau})
    assert m.stats == mask_stats(m.masks)
    for t in range(3):
        full = m.state_dict_for(t)
        assert list(full) == list(base)
        assert torch.equal(full["layer2.w"], experts[t]["layer2.w"])
        assert torch.equal(full["layer0.w"], m.shared["layer0.w"])
        for k in m.tau:
            torch.testing.assert_close(full[k], torch.where(m.masks[t][k], m.shared[k], base[k]))
        unmasked = m.state_dict_for(t, masked=False)
        _close({k: unmasked[k] for k in m.shared}, m.shared)
    with pytest.raises(ValueError, match="task must be an index in"):
        m.state_dict_for(3)


def test_merge_experts_with_a_predicate_and_no_heads():
    base, experts = _state_dicts(3, 2)
    m = merge_experts(base, experts, heads=lambda k: k.endswith("3.w"), method="task_arithmetic", scale=0.5)
    assert [list(h) for h in m.heads] == [["layer3.w"]] * 2
    m = merge_experts(base, experts, heads=None, method="average")
    _close(m.shared, naive_average(experts))
    assert m.heads == [{}, {}]


def test_key_selection_errors():
    base, experts = _state_dicts(4, 2)
    with pytest.raises(ValueError, match="heads prefix 'action_expert.out.' matches no key"):
        merge_experts(base, experts, heads=["layer3.", "action_expert.out."])
    with pytest.raises(ValueError, match="both heads and averaged"):
        merge_experts(base, experts, heads="layer3.", averaged="layer")
    sel, rest = split_state_dict(base, ("layer0.", "layer1."))
    assert list(sel) == ["layer0.w", "layer1.w"] and list(rest) == ["layer2.w", "layer3.w"]


# ---------------------------------------------------------------------------- validation
def test_validation_names_the_problem_and_the_fix():
    base, experts = _state_dicts(5, 2)
    bad = dict(experts[1])
    del bad["layer1.w"]
    bad["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"experts\[1\] does not have the keys of base: missing \['layer1.w'\]; unexpected \['extra'\]"):
        ties_merge(base, [experts[0], bad])
    with pytest.raises(ValueError, match=r"experts\[0\]\['layer0.w'\] has shape \(8,\), base\['layer0.w'\] has \(7,\)"):
        task_arithmetic(base, [{**experts[0], "layer0.w": torch.zeros(8)}])
    with pytest.raises(TypeError, match=r"has dtype torch.float64, base\['layer0.w'\] has torch.float32: cast"):
        task_vectors(base, [{**experts[0], "layer0.w": experts[0]["layer0.w"].double()}])
    with pytest.raises(TypeError, match="merging needs floating-point tensors"):
        naive_average([{**experts[0], "layer0.w": torch.zeros(7, dtype=torch.long)}])
    nan = experts[0]["layer1.w"].clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"experts\[1\]\['layer1.w'\] contains NaN or inf"):
        merge_experts(base, [experts[0], {**experts[1], "layer1.w": nan}], heads=None)
    with pytest.raises(TypeError, match="wrap it in a list"):
        ties_merge(base, experts[0])
    with pytest.raises(ValueError, match="experts is empty"):
        check_state_dicts(base, [])
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        ties_merge(base, experts, density=0.0)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        merge_experts(base, experts, heads=None, density=1.5)
    with pytest.raises(ValueError, match="unknown merge method 'dare'"):
        merge_experts(base, experts, heads=None, method="dare")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        tall_masks(task_vectors(base, experts), task_vectors(base, experts)[0], lam=-0.1)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        task_arithmetic(base, experts, scale=float("nan"))
    taus = task_vectors(base, experts)
    with pytest.raises(TypeError, match=r"mask\[0\]\['layer0.w'\] is torch.float32; masks are bool"):
        apply_mask(base, taus[0], {k: torch.ones_like(v) for k, v in taus[0].items()})


# ---------------------------------------------------------------------------- mask files
def test_mask_file_round_trip(tmp_path):
    base, experts = _state_dicts(6, 3)
    m = merge_experts(base, experts, heads="layer3.", density=0.5)
    path = save_masks(tmp_path / "masks.safetensors", m.masks, tasks=["a", "b", "c"], lam=LAMBDA)
    loaded = load_masks(path, like=base, n_tasks=3)
    assert loaded.tasks == ("a", "b", "c") and loaded.lam == LAMBDA
    for got, want in zip(loaded.masks, m.masks):
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == torch.bool and torch.equal(got[k], want[k])
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    assert load_masks(path, like=shapes).masks[0].keys() == m.masks[0].keys()


def test_mask_file_errors(tmp_path):
    base, experts = _state_dicts(7, 2)
    m = merge_experts(base, experts, heads=None, density=0.5)
    path = save_masks(tmp_path / "masks.safetensors", m.masks)
    with pytest.raises(FileNotFoundError, match="no MergeVLA mask file"):
        load_masks(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="masks keys the model lacks, \\['layer2.w'\\]"):
        load_masks(path, like={k: v for k, v in base.items() if k != "layer2.w"})
    with pytest.raises(CheckpointError, match="the mask of 'layer1.w' has shape \\(3, 5\\), the model's tensor \\(5, 3\\)"):
        load_masks(path, like={**base, "layer1.w": torch.zeros(5, 3)})
    with pytest.raises(CheckpointError, match="masks for 2 tasks, this model has 3"):
        load_masks(path, n_tasks=3)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the tensor data
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_masks(corrupt)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_masks(truncated)
    with pytest.raises(TypeError, match="masks are bool"):
        save_masks(tmp_path / "float.safetensors", [{k: v.float() for k, v in m.masks[0].items()}])
    with pytest.raises(ValueError, match="tasks must be 2 names"):
        save_masks(tmp_path / "names.safetensors", m.masks, tasks=["only_one"])
    assert not (tmp_path / "float.safetensors").exists() and not (tmp_path / "names.safetensors").exists()


# ---------------------------------------------------------------------------- refit to the masks
def _refit_objective(tau, taus, masks, grams, key):
    return sum(float(torch.einsum("ri,ij,rj->", d, g[key], d))
               for d, g in (((m[key] * tau) - t[key], g) for t, m, g in zip(taus, masks, grams)))


@given(seed=st.integers(0, 10_000), n=st.integers(1, 4))
@PROPS
def test_refit_minimises_the_masked_output_error(seed, n):
    """The refit is the least-squares optimum: no perturbation of it lowers the objective, and it
    is at least as good as the merge it started from."""
    g = torch.Generator().manual_seed(seed)
    taus = [{"w": torch.randn(5, 4, generator=g, dtype=torch.float64)} for _ in range(n)]
    masks = [{"w": torch.rand(5, 4, generator=g) < 0.6} for _ in range(n)]
    grams = []
    for _ in range(n):
        x = torch.randn(50, 4, generator=g, dtype=torch.float64)
        grams.append({"w": x.T @ x / 50})
    tau = refit_to_masks(taus, masks, grams, ridge=1e-10)["w"]
    best = _refit_objective(tau, taus, masks, grams, "w")
    start = merged_task_vector(taus, "task_arithmetic")["w"]
    assert best <= _refit_objective(start, taus, masks, grams, "w") + 1e-9
    for _ in range(5):
        step = 1e-3 * torch.randn(5, 4, generator=g, dtype=torch.float64)
        assert best <= _refit_objective(tau + step, taus, masks, grams, "w") + 1e-12


def test_refit_with_one_task_and_a_full_mask_returns_its_vector():
    tau = {"w": torch.tensor([[1.0, -2.0, 0.5]]), "b": torch.tensor([3.0])}
    masks = [{"w": torch.ones(1, 3, dtype=torch.bool), "b": torch.ones(1, dtype=torch.bool)}]
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = refit_to_masks([tau], masks, [{"w": x.T @ x}], ridge=1e-9)
    torch.testing.assert_close(out["w"], tau["w"], atol=1e-6, rtol=0)
    assert torch.equal(out["b"], tau["b"])  # no Gram matrix: the mean over the tasks that keep it


def test_refit_without_grams_is_the_masked_mean_and_zero_where_no_mask_keeps():
    taus = [{"w": torch.tensor([1.0, 2.0, 5.0])}, {"w": torch.tensor([3.0, -2.0, 7.0])}]
    masks = [{"w": torch.tensor([True, True, False])}, {"w": torch.tensor([True, False, False])}]
    assert torch.equal(refit_to_masks(taus, masks)["w"], torch.tensor([2.0, 2.0, 0.0]))


def test_refit_errors_name_the_problem():
    taus = [{"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 3)}]
    masks = [{"w": torch.ones(2, 3, dtype=torch.bool)}] * 2
    with pytest.raises(ValueError, match="one mask per task"):
        refit_to_masks(taus, masks[:1])
    with pytest.raises(ValueError, match="one per task"):
        refit_to_masks(taus, masks, [{"w": torch.eye(3)}])
    with pytest.raises(ValueError, match=r"must be a \(3, 3\) tensor"):
        refit_to_masks(taus, masks, [{"w": torch.eye(2)}] * 2)
    with pytest.raises(ValueError, match="lack"):
        refit_to_masks(taus, masks, [{"v": torch.eye(3)}] * 2)
    vec = [{"b": torch.zeros(3)}] * 2
    with pytest.raises(ValueError, match=r"only an \(out, in, ...\) weight"):
        refit_to_masks(vec, [{"b": torch.ones(3, dtype=torch.bool)}] * 2, [{"b": torch.eye(3)}] * 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        refit_to_masks(taus, masks, [{"w": torch.full((3, 3), float("nan"))}] * 2)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        refit_to_masks(taus, masks, ridge=0.0)
    with pytest.raises(TypeError, match="bool"):
        refit_to_masks(taus, [{"w": torch.ones(2, 3)}] * 2)


def test_input_grams_counts_only_valid_rows_and_skips_other_modules():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [9.0, 9.0]]])  # (B=2, T=2, 2)
    valid = torch.tensor([[True, True], [True, False]])
    grams = input_grams(model, ["0.weight", "1.weight", "2.weight"], [x], model, lambda b: valid)
    assert sorted(grams) == ["0.weight", "2.weight"]  # the LayerNorm is no linear layer
    rows = x[valid]
    torch.testing.assert_close(grams["0.weight"], (rows.T @ rows / 3).double())
    h = model[1](model[0](x))[valid]
    torch.testing.assert_close(grams["2.weight"], (h.T @ h / 3).double().detach(), rtol=1e-5, atol=1e-6)
    assert not model._forward_hooks and not model[0]._forward_hooks  # hooks removed
    with pytest.raises(ValueError, match="leading dimensions"):
        input_grams(model, ["0.weight"], [x], model, lambda b: valid[0])
    with pytest.raises(ValueError, match="no inputs reached"):
        input_grams(model, ["0.weight"], [], model)


def test_input_grams_of_a_convolution_give_its_output_error():
    """A convolution's Gram matrix is that of its input patches, in ``weight.flatten(1)``'s order:
    for any weight change ``D``, ``tr(D G D^T)`` is the mean squared output of the convolution
    with weight ``D`` over every image position."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1).double()
    x = torch.randn(4, 2, 9, 7, generator=g, dtype=torch.float64)
    gram = input_grams(conv, ["weight", "bias"], [x[:2], x[2:]], conv)
    assert sorted(gram) == ["weight"] and gram["weight"].shape == (18, 18)
    d = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, d, stride=2, padding=1)                # (B, 3, H', W')
    mean_sq = y.pow(2).sum(dim=1).mean()
    d2 = d.flatten(1)
    torch.testing.assert_close(torch.trace(d2 @ gram["weight"] @ d2.T), mean_sq)
    with pytest.raises(ValueError, match="grouped|ungrouped"):
        grouped = torch.nn.Conv2d(2, 2, kernel_size=1, groups=2)
        input_grams(grouped, ["weight"], [x.float()], grouped)
    with pytest.raises(ValueError, match="padding"):
        same = torch.nn.Conv2d(2, 2, kernel_size=3, padding="same")
        input_grams(same, ["weight"], [x.float()], same)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 3))
@PROPS
def test_refit_of_a_convolution_weight_is_that_of_its_flattened_weight(seed, n):
    g = torch.Generator().manual_seed(seed)
    taus = [{"w": torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)} for _ in range(n)]
    masks = [{"w": torch.rand(3, 2, 2, 2, generator=g) < 0.6} for _ in range(n)]
    grams = []
    for _ in range(n):
        x = torch.randn(40, 8, generator=g, dtype=torch.float64)
        grams.append({"w": x.T @ x / 40})
    conv = refit_to_masks(taus, masks, grams, ridge=1e-8)["w"]
    flat = refit_to_masks([{"w": t["w"].flatten(1)} for t in taus], [{"w": m["w"].flatten(1)} for m in masks],
                          grams, ridge=1e-8)["w"]
    assert conv.shape == (3, 2, 2, 2)
    torch.testing.assert_close(conv.flatten(1), flat)
    with pytest.raises(ValueError, match=r"must be a \(8, 8\) tensor"):
        refit_to_masks(taus, masks, [{"w": torch.eye(2)}] * n)


def test_merge_experts_refit_keeps_masks_and_heads_and_fits_tau():
    base, experts = _state_dicts(4, 3)
    plain = merge_experts(base, experts, heads=["layer2."], method="ties", density=0.5)
    refit = merge_experts(base, experts, heads=["layer2."], method="ties", density=0.5,
                          grams=[{} for _ in experts])
    assert refit.refit and not plain.refit
    for t in range(3):
        for k in plain.masks[t]:
            assert torch.equal(plain.masks[t][k], refit.masks[t][k])
        assert torch.equal(refit.heads[t]["layer2.w"], experts[t]["layer2.w"])
    taus = task_vectors({k: base[k] for k in plain.tau}, [{k: e[k] for k in plain.tau} for e in experts])
    _close(refit.tau, refit_to_masks(taus, plain.masks))
    with pytest.raises(ValueError, match="one per expert"):
        merge_experts(base, experts, heads=["layer2."], grams=[{}])
