"""Training loops (CleanRL style: collect, store, update, all in one readable function each).

- :func:`train_subagent`: double DQN on one regime's chunks, loss
  ``TD + alpha * KL(softmax(teacher Q) || softmax(Q))``. Also trains the single-DDQN baseline
  (all chunks).
- :func:`train_hyperagent`: the router over frozen sub-agents, loss
  ``TD + memory_weight * MSE(Q_mix(s, a), memory(s, a)) + kl_weight * KL(teacher || Q_mix)``.
- :func:`greedy_rollout`: evaluate any rule on an env episode; :func:`table_rollout`: a Q-table's
  greedy policy with an optional cost-aware action margin, vectorised over the table.
- :class:`EpochSelection`: per-epoch validation scores, the best epoch kept (a deep copy).

The sub-agents' losses are custom (teacher KL, memory), which SB3's DQN does not expose, so the
loop is written out here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from streammoe_envs.trading import TradingEnv
from torch import Tensor, nn

from streammoe.control.macrohft.memory import EpisodicMemory
from streammoe.control.macrohft.networks import HyperAgent, SubAgentQNet, mixed_q, stack_q
from streammoe.routing import ema_copy, ema_update

__all__ = ["DQNConfig", "EpochSelection", "HyperConfig", "ReplayBuffer", "Rollout", "greedy_rollout",
           "q_table", "table_rollout", "train_hyperagent", "train_subagent"]

LogFn = Callable[..., None]


@dataclass
class DQNConfig:
    hidden: int = 64
    lr: float = 1e-4
    batch_size: int = 512
    gamma: float = 0.99
    tau: float = 0.005
    steps_per_round: int = 100  # env steps between update rounds
    updates_per_round: int = 10
    grad_clip: float = 1.0
    eps_start: float = 0.5
    eps_end: float = 0.1
    eps_decay_epochs: float = 5.0
    epochs: int = 15
    buffer_size: int = 100_000
    use_adapter: bool = True


@dataclass
class HyperConfig(DQNConfig):
    memory_capacity: int = 4320
    memory_k: int = 5
    memory_weight: float = 0.5
    kl_weight: float = 5.0
    use_memory: bool = True
    temperature: float = 1.0
    input_context: bool = False  # the reference also feeds the context features
    memory_key: str = "film"  # film | encode (the reference's: before the normalisation and FiLM)
    # the reference's memory fallback: until the memory is full, and where none of the k nearest
    # entries took the action, the memory target is the sample's own fresh target (else no loss)
    memory_fallback: bool = False
    # used by the entry, not here: the share of the training window's chunks held out of the
    # sub-agents for the hyper-agent (0: in sample), and its episodes (chunks | whole_split)
    router_fraction: float = 0.3
    episode: str = "chunks"


@dataclass
class EpochSelection:
    """Validation after every epoch; with ``keep_best`` the network of the best epoch (a deep
    copy, not a reference to the live weights) is what training returns, otherwise the last.

    >>> sel = EpochSelection(score=lambda net: -abs(net.weight.item() - 1.0))
    >>> net = nn.Linear(1, 1, bias=False)
    >>> for w in (0.0, 0.9, 3.0):
    ...     _ = net.weight.data.fill_(w); _ = sel.after_epoch(net)
    >>> sel.best_epoch, sel.result(net).weight.item(), net.weight.item()
    (2, 0.8999999761581421, 3.0)
    """

    score: Callable[[nn.Module], float]
    keep_best: bool = True
    scores: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 before the first epoch
    _best: nn.Module | None = None

    def after_epoch(self, net: nn.Module) -> float:
        was_training = net.training
        net.eval()
        value = float(self.score(net))
        net.train(was_training)
        self.scores.append(value)
        if self.keep_best and (self._best is None or value > max(self.scores[:-1])):
            self._best, self.best_epoch = copy.deepcopy(net), len(self.scores)
        elif not self.keep_best:
            self.best_epoch = len(self.scores)
        return value

    def result(self, net: nn.Module) -> nn.Module:
        return self._best if (self.keep_best and self._best is not None) else net


class ReplayBuffer:
    """Transitions plus the teacher's Q-row of ``obs`` and, optionally, extra per-transition
    arrays (the hyper-agent stores the frozen sub-agents' Q of ``obs`` and ``next_obs``)."""

    def __init__(self, capacity: int, obs_dim: int, n_actions: int,
                 extra: dict[str, tuple[int, ...]] | None = None) -> None:
        self.capacity, self.size, self.ptr = capacity, 0, 0
        self.data = {"obs": np.zeros((capacity, obs_dim), np.float32),
                     "next_obs": np.zeros((capacity, obs_dim), np.float32),
                     "action": np.zeros(capacity, np.int64), "reward": np.zeros(capacity, np.float32),
                     "done": np.zeros(capacity, np.float32),
                     "teacher_q": np.zeros((capacity, n_actions), np.float32)}
        for name, shape in (extra or {}).items():
            self.data[name] = np.zeros((capacity, *shape), np.float32)

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: np.ndarray) -> None:
        """Append a batch: every array has the same leading length."""
        n = len(rows["action"])
        idx = (self.ptr + np.arange(n)) % self.capacity
        for name, value in rows.items():
            self.data[name][idx] = value
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, Tensor]:
        idx = rng.integers(0, self.size, size=n)
        return {name: torch.from_numpy(arr[idx]) for name, arr in self.data.items()}


def _epsilon(step: int, decay_steps: int, cfg: DQNConfig) -> float:
    frac = min(1.0, step / max(1, decay_steps))
    return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


def teacher_kl(q: Tensor, teacher_q: Tensor) -> Tensor:
    """``KL(softmax(teacher) || softmax(q))``, batch mean."""
    return F.kl_div(F.log_softmax(q, -1), F.log_softmax(teacher_q, -1), log_target=True,
                    reduction="batchmean")


class ChunkBatch:
    """One episode per chunk, run side by side so that acting is one batched forward pass.

    Each chunk gets a shallow copy of the env (the price and feature arrays are shared). A chunk
    that reaches the end of the series early (the last one) simply stops stepping.
    """

    def __init__(self, env: TradingEnv, starts: Sequence[int], length: int) -> None:
        self.envs = [copy.copy(env) for _ in starts]
        self.starts, self.length = [int(s) for s in starts], length
        self.active = np.ones(len(starts), bool)

    def reset(self) -> tuple[np.ndarray, np.ndarray]:
        """Observations ``(N, D)`` and teacher Q-rows ``(N, A)``."""
        out = [e.reset(options={"start": s, "length": self.length}) for e, s in zip(self.envs, self.starts)]
        self.active[:] = True
        return np.stack([o for o, _ in out]), np.stack([i["teacher_q"] for _, i in out])

    def step(self, obs: np.ndarray, teacher_q: np.ndarray, actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step the active chunks. Returns their indices, rewards, terminated flags and the new
        (obs, teacher_q) arrays for all chunks (inactive rows unchanged)."""
        idx = np.flatnonzero(self.active)
        rewards, terminated = np.zeros(len(idx), np.float32), np.zeros(len(idx), np.float32)
        obs, teacher_q = obs.copy(), teacher_q.copy()
        for j, i in enumerate(idx):
            o, r, term, trunc, info = self.envs[i].step(int(actions[i]))
            obs[i], teacher_q[i], rewards[j], terminated[j] = o, info["teacher_q"], r, term
            self.active[i] = not (term or trunc)
        return idx, rewards, terminated, obs, teacher_q


def _explore(greedy: np.ndarray, eps: float, n_actions: int, rng: np.random.Generator) -> np.ndarray:
    """Epsilon-greedy: each row takes a uniform random action with probability ``eps``."""
    random = rng.random(len(greedy)) < eps
    return np.where(random, rng.integers(0, n_actions, len(greedy)), greedy)


def _optimise(opt: torch.optim.Optimizer, net: nn.Module, target: nn.Module, loss: Tensor,
              cfg: DQNConfig) -> None:
    """One clipped gradient step on ``net``, then the Polyak update of its ``target``."""
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(target, net, cfg.tau)


def train_subagent(env: TradingEnv, chunk_starts: Sequence[int], chunk_length: int,
                   cfg: DQNConfig, alpha: float, seed: int, log: LogFn | None = None,
                   name: str = "subagent", selection: EpochSelection | None = None) -> SubAgentQNet:
    """Double DQN with a dueling head on the given chunks of ``env``'s series.

    An epoch plays every chunk once (side by side); ``updates_per_round`` gradient steps follow
    every ``steps_per_round`` collected transitions. With ``selection`` the network is scored
    after every epoch and the selected epoch's network is returned.
    """
    if len(chunk_starts) == 0:
        raise ValueError(f"{name}: no training chunks")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_actions = env.action_space.n
    q_net = SubAgentQNet(env.layout, n_actions, cfg.hidden, cfg.use_adapter)
    target = ema_copy(q_net)
    opt = torch.optim.Adam(q_net.parameters(), lr=cfg.lr, fused=True)  # one kernel per step
    buffer = ReplayBuffer(cfg.buffer_size, env.layout.dim, n_actions)
    decay_steps = int(cfg.eps_decay_epochs * len(chunk_starts) * chunk_length)
    step, owed_updates = 0, 0.0
    for epoch in range(cfg.epochs):
        losses = []
        batch = ChunkBatch(env, rng.permutation(np.asarray(chunk_starts)), chunk_length)
        obs, teacher_q = batch.reset()
        while batch.active.any():
            # act: epsilon-greedy on the online network, all chunks in one forward pass
            with torch.no_grad():
                greedy = q_net(torch.from_numpy(obs)).argmax(1).numpy()
            actions = _explore(greedy, _epsilon(step, decay_steps, cfg), n_actions, rng)
            idx, rewards, terminated, next_obs, next_teacher = batch.step(obs, teacher_q, actions)
            buffer.add(obs=obs[idx], next_obs=next_obs[idx], action=actions[idx], reward=rewards,
                       done=terminated, teacher_q=teacher_q[idx])
            obs, teacher_q, step = next_obs, next_teacher, step + len(idx)
            owed_updates += len(idx) * cfg.updates_per_round / cfg.steps_per_round
            if len(buffer) < cfg.batch_size:
                continue
            # learn: double-DQN target, TD + alpha * KL to the DP teacher
            while owed_updates >= 1:
                owed_updates -= 1
                b = buffer.sample(cfg.batch_size, rng)
                with torch.no_grad():
                    next_a = q_net(b["next_obs"]).argmax(1, keepdim=True)
                    next_q = target(b["next_obs"]).gather(1, next_a).squeeze(1)
                    y = b["reward"] + cfg.gamma * (1 - b["done"]) * next_q
                q_all = q_net(b["obs"])
                td = F.mse_loss(q_all.gather(1, b["action"][:, None]).squeeze(1), y)
                kl = teacher_kl(q_all, b["teacher_q"])
                _optimise(opt, q_net, target, td + alpha * kl, cfg)
                losses.append((td.item(), kl.item()))
        score = selection.after_epoch(q_net) if selection is not None else None
        if log is not None and losses:
            td_m, kl_m = np.mean(losses, axis=0)
            log(stage="subagent", agent=name, alpha=alpha, epoch=epoch + 1, step=step,
                td_loss=float(td_m), kl_loss=float(kl_m), memory_loss=None, score=score)
    if selection is not None:
        q_net = selection.result(q_net)
    q_net.eval()
    return q_net


class UniformMixer(nn.Module):
    """Ablation: equal weights on every sub-agent (no hyper-agent learning)."""

    def __init__(self, n_experts: int) -> None:
        super().__init__()
        self.n_experts = n_experts

    def forward(self, obs: Tensor) -> Tensor:
        return obs.new_full((*obs.shape[:-1], self.n_experts), 1.0 / self.n_experts)


def train_hyperagent(env: TradingEnv, chunk_starts: Sequence[int], chunk_length: int,
                     subagents: Sequence[nn.Module], cfg: HyperConfig, seed: int,
                     log: LogFn | None = None, selection: EpochSelection | None = None
                     ) -> tuple[HyperAgent, EpisodicMemory]:
    """Learn softmax weights over the frozen sub-agents by double DQN on ``Q_mix``, with the
    episodic-memory and teacher-KL terms. Same collection schedule as :func:`train_subagent`.

    The memory is queried while collecting, *before* the new transition is inserted (so a
    sample never finds itself), and its answer is stored with the transition in the replay
    buffer, as in the reference. ``selection`` scores the hyper-agent after every epoch (see
    :class:`EpochSelection`)."""
    if len(chunk_starts) == 0:
        raise ValueError("hyper-agent: no training chunks")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for agent in subagents:
        agent.eval().requires_grad_(False)
    n_actions, n_experts = env.action_space.n, len(subagents)
    hyper = HyperAgent(env.layout, n_experts, cfg.hidden, cfg.use_adapter, cfg.temperature,
                       cfg.input_context, cfg.memory_key)
    target = ema_copy(hyper)
    opt = torch.optim.Adam(hyper.parameters(), lr=cfg.lr, fused=True)
    memory = EpisodicMemory(cfg.memory_capacity, cfg.hidden, env.layout.dim, cfg.memory_k)
    # the frozen sub-agents' Q of obs and next_obs are stored, so updates never re-run them
    buffer = ReplayBuffer(cfg.buffer_size, env.layout.dim, n_actions,
                          extra={"expert_q": (n_experts, n_actions),
                                 "next_expert_q": (n_experts, n_actions),
                                 "memory_q": (), "memory_found": ()})
    decay_steps = int(cfg.eps_decay_epochs * len(chunk_starts) * chunk_length)
    step, owed_updates = 0, 0.0
    for epoch in range(cfg.epochs):
        losses = []
        batch = ChunkBatch(env, rng.permutation(np.asarray(chunk_starts)), chunk_length)
        obs, teacher_q = batch.reset()
        with torch.no_grad():
            expert_q = stack_q(subagents, torch.from_numpy(obs))
        while batch.active.any():
            obs_t = torch.from_numpy(obs)
            with torch.no_grad():
                greedy = mixed_q(hyper(obs_t), expert_q).argmax(1).numpy()
            actions = _explore(greedy, _epsilon(step, decay_steps, cfg), n_actions, rng)
            idx, rewards, terminated, next_obs, next_teacher = batch.step(obs, teacher_q, actions)
            next_t = torch.from_numpy(next_obs)
            with torch.no_grad():
                next_expert_q = stack_q(subagents, next_t)
                # memory entry: key of s, target q = r + gamma * max_a Q_mix(s', a)
                next_value = mixed_q(hyper(next_t[idx]), next_expert_q[idx]).max(1).values
                fresh_q = torch.from_numpy(rewards) + cfg.gamma * (1 - torch.from_numpy(terminated)) * next_value
                keys, acted = hyper.key(obs_t[idx]), torch.from_numpy(actions[idx])
                mem_q, found = memory.query(keys, acted)  # before inserting this transition
                if cfg.memory_fallback:
                    found &= len(memory) >= memory.capacity
                    mem_q, found = torch.where(found, mem_q, fresh_q), torch.ones_like(found)
                memory.add(keys, obs_t[idx], acted, fresh_q)
            buffer.add(obs=obs[idx], next_obs=next_obs[idx], action=actions[idx], reward=rewards,
                       done=terminated, teacher_q=teacher_q[idx], expert_q=expert_q[idx].numpy(),
                       next_expert_q=next_expert_q[idx].numpy(), memory_q=mem_q.numpy(),
                       memory_found=found.float().numpy())
            obs, teacher_q, expert_q, step = next_obs, next_teacher, next_expert_q, step + len(idx)
            owed_updates += len(idx) * cfg.updates_per_round / cfg.steps_per_round
            if len(buffer) < cfg.batch_size or owed_updates < 1:
                continue
            while owed_updates >= 1:
                owed_updates -= 1
                b = buffer.sample(cfg.batch_size, rng)
                with torch.no_grad():
                    next_a = mixed_q(hyper(b["next_obs"]), b["next_expert_q"]).argmax(1, keepdim=True)
                    next_q = mixed_q(target(b["next_obs"]), b["next_expert_q"]).gather(1, next_a).squeeze(1)
                    y = b["reward"] + cfg.gamma * (1 - b["done"]) * next_q
                q_all = mixed_q(hyper(b["obs"]), b["expert_q"])
                q_sa = q_all.gather(1, b["action"][:, None]).squeeze(1)
                td = F.mse_loss(q_sa, y)
                mem = torch.zeros(())
                used = b["memory_found"] > 0
                if cfg.use_memory and used.any():
                    mem = F.mse_loss(q_sa[used], b["memory_q"][used])
                kl = teacher_kl(q_all, b["teacher_q"])
                _optimise(opt, hyper, target, td + cfg.memory_weight * mem + cfg.kl_weight * kl, cfg)
                losses.append((td.item(), kl.item(), mem.item()))
            memory.reencode(hyper.key)  # keys follow the network as it changes
        score = selection.after_epoch(hyper) if selection is not None else None
        if log is not None and losses:
            td_m, kl_m, mem_m = np.mean(losses, axis=0)
            log(stage="hyper", agent="hyper", alpha=cfg.kl_weight, epoch=epoch + 1, step=step,
                td_loss=float(td_m), kl_loss=float(kl_m), memory_loss=float(mem_m), score=score)
    if selection is not None:
        hyper = selection.result(hyper)
    hyper.eval()
    return hyper, memory


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class Rollout:
    values: np.ndarray  # (T+1,) portfolio value, starting with the initial cash
    positions: np.ndarray  # (T,) position held over each bar
    actions: np.ndarray  # (T,)
    rewards: np.ndarray  # (T,)
    bars: np.ndarray  # (T,) index of the bar each decision was made at


@torch.no_grad()
def q_table(env: TradingEnv, q_fn: Callable[[Tensor], Tensor], start: int = 0,
            end: int | None = None) -> np.ndarray:
    """Q-values for every bar in ``[start, end)`` and every previous position, in one batch:
    ``(T, K, A)``. Exact because the networks are row-wise (per-sample dueling mean)."""
    obs = torch.from_numpy(env.all_observations(start, end))
    T, K, D = obs.shape
    return q_fn(obs.reshape(T * K, D)).reshape(T, K, -1).numpy()


def greedy_rollout(env: TradingEnv, policy: Callable[[int, int], int], start: int = 0,
                   length: int | None = None) -> Rollout:
    """Run one episode; ``policy(bar, previous_position_index) -> action``."""
    options = {"start": start} if length is None else {"start": start, "length": length}
    _, info = env.reset(options=options)
    values, positions, actions, rewards, bars = [info["value"]], [], [], [], []
    done = False
    while not done:
        bar = info["bar"]
        action = int(policy(bar, info["position_index"]))
        _, reward, terminated, truncated, info = env.step(action)
        values.append(info["value"])
        positions.append(info["position"])
        actions.append(action)
        rewards.append(reward)
        bars.append(bar)
        done = terminated or truncated
    return Rollout(np.asarray(values), np.asarray(positions), np.asarray(actions),
                   np.asarray(rewards), np.asarray(bars))


def table_rollout(env: TradingEnv, table: np.ndarray, margin: float = 0.0, start: int = 0,
                  length: int | None = None) -> Rollout:
    """The greedy policy of a ``(T, K, A)`` Q-table (row 0 = bar ``start``) from flat, with a
    cost-aware action margin: the position changes only where the best action's Q beats holding
    by more than ``margin`` times that trade's commission (in reward units). ``margin=0`` is the
    plain greedy policy; the result equals stepping ``env`` (:func:`greedy_rollout`).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    n = len(env.prices) - 1 - start if length is None else min(int(length), len(env.prices) - 1 - start)
    if n < 1 or len(table) < n:
        raise ValueError(f"table has {len(table)} rows, the episode needs {n} from bar {start}")
    greedy = table[:n].argmax(-1)  # (n, K)
    rows = np.arange(env.layout.n_levels)
    gain = table[:n] - table[:n, rows, rows][:, :, None]  # Q(a) - Q(hold), per previous position
    cost = env.switch_costs[start:start + n]
    keep = np.take_along_axis(gain, greedy[:, :, None], 2)[:, :, 0] <= margin * np.take_along_axis(
        cost, greedy[:, :, None], 2)[:, :, 0]
    decision = np.where(keep & (margin > 0), rows[None, :], greedy)  # (n, K): action per position
    actions = np.empty(n, np.int64)
    pos = env.flat_index
    for t in range(n):  # the only sequential part: the position carried from bar to bar
        pos = actions[t] = decision[t, pos]
    prev = np.concatenate([[env.flat_index], actions[:-1]])
    bars = np.arange(start, start + n)
    return Rollout(env.portfolio_values(actions, start), env.levels[actions] * env.max_holding,
                   actions, env.reward_table[bars, prev, actions], bars)


def table_policy(table: np.ndarray, offset: int = 0) -> Callable[[int, int], int]:
    """Greedy policy from a ``(T, K, A)`` Q-table whose row 0 is bar ``offset``."""
    greedy = table.argmax(-1)
    return lambda bar, pos: int(greedy[bar - offset, pos])
