"""What every run writes: figures over time (``metrics.csv``), final figures (``metrics.json``),
plots, and a readable table on stdout; plus the progress bar used by long loops.

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

__all__ = ["RunRecorder", "format_table", "progress", "pyplot", "save_figure", "to_jsonable"]

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


class RunRecorder:
    """Writes ``metrics.csv`` (one row per ``log`` call) and ``metrics.json`` (``finish``).

    Columns are fixed by the first ``log`` call; a later call with a new key is an error rather
    than a silently ragged CSV. Rows go to disk as they come (nothing kept in memory), so a
    crashed run keeps its curve.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.json_path = self.run_dir / "metrics.json"
        self._columns: list[str] | None = None

    def log(self, **values: Any) -> None:
        """Append one row to ``metrics.csv``."""
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

    def finish(self, metrics: Mapping[str, Any], echo: bool = True, title: str = "") -> dict[str, Any]:
        """Write ``metrics.json``; print scalar figures as a table when ``echo``."""
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
