"""An MLP router trained online: rows arrive one at a time, it learns from a fixed-size buffer.

:class:`OnlineRouter` is what a stream learner (DriftMoE) needs from the core, behind methods so
the learner never touches the network's layers or the optimiser:

* :meth:`~OnlineRouter.scores`: eval-mode logits of one row as a NumPy forward on weights cached
  after every step (no torch call per row: for the router's sizes it is several times faster than
  a torch forward of one row, see ``docs/driftmoe.md``);
* :meth:`~OnlineRouter.push`: buffer ``(input, target)``; when ``batch_rows`` rows are in, one
  Adam step on their mean multi-hot BCE (training mode, dropout from the router's generator). The
  gradient comes from a NumPy backward pass when the buffer is small (``backward="auto"``, the
  default: for a few rows torch's autograd costs more than the arithmetic, ``scripts/
  profile_driftmoe.py --router-only``), the same gradient as autograd's up to float32 rounding;
  Adam is torch's;
* :meth:`~OnlineRouter.grow_inputs` / :meth:`~OnlineRouter.grow_outputs`: new features / new
  experts get zero weights, so the existing scores are unchanged, and Adam's moments are
  zero-padded, so the optimiser's state is kept;
* pickling stores weights, Adam's state and the generator as NumPy arrays, so two pickles of one
  router are byte-identical (torch's pickles embed storage addresses).

>>> import numpy as np
>>> r = OnlineRouter(3, 2, hidden=(8,), batch_rows=2, seed=0)
>>> r.scores(np.zeros(3)).shape
(2,)
>>> r.push(np.ones(3), np.array([1.0, 0.0])), r.push(np.ones(3), np.array([1.0, 0.0]))
(False, True)
>>> before = r.scores(np.ones(3))
>>> r.grow_inputs(5); r.grow_outputs(3)
>>> bool(np.allclose(r.scores(np.array([1.0, 1, 1, 0, 0]))[:2], before)), r.n_updates
(True, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streammoe.routing.losses import multi_hot_bce
from streammoe.routing.routers import MLPRouter

__all__ = ["NUMPY_BACKWARD_MAX_ROWS", "OnlineRouter"]

#: ``backward="auto"`` computes gradients in NumPy for buffers up to this many rows.
NUMPY_BACKWARD_MAX_ROWS = 64


def _numpy_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: _numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numpy_tree(v) for v in obj]
    return obj


def _torch_tree(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _torch_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_torch_tree(v) for v in obj]
    return obj


def _adam(params: Any, lr: float, fused: bool) -> torch.optim.Adam:
    """Adam, fused (one kernel for every parameter: 1.2-1.6x cheaper per row for a small router
    on a CPU, ``scripts/profile_driftmoe.py --router-only``) when asked and this torch build
    supports it, else the plain implementation (the same update)."""
    params = list(params)
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)


class OnlineRouter:
    """An :class:`~streammoe.routing.MLPRouter` with Adam, a row buffer and a NumPy inference path.

    Parameters
    ----------
    in_dim, n_out
        Input size and number of logits (both can grow later).
    hidden, dropout, activation, init
        The MLP (see :class:`~streammoe.routing.MLPRouter`); the NumPy path supports ``relu``.
    lr
        Adam's learning rate.
    batch_rows
        Rows per Adam step (the buffer's size).
    fused_adam
        Use torch's fused Adam where available (``False``: the for-loop one; same update).
    backward
        How a step's gradient is computed: ``"numpy"``, a NumPy forward/backward pass (the same
        dropout masks and loss; equal to autograd's up to float32 rounding), or ``"autograd"``,
        torch's. ``"auto"`` (default) takes NumPy for buffers of at most
        ``NUMPY_BACKWARD_MAX_ROWS`` rows, where autograd's per-operation overhead dominates (task
        mode's 4 rows: 1.7x cheaper per row), and autograd above it (data mode's 256 rows: about
        the same cost, and NumPy's BLAS may use threads that contend on a loaded machine).
    seed
        Seed of the router's generator (initialisation and dropout).
    """

    def __init__(self, in_dim: int, n_out: int, hidden: Sequence[int] = (256, 128),
                 dropout: float = 0.0, lr: float = 1e-3, batch_rows: int = 1,
                 activation: str = "relu", init: str = "xavier_uniform",
                 fused_adam: bool = True, backward: str = "auto",
                 seed: int | None = None) -> None:
        if activation != "relu":
            raise ValueError(f"OnlineRouter's NumPy forward implements relu only, got {activation!r}")
        if not lr > 0 or batch_rows < 1:
            raise ValueError(f"need lr > 0 and batch_rows >= 1, got {lr}, {batch_rows}")
        if backward not in ("auto", "numpy", "autograd"):
            raise ValueError(f"backward must be 'auto', 'numpy' or 'autograd', got {backward!r}")
        self.hidden, self.dropout, self.lr = tuple(hidden), dropout, lr
        self.batch_rows = batch_rows
        self.fused_adam = fused_adam
        self.backward = backward
        self._net = MLPRouter(in_dim, n_out, hidden=self.hidden, dropout=dropout,
                              activation=activation, init=init, seed=seed)
        self._net.eval()
        self._adam = _adam(self._net.parameters(), lr, fused_adam)
        self._buf_x = np.zeros((batch_rows, in_dim))
        self._buf_y = np.zeros((batch_rows, n_out))
        self._buf_n = 0
        self.n_updates = 0
        self._cache: list[tuple[np.ndarray, np.ndarray]] = []
        self._refresh()

    @property
    def numpy_backward(self) -> bool:
        """Whether steps compute their gradient in NumPy (see ``backward``)."""
        if self.backward == "auto":
            return self.batch_rows <= NUMPY_BACKWARD_MAX_ROWS
        return self.backward == "numpy"

    @property
    def in_dim(self) -> int:
        return self._net.in_dim

    @property
    def n_out(self) -> int:
        return self._net.n_experts

    @property
    def buffered(self) -> int:
        """Rows waiting for the next step."""
        return self._buf_n

    # ----------------------------------------------------------------- inference
    def scores(self, v: np.ndarray) -> np.ndarray:
        """Eval-mode logits ``(n_out,)`` of one input row ``(in_dim,)`` (float64 NumPy)."""
        h = v
        for w, b in self._cache[:-1]:
            h = np.maximum(h @ w + b, 0.0)
        w, b = self._cache[-1]
        return h @ w + b

    @staticmethod
    def top_k(scores: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` largest ``scores``, best first (ties: the lower index first): the
        NumPy twin of :func:`~streammoe.routing.top_k_indices` for one row."""
        k = min(k, len(scores))
        if k == 1:
            return np.array([int(np.argmax(scores))])
        idx = np.argpartition(-scores, k - 1)[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The same logits through the torch module (eval mode), for checks and batches."""
        with torch.no_grad():
            return self._net(x)

    def _refresh(self) -> None:
        # views of the parameters' own storage (Adam updates them in place), for the backward pass
        self._params = [(lay.weight.detach().numpy(), lay.bias.detach().numpy())
                        for lay in self._net.layers]
        self._cache = [(w.T.astype(np.float64), b.astype(np.float64)) for w, b in self._params]

    def weights_finite(self) -> bool:
        """Whether every weight is finite (a diverged router is a bug: checked by tests)."""
        return all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in self._cache)

    # ----------------------------------------------------------------- training
    def push(self, v: np.ndarray, target: np.ndarray) -> bool:
        """Buffer one row and its multi-hot target; a full buffer takes one Adam step (returns
        ``True`` then)."""
        self._buf_x[self._buf_n] = v
        self._buf_y[self._buf_n] = target
        self._buf_n += 1
        if self._buf_n < self.batch_rows:
            return False
        self.step()
        return True

    def step(self) -> None:
        """One Adam step on the mean BCE of the buffered rows, then the buffer is emptied."""
        n = self._buf_n
        if n == 0:
            return
        if self.numpy_backward:  # sets every parameter's .grad: no zero_grad needed
            self._numpy_gradients(self._buf_x[:n], self._buf_y[:n])
        else:
            self._adam.zero_grad(set_to_none=True)
            xb = torch.as_tensor(self._buf_x[:n], dtype=torch.float32)
            yb = torch.as_tensor(self._buf_y[:n], dtype=torch.float32)
            self._net.train()
            multi_hot_bce(self._net(xb), yb).backward()
        self._adam.step()
        self._net.eval()
        self._buf_n = 0
        self.n_updates += 1
        self._refresh()

    def _numpy_gradients(self, x: np.ndarray, y: np.ndarray) -> None:
        """Set every parameter's ``.grad`` to the gradient of the mean BCE-with-logits of the
        training-mode forward (ReLU, inverted dropout with the module's masks) on rows ``x``,
        targets ``y``: the backward pass written out in float32 NumPy."""
        layers = self._net.layers
        params = self._params
        scale = np.float32(1.0 / (1.0 - self.dropout))
        # kept & active, times the inverted-dropout scale: the factor on each hidden activation
        masks = [k.numpy() * scale for k in self._net.dropout_keep_masks(len(x))]
        h = x.astype(np.float32)
        inputs, factors = [h], []
        for (w, b), mask in zip(params[:-1], masks):
            z = h @ w.T + b
            factor = (z > 0) * mask
            h = z * factor
            inputs.append(h)
            factors.append(factor)
        w, b = params[-1]
        logits = h @ w.T + b
        # d mean(BCE-with-logits) / d logits = (sigmoid(logits) - y) / (rows x outputs)
        sigmoid = np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * logits))
        g = (sigmoid - y.astype(np.float32)) / np.float32(logits.size)
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            layer.weight.grad = torch.from_numpy(np.ascontiguousarray(g.T @ inputs[i]))
            layer.bias.grad = torch.from_numpy(g.sum(axis=0))
            if i:
                g = (g @ params[i][0]) * factors[i - 1]

    # ----------------------------------------------------------------- growing
    def _swap(self, old: torch.nn.Parameter, new: torch.nn.Parameter,
              pad: list[tuple[int, int]]) -> None:
        """Replace ``old`` by ``new`` in Adam, zero-padding its moments like the weights."""
        group = self._adam.param_groups[0]
        group["params"] = [new if p is old else p for p in group["params"]]
        state = self._adam.state.pop(old, None)
        if state:
            flat = [n for dim_pad in reversed(pad) for n in dim_pad]
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.nn.functional.pad(state[key], flat)
            self._adam.state[new] = state

    def grow_inputs(self, in_dim: int) -> None:
        """Widen the first layer to ``in_dim`` inputs with zero weights (scores unchanged)."""
        first = self._net.layers[0]
        extra = in_dim - first.in_features
        if extra < 0:
            raise ValueError(f"a router cannot shrink: {first.in_features} inputs -> {in_dim}")
        if extra == 0:
            return
        new = torch.nn.Linear(in_dim, first.out_features)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : first.in_features] = first.weight
            new.bias.copy_(first.bias)
        self._swap(first.weight, new.weight, [(0, 0), (0, extra)])
        self._swap(first.bias, new.bias, [(0, 0)])
        self._net.layers[0] = new
        self._net.in_dim = in_dim
        self._buf_x = np.pad(self._buf_x, [(0, 0), (0, extra)])
        self._refresh()

    def grow_outputs(self, n_out: int) -> None:
        """Add logits up to ``n_out`` with zero weights and biases (new experts start undecided)."""
        last = self._net.layers[-1]
        extra = n_out - last.out_features
        if extra < 0:
            raise ValueError(f"a router cannot shrink: {last.out_features} outputs -> {n_out}")
        if extra == 0:
            return
        new = torch.nn.Linear(last.in_features, n_out)
        with torch.no_grad():
            new.weight.zero_()
            new.bias.zero_()
            new.weight[: last.out_features] = last.weight
            new.bias[: last.out_features] = last.bias
        self._swap(last.weight, new.weight, [(0, extra), (0, 0)])
        self._swap(last.bias, new.bias, [(0, extra)])
        self._net.layers[-1] = new
        self._net.n_experts = n_out
        self._buf_y = np.pad(self._buf_y, [(0, 0), (0, extra)])
        self._refresh()

    def optimizer_state(self) -> dict[str, Any]:
        """Adam's state dict (a copy, as NumPy arrays): for inspection and tests."""
        return _numpy_tree(self._adam.state_dict())

    # ----------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        net = state.pop("_net")
        state.pop("_adam")
        state.pop("_cache")
        state.pop("_params")
        state["_arch"] = {"in_dim": net.in_dim, "n_out": net.n_experts,
                          "activation": "relu"}
        state["_weights"] = _numpy_tree(net.state_dict())
        state["_generator"] = net.generator.get_state().numpy().copy()
        state["_adam_state"] = _numpy_tree(self._adam.state_dict())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        arch, weights = state.pop("_arch"), state.pop("_weights")
        generator, adam_state = state.pop("_generator"), state.pop("_adam_state")
        state.setdefault("backward", "autograd")  # pickles from before the NumPy backward pass
        self.__dict__.update(state)
        self._net = MLPRouter(arch["in_dim"], arch["n_out"], hidden=self.hidden,
                              dropout=self.dropout, activation=arch["activation"], seed=0)
        self._net.load_state_dict(_torch_tree(weights))
        self._net.generator.set_state(torch.from_numpy(generator.copy()))
        self._net.eval()
        self._adam = _adam(self._net.parameters(), self.lr, self.fused_adam)
        self._adam.load_state_dict(_torch_tree(adam_state))
        self._refresh()
