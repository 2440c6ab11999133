"""What every run writes: figures over time (``metrics.csv``, and with ``tensorboard=True`` the same
numbers as TensorBoard scalars in ``tensorboard/``), final figures (``metrics.json``), plots, and
a readable table on stdout; plus the progress bar used by long loops.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> rec = RunRecorder(d)
>>> rec.log(step=1, accuracy=0.5)
>>> rec.finish({"accuracy": 0.5}, echo=False)["accuracy"]
0.5
>>> sorted(p.name for p in d.iterdir())
['metrics.csv', 'metrics.json']
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

__all__ = ["STEP_KEYS", "TENSORBOARD_DIR", "RunRecorder", "format_table", "progress", "pyplot", "save_figure", "to_jsonable"]

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "",
             **kwargs: Any) -> tqdm:
    """A tqdm bar that is silent when stderr is not a terminal (CI, log files, joblib workers)."""
    return tqdm(iterable, total=total, desc=desc, disable=None, dynamic_ncols=True, leave=False,
                **kwargs)


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tensors to plain Python; NaN/inf become None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(rows: Sequence[Mapping[str, Any]], title: str = "", floatfmt: str = ".4g") -> str:
    """Plain-text table from a list of dicts (columns in first-seen order)."""
    if not rows:
        return title
    cols: list[str] = []
    for row in rows:
        cols.extend(c for c in row if c not in cols)

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) for r in rows) for c in cols]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cols, widths, numeric))
    sep = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out += [line, sep, *("  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(b, widths, numeric))
                         for b in body)]
    return "\n".join(out)


#: Keys that give a ``log`` row its TensorBoard step, first present one wins.
STEP_KEYS = ("step", "global_step", "env_steps", "timesteps", "instance", "episode", "epoch")
TENSORBOARD_DIR = "tensorboard"


class RunRecorder:
    """Writes ``metrics.csv`` (one row per ``log`` call) and ``metrics.json`` (``finish``).

    Columns are fixed by the first ``log`` call; a later call with a new key is an error rather
    than a silently ragged CSV. Rows go to disk as they come (nothing kept in memory), so a
    crashed run keeps its curve.

    With ``tensorboard=True`` every finite numeric value of a row is also written as a TensorBoard
    scalar into ``<run_dir>/tensorboard/`` (:attr:`tensorboard_dir`; SB3 models write theirs
    below it, see :meth:`sb3_tensorboard_log`). The row's string values name the curve
    (``phase="skill_walk"`` and ``episode_return=3.0`` give the tag ``skill_walk/episode_return``);
    its step is the first of :data:`STEP_KEYS` that holds a number, else the number of earlier
    rows with the same strings.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.json_path = self.run_dir / "metrics.json"
        self._columns: list[str] | None = None
        self.tensorboard_dir: Path | None = self.run_dir / TENSORBOARD_DIR if tensorboard else None
        self._writer: Any = None
        self._rows_per_prefix: dict[str, int] = {}

    def sb3_tensorboard_log(self, name: str = "") -> str | None:
        """``tensorboard_log`` for an SB3 model: this run's TensorBoard folder (``name``: a
        subfolder, e.g. the training phase, so SB3's ``PPO_1/`` says whose it is), or None when
        TensorBoard is off."""
        if self.tensorboard_dir is None:
            return None
        return str(self.tensorboard_dir / name if name else self.tensorboard_dir)

    def log(self, **values: Any) -> None:
        """Append one row to ``metrics.csv`` (and its numbers to TensorBoard when on)."""
        self.log_row(values)

    def log_row(self, values: Mapping[str, Any], tensorboard: bool = True) -> None:
        """:meth:`log` with the row as a mapping; ``tensorboard=False`` writes the CSV row only
        (e.g. rows of an earlier run copied into a resumed one, whose events exist already)."""
        row = {k: to_jsonable(v) for k, v in values.items()}
        if self._columns is None:
            self._columns = list(row)
            with self.csv_path.open("w", newline="") as f:
                csv.DictWriter(f, self._columns).writeheader()
        unknown = set(row) - set(self._columns)
        if unknown:
            raise ValueError(f"metrics.csv columns are {self._columns}; new keys {sorted(unknown)}")
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, self._columns, restval="").writerow(row)
        if tensorboard and self.tensorboard_dir is not None:
            self._write_scalars(row)

    def _write_scalars(self, row: Mapping[str, Any]) -> None:
        def number(v: Any) -> float | None:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            return float(v) if ok else None

        prefix = "/".join(str(v) for v in row.values() if isinstance(v, str) and v)
        step_key = next((k for k in STEP_KEYS if number(row.get(k)) is not None), None)
        if step_key is None:
            step = self._rows_per_prefix.get(prefix, 0)
            self._rows_per_prefix[prefix] = step + 1
        else:
            step = int(row[step_key])
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported only when switched on

            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), flush_secs=30)
        for key, value in row.items():
            x = number(value)
            if x is not None and key != step_key:
                self._writer.add_scalar(f"{prefix}/{key}" if prefix else key, x, global_step=step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (``finish`` does this; safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, metrics: Mapping[str, Any], echo: bool = True, title: str = "") -> dict[str, Any]:
        """Write ``metrics.json`` (and close the TensorBoard writer); print scalar figures as a
        table when ``echo``."""
        self.close()
        clean = to_jsonable(dict(metrics))
        self.json_path.write_text(json.dumps(clean, indent=2, sort_keys=False) + "\n")
        if echo:
            scalars = [{"metric": k, "value": v} for k, v in clean.items()
                       if isinstance(v, (int, float)) or v is None]
            print(format_table(scalars, title=title or f"results ({self.run_dir})"), file=sys.stdout)
        return clean


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (plots go to files; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG and close it (frees memory in long sweeps)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
