"""The hyper-agent's episodic memory: a ring buffer of (key, action, q-target) with a vectorised
k-nearest-neighbour query.

As in the reference, the ``k`` nearest keys are found first and then those whose action differs
from the query's are masked out; the answer is the inverse-squared-distance weighted mean
``sum_j w_j q_j / sum_j w_j`` with ``w_j = 1 / (d_j^2 + eps)`` over the remaining ones, and a query
whose ``k`` nearest entries all took another action finds nothing. (Masking *before* the top-k
always finds a same-action entry, most often the queried sample itself when it is already stored.) Keys are the hyper-agent's
embedding of the stored observation; :meth:`EpisodicMemory.reencode` recomputes them after the
network changes.

>>> import torch
>>> m = EpisodicMemory(capacity=4, key_dim=1, obs_dim=1, k=2)
>>> for x, a, q in [(0., 0, 1.), (1., 0, 3.), (5., 1, 9.)]:
...     m.add(torch.tensor([[x]]), torch.tensor([[x]]), torch.tensor([a]), torch.tensor([q]))
>>> value, found = m.query(torch.tensor([[0.], [5.], [0.]]), torch.tensor([0, 1, 1]))
>>> [round(v, 3) for v in value.tolist()], found.tolist()
([1.002, 9.0, 0.0], [True, True, False])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["EpisodicMemory"]


class EpisodicMemory:
    def __init__(self, capacity: int = 4320, key_dim: int = 64, obs_dim: int = 1, k: int = 5,
                 eps: float = 1e-3, device: torch.device | str = "cpu") -> None:
        if capacity < 1 or k < 1:
            raise ValueError(f"capacity and k must be >= 1, got {capacity}, {k}")
        self.capacity, self.k, self.eps = capacity, k, eps
        self.keys = torch.zeros(capacity, key_dim, device=device)
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.full((capacity,), -1, dtype=torch.long, device=device)
        self.q = torch.zeros(capacity, device=device)
        self.size = self.ptr = 0

    def __len__(self) -> int:
        return self.size

    def add(self, keys: Tensor, obs: Tensor, actions: Tensor, q: Tensor) -> None:
        """Append a batch (oldest entries are overwritten once full)."""
        n = len(actions)
        if not (len(keys) == len(obs) == len(q) == n):
            raise ValueError("keys, obs, actions and q need the same length")
        idx = (self.ptr + torch.arange(n, device=self.keys.device)) % self.capacity
        self.keys[idx], self.obs[idx] = keys.detach().float(), obs.detach().float()
        self.actions[idx], self.q[idx] = actions.long(), q.detach().float()
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    @torch.no_grad()
    def query(self, keys: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Memory value per query ``(B,)`` and whether any of the ``k`` nearest entries took the
        query's action ``(B,)`` (value 0 where not)."""
        n = self.size
        if n == 0:
            return torch.zeros(len(keys), device=keys.device), torch.zeros(len(keys), dtype=torch.bool, device=keys.device)
        d2 = torch.cdist(keys.float(), self.keys[:n]).pow(2)  # (B, n)
        k = min(self.k, n)
        nearest_d2, nearest = torch.topk(d2, k, dim=1, largest=False)
        same = self.actions[:n][nearest] == actions[:, None]  # top-k first, then the action mask
        w = torch.where(same, 1.0 / (nearest_d2 + self.eps), torch.zeros_like(nearest_d2))
        total = w.sum(1)
        found = total > 0
        value = (w * self.q[:n][nearest]).sum(1) / total.clamp_min(1e-12)
        return value, found

    @torch.no_grad()
    def query_loop(self, keys: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """The same answer with a plain Python loop over entries (the reference code's way);
        kept as the benchmark baseline and a test oracle."""
        values, found = [], []
        for key, action in zip(keys.tolist(), actions.tolist()):
            cands: list[tuple[float, int, float]] = []
            for j in range(self.size):
                entry = self.keys[j].tolist()
                d2 = sum((a - b) ** 2 for a, b in zip(key, entry))
                cands.append((d2, int(self.actions[j]), float(self.q[j])))
            cands.sort(key=lambda c: c[0])
            top = [(d2, q) for d2, a, q in cands[: self.k] if a == action]
            ws = [1.0 / (d2 + self.eps) for d2, _ in top]
            values.append(sum(w * q for w, (_, q) in zip(ws, top)) / sum(ws) if top else 0.0)
            found.append(bool(top))
        return torch.tensor(values), torch.tensor(found)

    @torch.no_grad()
    def reencode(self, embed: Callable[[Tensor], Tensor], batch_size: int = 4096) -> None:
        """Recompute every key from its stored observation with the current embedding."""
        for a in range(0, self.size, batch_size):
            self.keys[a:a + batch_size] = embed(self.obs[a:a + batch_size]).float()

    def state_dict(self) -> dict[str, object]:
        return {"keys": self.keys.clone(), "obs": self.obs.clone(), "actions": self.actions.clone(),
                "q": self.q.clone(), "size": self.size, "ptr": self.ptr}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name in ("keys", "obs", "actions", "q"):
            getattr(self, name).copy_(state[name])  # type: ignore[arg-type]
        self.size, self.ptr = int(state["size"]), int(state["ptr"])  # type: ignore[arg-type]
