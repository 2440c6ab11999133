"""Checkpoint files that cannot run code: one format for every system.

A checkpoint is one `safetensors <https://github.com/huggingface/safetensors>`_ file. Its tensor
table holds every tensor and numpy array of the saved state; its header (JSON) holds:

* the format (``kind``, e.g. ``"streammoe.t2mir.train"``) and its ``version``;
* the config sections a run must match to continue from the file, and their SHA-256
  fingerprints (:func:`fingerprint`: canonical JSON, sorted keys);
* the structure of the saved state: nested dicts, lists and tuples of tensors, arrays, numbers and
  strings (optimizer ``state_dict``\\ s, RNG states, loop counters), with each tensor and array
  replaced by the name of its entry in the tensor table;
* a SHA-256 digest of the header and every tensor's bytes.

Loading never unpickles anything, so a crafted file cannot run code: it can only fail to load.
:func:`load` checks, in this order and before the caller's objects change, that the file exists,
is a safetensors file written by this module (a pickle or ``torch.save`` file is named as such and
refused), is of the expected kind and version, is intact (digest), and that its config sections
equal the running config's (the error names the section, the differing keys and both values).
Every failure is a :class:`CheckpointError` (a ``ValueError``) naming the file; a missing file is
a ``FileNotFoundError``. Writes are atomic: a temporary file in the same folder, then a rename, so a
run killed while saving keeps the previous checkpoint.

>>> import tempfile
>>> import numpy as np, torch
>>> path = Path(tempfile.mkdtemp()) / "demo.safetensors"
>>> state = {"weights": torch.arange(3.0), "obs": np.zeros(2, np.float32), "step": 7,
...          "python_rng": (3, (1, 2), None), "optimizer": {0: {"lr": 0.1}}}
>>> _ = save(path, state, kind="demo", version=1, config={"train": {"lr": 0.1, "steps": 10}})
>>> ck = load(path, kind="demo", version=1, match={"train": {"lr": 0.1, "steps": 10}})
>>> ck.state["weights"], ck.state["obs"], ck.state["step"], ck.state["python_rng"]
(tensor([0., 1., 2.]), array([0., 0.], dtype=float32), 7, (3, (1, 2), None))
>>> ck.state["optimizer"]
{0: {'lr': 0.1}}
>>> try:
...     load(path, kind="demo", version=1, match={"train": {"lr": 0.1, "steps": 20}})
... except CheckpointError as err:
...     print(str(err).split(": ", 1)[1])
train differs in ['steps']: steps=10 in the checkpoint, steps=20 in this run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

__all__ = ["CONTAINER", "CONTAINER_VERSION", "Checkpoint", "CheckpointError", "fingerprint", "load",
           "refuse_legacy", "rng_state", "save", "set_rng_state"]

CONTAINER = "streammoe.checkpoint"  # the header key (and format name) of every streammoe checkpoint
CONTAINER_VERSION = 1  # version of this container layout (header fields, state encoding)
_PICKLE_MAGIC = (b"\x80",)  # pickle protocol >= 2 (torch's legacy format is a pickle too)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip of pickles
_ARRAY_KINDS = "biufc"  # numpy dtype kinds an array may have: bool, int, uint, float, complex


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, foreign, of another version, or written by a
    run with another config. The message names the file, the problem and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load` returns: the saved ``state`` (nested, tensors on the CPU) and the
    ``config`` sections the file was written with."""

    path: Path
    kind: str
    version: int
    config: dict[str, Any]
    state: Any


# ---------------------------------------------------------------------------- config fingerprints
def _plain(value: Any, where: str = "config") -> Any:
    """``value`` as plain JSON data (tuples become lists, numpy scalars numbers)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: a checkpoint's config holds plain data only (numbers, strings, lists, "
                    f"dicts), not {type(value).__name__}")


def _canonical(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def fingerprint(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value`` (sorted keys; tuples as lists).

    >>> fingerprint({"b": 1, "a": (1, 2)}) == fingerprint({"a": [1, 2], "b": 1})
    True
    """
    return hashlib.sha256(_canonical(value).encode()).hexdigest()


def _differences(saved: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every leaf where the two configs differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}{key}"
            if key not in saved or key not in current:
                out.append((name, saved.get(key, "<absent>"), current.get(key, "<absent>")))
            else:
                out.extend(_differences(saved[key], current[key], f"{name}."))
        return out
    return [] if _canonical(saved) == _canonical(current) else [(prefix.rstrip("."), saved, current)]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- state <-> tensors + JSON
class _Flattener:
    """Turns nested state into a tensor table and a JSON skeleton that refers to its entries."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _name(self, where: str) -> str:
        name, n = where or "value", 1
        while name in self.tensors:
            name, n = f"{where}#{n}", n + 1
        return name

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, np.generic):
            return value
        if isinstance(value, torch.Tensor):
            name = self._name(where)
            self.tensors[name] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"{where}: cannot store a numpy array of dtype {value.dtype} in a "
                                "checkpoint (numbers and booleans only)")
            name = self._name(where)
            raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
            self.tensors[name] = torch.from_numpy(raw.copy())
            return {"__ndarray__": name, "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, np.generic):
            if value.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"{where}: cannot store a numpy {value.dtype} scalar in a checkpoint")
            return {"__npscalar__": value.dtype.str, "hex": value.tobytes().hex()}
        if isinstance(value, bytes):
            return {"__bytes__": value.hex()}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}/{i}") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: self.encode(v, f"{where}/{k}") for k, v in value.items()}
            return {"__items__": [[self.encode(k, f"{where}/key"), self.encode(v, f"{where}/{k}")]
                                  for k, v in value.items()]}
        raise TypeError(f"{where}: cannot store {type(value).__name__} in a checkpoint (tensors, numpy "
                        "arrays, numbers, strings, lists, tuples and dicts only)")


def _decode(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        dtype = np.dtype(node["dtype"])
        if dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"array dtype {dtype} is not allowed")
        raw = tensors[node["__ndarray__"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape(node["shape"]).copy()
    if "__npscalar__" in node:
        dtype = np.dtype(node["__npscalar__"])
        if dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"scalar dtype {dtype} is not allowed")
        return np.frombuffer(bytes.fromhex(node["hex"]), dtype=dtype)[0]
    if "__bytes__" in node:
        return bytes.fromhex(node["__bytes__"])
    if "__tuple__" in node:
        return tuple(_decode(v, tensors) for v in node["__tuple__"])
    if "__items__" in node:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node["__items__"]}
    return {k: _decode(v, tensors) for k, v in node.items()}


def _digest(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- save / load
def save(path: str | Path, state: Any, *, kind: str, version: int,
         config: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` to ``path`` atomically as a checkpoint of format ``kind``/``version``.

    ``state``: nested dicts / lists / tuples of tensors, numpy arrays (numeric), numpy scalars,
    numbers, strings, bytes and ``None`` (dict keys may be any of these too). ``config``: named
    sections of plain data that a run must match to use the file (see :func:`load`'s ``match``).
    """
    path = Path(path)
    flat = _Flattener()
    skeleton = flat.encode(state, "state")
    sections = {str(k): _plain(v, f"config.{k}") for k, v in (config or {}).items()}
    header = {"container": CONTAINER_VERSION, "kind": str(kind), "version": int(version),
              "config": sections, "fingerprints": {k: fingerprint(v) for k, v in sections.items()},
              "state": skeleton}
    header["digest"] = _digest(header, flat.tensors)
    data = safetensors_save(flat.tensors, metadata={CONTAINER: json.dumps(header)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _looks_like_pickle(path: Path) -> bool:
    """A pickle or torch.save file, told apart from a safetensors file by structure first: a
    safetensors file starts with its JSON header's length (8 bytes, little-endian) and then ``{``,
    and that length may itself begin with the byte 0x80 that opens a pickle."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= size:
        return False
    return head.startswith(_PICKLE_MAGIC) or head.startswith(_ZIP_MAGIC)


def load(path: str | Path, *, kind: str, version: int, label: str | None = None,
         match: Mapping[str, Any] | None = None, hints: Mapping[str, str] | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save`, checking it before anything is returned.

    ``label`` names the file in errors (e.g. ``"T2MIR checkpoint"``). ``match``: config sections
    this run has; each must equal the section the file was written with (compared by fingerprint),
    else a :class:`CheckpointError` names the section, keys and values, followed by
    ``hints[section]`` (what to do) when given.
    """
    path = Path(path)
    label = label or f"{kind} checkpoint"
    if not path.is_file():
        raise FileNotFoundError(f"no {label} at {path}")
    if _looks_like_pickle(path):
        raise CheckpointError(
            f"{path} is not a {label}: it is a pickle / torch.save file (older streammoe versions wrote "
            "those), and streammoe never unpickles a file, since unpickling can run code. Re-create it "
            "with this version of streammoe.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if CONTAINER not in meta:
                raise CheckpointError(f"{path} is not a {label}: a safetensors file without streammoe's "
                                      f"{CONTAINER!r} header (weights written by another program?)")
            header = json.loads(meta[CONTAINER])
            if not isinstance(header, dict) or header.get("container") != CONTAINER_VERSION:
                raise CheckpointError(f"{path} is not a {label}: unknown container version "
                                      f"{header.get('container') if isinstance(header, dict) else None!r}")
            if header.get("kind") != kind:
                raise CheckpointError(f"{path} is not a {label}: it holds a {header.get('kind')!r} "
                                      f"checkpoint, not {kind!r}")
            if header.get("version") != version:
                raise CheckpointError(
                    f"{path} is a {label} of format version {header.get('version')!r}; this streammoe "
                    f"reads version {version}. Re-create it with this version of streammoe.")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as err:  # safetensors / json raise several types for truncated or foreign files
        raise CheckpointError(f"cannot read {label} {path}: the file is truncated or corrupt, or not a "
                              f"readable {label} at all ({type(err).__name__}: {err})") from err
    digest = header.pop("digest", None)
    if digest != _digest(header, tensors):
        raise CheckpointError(f"cannot read {label} {path}: the file is corrupt (its content does not "
                              "match the digest in its header)")
    saved = header.get("config") or {}
    for name, current in (match or {}).items():
        if name not in saved:
            raise CheckpointError(f"{path} does not fit this run: it holds no {name} to compare with "
                                  f"this run's. {(hints or {}).get(name, '')}".rstrip())
        if fingerprint(saved[name]) != fingerprint(current):
            diffs = _differences(saved[name], _plain(current))
            keys = [k for k, _, _ in diffs]
            shown = "; ".join(f"{k}={_short(a)} in the checkpoint, {k}={_short(b)} in this run"
                              if k else f"{_short(a)} in the checkpoint, {_short(b)} in this run"
                              for k, a, b in diffs[:4])
            more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
            what = f"{name} differs in {keys}: {shown}{more}." if keys != [""] else f"{name} differs: {shown}."
            raise CheckpointError(f"{path} does not fit this run: {what} "
                                  f"{(hints or {}).get(name, '')}".rstrip())
    try:
        state = _decode(header["state"], tensors)
    except Exception as err:  # a consistent digest makes this unlikely: a file written by a bug
        raise CheckpointError(f"cannot read {label} {path}: its state is malformed "
                              f"({type(err).__name__}: {err})") from err
    return Checkpoint(path, kind, version, dict(saved), state)


def refuse_legacy(path: str | Path, legacy: str | Path, label: str) -> None:
    """Raise if ``path`` (this version's file) is absent but ``legacy`` (an older streammoe's pickle
    file in its place) exists, instead of silently starting over next to it. Nothing is read."""
    path, legacy = Path(path), Path(legacy)
    if not path.exists() and legacy.is_file():
        raise CheckpointError(
            f"{legacy} is a {label} of an older streammoe (a pickle / torch.save file), which streammoe "
            f"never loads since unpickling can run code, and {path.name} (this version's file) is "
            "missing: start in a fresh folder, or delete the old file to start that part over.")


# ---------------------------------------------------------------------------- global RNGs
def rng_state() -> dict[str, Any]:
    """The global RNGs (python, numpy's legacy global, torch CPU and CUDA) as checkpointable data:
    python's state is a tuple of ints, numpy's a dict with a uint32 array, torch's uint8 tensors."""
    state: dict[str, Any] = {"python": random.getstate(),
                             "numpy": np.random.get_state(legacy=False),  # noqa: NPY002
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
