"""MacroHFT networks, episodic memory, training loops and checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from streammoe_envs.trading import TradingEnv
from streammoe_envs.trading.data import synthetic_market
from streammoe_envs.trading.features import ObsLayout, build_features

from streammoe.control.macrohft.memory import EpisodicMemory
from streammoe.control.macrohft.model import MacroHFT, load_checkpoint, save_checkpoint
from streammoe.control.macrohft.networks import FiLM, HyperAgent, SubAgentQNet, dueling_combine
from streammoe.control.macrohft.train import (
    DQNConfig,
    EpochSelection,
    HyperConfig,
    greedy_rollout,
    q_table,
    table_policy,
    table_rollout,
    teacher_kl,
    train_hyperagent,
    train_subagent,
)

LAYOUT = ObsLayout(n_state=6, n_context=3, n_market=2, n_levels=3)


def _obs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, LAYOUT.dim, generator=g)
    pos = torch.randint(0, LAYOUT.n_levels, (n,), generator=g)
    x[:, -LAYOUT.n_levels:] = torch.nn.functional.one_hot(pos, LAYOUT.n_levels).float()
    return x


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised FiLM / logits layers included)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("use_adapter", [True, False])
def test_batched_and_single_sample_q_are_identical(use_adapter: bool) -> None:
    net = _randomise(SubAgentQNet(LAYOUT, 3, hidden=16, use_adapter=use_adapter)).eval()
    obs = _obs(64)
    with torch.no_grad():
        batched = net(obs)
        single = torch.cat([net(o[None]) for o in obs])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
    hyper = _randomise(HyperAgent(LAYOUT, 6, hidden=16)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hyper(obs), torch.cat([hyper(o[None]) for o in obs]), rtol=0, atol=1e-6)


def test_dueling_mean_is_per_sample() -> None:
    v, a = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0, 2.0], [10.0, 30.0]])
    q = dueling_combine(v, a)
    assert q.tolist() == [[0.0, 2.0], [-8.0, 12.0]]
    # the reference's batch-wide mean would make row 0 depend on row 1: ours does not
    assert dueling_combine(v[:1], a[:1]).tolist() == q[:1].tolist()
    assert (v + a - a.mean()).tolist() != q.tolist()


def test_film_starts_as_layernorm_and_modulates_after_training() -> None:
    film = FiLM(8)
    h, cond = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(film(h, cond), film.norm(h))
    with torch.no_grad():
        film.modulation.weight.normal_()
    assert not torch.allclose(film(h, cond), film.norm(h))
    assert not torch.allclose(film(h, cond), film(h, cond + 1))


def test_subagent_adapter_reads_context_and_position() -> None:
    net = _randomise(SubAgentQNet(LAYOUT, 3, hidden=16)).eval()
    obs = _obs(8)
    other_ctx = obs.clone()
    other_ctx[:, 6:9] += 1.0
    assert not torch.allclose(net(obs), net(other_ctx))
    plain = _randomise(SubAgentQNet(LAYOUT, 3, hidden=16, use_adapter=False)).eval()
    torch.testing.assert_close(plain(obs), plain(other_ctx))  # the ablation ignores context
    other_pos = obs.clone()
    other_pos[:, -3:] = other_pos[:, -3:].roll(1, dims=1)
    assert not torch.allclose(plain(obs), plain(other_pos))


def test_hyper_agent_starts_uniform_and_conditions_on_market() -> None:
    hyper = HyperAgent(LAYOUT, 6, hidden=16)
    torch.testing.assert_close(hyper(_obs(5)), torch.full((5, 6), 1 / 6))
    hyper = _randomise(hyper)
    obs = _obs(5)
    moved = obs.clone()
    moved[:, 9:11] += 1.0  # market class columns
    assert not torch.allclose(hyper(obs), hyper(moved))
    no_adapter = _randomise(HyperAgent(LAYOUT, 6, hidden=16, use_adapter=False))
    torch.testing.assert_close(no_adapter(obs), no_adapter(moved))


def test_layout_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="layout expects"):
        SubAgentQNet(LAYOUT, 3)(torch.zeros(2, LAYOUT.dim + 1))


# -- memory -----------------------------------------------------------------------------------
def _filled_memory(n: int = 300, capacity: int = 256, seed: int = 0) -> EpisodicMemory:
    g = torch.Generator().manual_seed(seed)
    mem = EpisodicMemory(capacity, key_dim=4, obs_dim=4, k=5)
    for _ in range(n // 50):
        keys = torch.randn(50, 4, generator=g)
        mem.add(keys, keys, torch.randint(0, 3, (50,), generator=g), torch.randn(50, generator=g))
    return mem


def test_vectorised_query_matches_python_loop() -> None:
    mem = _filled_memory()
    assert len(mem) == 256 and mem.ptr == 300 % 256  # ring buffer wrapped
    q_keys = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    actions = torch.arange(20) % 3
    fast, found = mem.query(q_keys, actions)
    slow, found_slow = mem.query_loop(q_keys, actions)
    assert torch.equal(found, found_slow) and 10 < found.sum() < 20  # some find no same action
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_memory_uses_only_same_action_entries_and_inverse_square_weights() -> None:
    mem = EpisodicMemory(8, key_dim=1, obs_dim=1, k=3)
    keys = torch.tensor([[0.0], [1.0], [2.0], [5.0]])
    mem.add(keys, keys, torch.tensor([0, 0, 1, 0]), torch.tensor([1.0, 2.0, 100.0, 4.0]))
    value, found = mem.query(torch.tensor([[0.5]]), torch.tensor([0]))
    w = 1 / (0.25 + 1e-3)  # entries at 0 and 1 are both 0.5 away; the action-1 entry is ignored
    assert found.item() and value.item() == pytest.approx((w * 1 + w * 2) / (2 * w))
    value, found = mem.query(torch.tensor([[0.5]]), torch.tensor([2]))  # no entry took action 2
    assert not found.item()


def test_memory_takes_the_k_nearest_before_masking_the_action() -> None:
    """The reference's order: an action-0 query whose 2 nearest entries took action 1 finds
    nothing, although an action-0 entry exists further away (masking first would find it)."""
    mem = EpisodicMemory(8, key_dim=1, obs_dim=1, k=2)
    keys = torch.tensor([[0.0], [0.1], [3.0]])
    mem.add(keys, keys, torch.tensor([1, 1, 0]), torch.tensor([1.0, 1.0, 7.0]))
    value, found = mem.query(torch.tensor([[0.0]]), torch.tensor([0]))
    assert not found.item() and value.item() == 0.0
    value, found = mem.query(torch.tensor([[2.0]]), torch.tensor([0]))  # nearest: 3.0 (action 0)
    assert found.item() and value.item() == pytest.approx(7.0)


def test_memory_reencode_and_state_round_trip() -> None:
    mem = _filled_memory()
    mem.reencode(lambda obs: obs * 2)
    torch.testing.assert_close(mem.keys[: len(mem)], mem.obs[: len(mem)] * 2)
    clone = EpisodicMemory(256, 4, 4, 5)
    clone.load_state_dict(mem.state_dict())
    q = torch.randn(7, 4)
    a = torch.zeros(7, dtype=torch.long)
    torch.testing.assert_close(clone.query(q, a)[0], mem.query(q, a)[0])


# -- training and checkpoints -----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_env() -> TradingEnv:
    df, _ = synthetic_market(700, seed=2)
    return TradingEnv(build_features(df, train=0.99, val=0.0, context_window=20, market_window=60)
                      .split("train"), commission=2e-4)


TINY = dict(hidden=16, batch_size=32, epochs=2, steps_per_round=20, updates_per_round=2,
            eps_decay_epochs=1, lr=1e-3)


def test_subagent_training_is_deterministic_and_kl_pulls_towards_the_teacher(
        small_env: TradingEnv) -> None:
    starts = np.arange(0, 600, 40)
    cfg = DQNConfig(**TINY)
    rows: list[dict] = []
    a = train_subagent(small_env, starts, 40, cfg, alpha=4.0, seed=3, log=lambda **r: rows.append(r))
    b = train_subagent(small_env, starts, 40, cfg, alpha=4.0, seed=3)
    no_kl = train_subagent(small_env, starts, 40, cfg, alpha=0.0, seed=3)
    obs = torch.from_numpy(small_env.all_observations().reshape(-1, small_env.layout.dim))
    with torch.no_grad():
        torch.testing.assert_close(a(obs), b(obs))
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["kl_loss"] < rows[0]["kl_loss"]
    # the KL term brings softmax(Q) closer to softmax(teacher Q) than TD alone does
    teacher = torch.from_numpy(small_env.teacher_q.reshape(-1, 2))
    with torch.no_grad():
        assert teacher_kl(a(obs), teacher) < teacher_kl(no_kl(obs), teacher)


def test_hyperagent_training_and_checkpoint_round_trip(small_env: TradingEnv, tmp_path: Path) -> None:
    starts = np.arange(0, 600, 40)
    subs = {f"s{i}": train_subagent(small_env, starts[i::2], 40, DQNConfig(**{**TINY, "epochs": 1}),
                                    1.0, seed=i) for i in range(2)}
    cfg = HyperConfig(**TINY, memory_capacity=128)
    hyper, memory = train_hyperagent(small_env, starts, 40, list(subs.values()), cfg, seed=5)
    assert len(memory) == 128
    # the memory's keys were re-encoded with the final embedding
    torch.testing.assert_close(memory.keys, hyper.embed(memory.obs).detach(), rtol=1e-5, atol=1e-5)
    model = MacroHFT(small_env.layout, 2, subs, hyper, copy.deepcopy(subs["s0"]), memory,
                     {"s0": 1.0, "s1": 1.0}, {"note": "test"})
    path = save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    obs = torch.from_numpy(small_env.all_observations().reshape(-1, small_env.layout.dim))
    torch.testing.assert_close(loaded.q_values(obs), model.q_values(obs))
    torch.testing.assert_close(loaded.weights(obs), model.weights(obs))
    torch.testing.assert_close(loaded.single_ddqn(obs), model.single_ddqn(obs))
    assert loaded.meta == {"note": "test"} and loaded.alphas == {"s0": 1.0, "s1": 1.0}
    # the same greedy test rollout before and after reloading
    r1 = greedy_rollout(small_env, table_policy(q_table(small_env, model.q_values)))
    r2 = greedy_rollout(small_env, table_policy(q_table(small_env, loaded.q_values)))
    np.testing.assert_array_equal(r1.values, r2.values)


def test_table_rollout_equals_step_by_step_rollout(small_env: TradingEnv) -> None:
    net = _randomise(SubAgentQNet(small_env.layout, 2, hidden=16)).eval()
    table_run = greedy_rollout(small_env, table_policy(q_table(small_env, net)), 100, 200)
    obs, _ = small_env.reset(options={"start": 100, "length": 200})
    actions, done = [], False
    while not done:
        with torch.no_grad():
            a = int(net(torch.from_numpy(obs)[None]).argmax())
        obs, _, term, trunc, _ = small_env.step(a)
        actions.append(a)
        done = term or trunc
    assert table_run.actions.tolist() == actions and len(actions) == 200


def test_corrupt_checkpoint_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable MacroHFT checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a MacroHFT checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# -- vectorised evaluation, action margin, epoch selection ---------------------------------------
def test_table_rollout_equals_stepping_the_env(small_env: TradingEnv) -> None:
    table = np.random.default_rng(0).normal(size=(len(small_env.prices), 2, 2)).astype(np.float32)
    stepped = greedy_rollout(small_env, table_policy(table[100:], offset=100), 100, 200)
    fast = table_rollout(small_env, table[100:], start=100, length=200)
    np.testing.assert_array_equal(fast.actions, stepped.actions)
    np.testing.assert_allclose(fast.values, stepped.values, rtol=1e-12)
    np.testing.assert_allclose(fast.rewards, stepped.rewards, rtol=1e-6)
    np.testing.assert_array_equal(fast.positions, stepped.positions)
    np.testing.assert_array_equal(fast.bars, stepped.bars)


def test_action_margin_holds_unless_the_gain_beats_the_trade_cost(small_env: TradingEnv) -> None:
    cost = small_env.switch_costs[0, 0, 1]  # flat -> long at bar 0, in reward units
    assert cost > 0 and small_env.switch_costs[0, 0, 0] == 0
    table = np.zeros((len(small_env.prices), 2, 2), np.float32)
    table[:, 0, 1] = 1.5 * cost  # from flat, going long looks 1.5 commissions better
    table[:, 1, 1] = 1.0  # once long, stay long
    assert table_rollout(small_env, table, margin=1.0).actions.tolist()[:3] == [1, 1, 1]
    held = table_rollout(small_env, table, margin=2.0)
    assert held.actions.max() == 0 and held.values[-1] == held.values[0]  # never trades
    noisy = np.random.default_rng(1).normal(size=table.shape).astype(np.float32) * cost
    trades = [table_rollout(small_env, noisy, m).positions for m in (0.0, 1.0, 4.0)]
    n = [int(np.count_nonzero(np.diff(np.concatenate([[0.0], p])))) for p in trades]
    assert n[0] > n[1] > n[2]
    with pytest.raises(ValueError, match="margin"):
        table_rollout(small_env, table, margin=-1.0)


def test_epoch_selection_returns_a_copy_of_the_best_epoch(small_env: TradingEnv) -> None:
    starts = np.arange(0, 600, 40)
    cfg = DQNConfig(**{**TINY, "epochs": 3})
    obs = torch.from_numpy(small_env.all_observations().reshape(-1, small_env.layout.dim))
    snapshots: list[torch.Tensor] = []

    def score(net: torch.nn.Module) -> float:  # records each epoch's output; epoch 2 scores best
        with torch.no_grad():
            snapshots.append(net(obs).clone())
        return [0.0, 5.0, 1.0][len(snapshots) - 1]

    sel = EpochSelection(score)
    net = train_subagent(small_env, starts, 40, cfg, 1.0, seed=3, selection=sel)
    assert sel.scores == [0.0, 5.0, 1.0] and sel.best_epoch == 2
    with torch.no_grad():
        torch.testing.assert_close(net(obs), snapshots[1])
        assert not torch.allclose(net(obs), snapshots[2])  # not the live (last) weights
    snapshots.clear()
    last = train_subagent(small_env, starts, 40, cfg, 1.0, seed=3,
                          selection=EpochSelection(score, keep_best=False))
    with torch.no_grad():
        torch.testing.assert_close(last(obs), snapshots[2])


def test_hyperagent_reference_input_and_memory_key() -> None:
    obs = _obs(16)
    moved = obs.clone()
    moved[:, 6:9] += 1.0  # context columns
    plain = _randomise(HyperAgent(LAYOUT, 6, hidden=16))
    torch.testing.assert_close(plain(obs), plain(moved))  # ours: no context input
    ref = _randomise(HyperAgent(LAYOUT, 6, hidden=16, input_context=True, memory_key="encode"))
    assert not torch.allclose(ref(obs), ref(moved))
    market = obs.clone()
    market[:, 9:11] += 1.0
    torch.testing.assert_close(ref.key(obs), ref.key(market))  # the key is taken before FiLM
    assert not torch.allclose(plain.key(obs), plain.key(market))
    with pytest.raises(ValueError, match="memory_key"):
        HyperAgent(LAYOUT, 6, memory_key="after")


def test_teacher_commission_changes_the_teacher_not_the_reward() -> None:
    df, _ = synthetic_market(400, seed=4)
    fs = build_features(df, train=0.9, val=0.0, context_window=20, market_window=60).split("train")
    env, ref = TradingEnv(fs, commission=2e-4), TradingEnv(fs, commission=2e-4, teacher_commission=1e-3)
    np.testing.assert_array_equal(env.reward_table, ref.reward_table)
    assert ref.teacher_commission == 1e-3 and not np.allclose(env.teacher_q, ref.teacher_q)
    with pytest.raises(ValueError, match="teacher_commission"):
        TradingEnv(fs, teacher_commission=-1.0)


def test_shrunk_weights_and_checkpoint_keep_shrinkage_and_margin(small_env: TradingEnv,
                                                                 tmp_path: Path) -> None:
    subs = {f"s{i}": _randomise(SubAgentQNet(small_env.layout, 2, hidden=8)).eval() for i in range(3)}
    hyper = _randomise(HyperAgent(small_env.layout, 3, hidden=8, input_context=True,
                                  memory_key="encode")).eval()
    model = MacroHFT(small_env.layout, 2, subs, hyper, shrinkage=0.5, margin=2.0)
    obs = torch.from_numpy(small_env.all_observations().reshape(-1, small_env.layout.dim))
    with torch.no_grad():
        torch.testing.assert_close(model.weights(obs), 0.5 * hyper(obs) + 0.5 / 3)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors"))
    assert (loaded.shrinkage, loaded.margin) == (0.5, 2.0)
    assert loaded.mixer.input_context and loaded.mixer.memory_key == "encode"
    torch.testing.assert_close(loaded.q_values(obs), model.q_values(obs))
