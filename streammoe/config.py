"""Typed configs: the root schema every experiment shares, schema registration and validation.

How a config gets its types
---------------------------
Every system declares its schema as dataclasses in its own ``config.py``
(``streammoe/stream/config.py``, ``streammoe/control/<system>/config.py``,
``streammoe/demo_config.py``): one subclass of :class:`RootConfig` per kind of experiment, whose
extra fields are the system's nodes (``driftmoe``, ``macrohft`` and ``data``, ...).
:func:`register_schemas` (called by :mod:`streammoe.cli`, the one module that knows the list of
systems) stores them in Hydra's ConfigStore under ``schema/<name>``, and each experiment file
names its schema first in its defaults list::

    # @package _global_
    defaults:
      - /schema/driftmoe@_global_
      - /stream: SEAa
      ...

``conf/config.yaml`` starts with ``/schema/root@_global_``. Hydra then merges the YAML onto the
dataclasses, so a value of the wrong type fails *at composition*, naming its key
(``seed=abc``: ``Error merging override seed=abc ... full_key: seed``), and a key the schema lacks
fails as before (``Could not override 'demo.stepz'``).

The YAML files stay the place of the defaults: schema fields default to ``MISSING`` (``???``), so a
key the YAML forgot is an error, not a silent dataclass default; the one exception is
``tensorboard`` (``True``, as in ``conf/config.yaml``). When an experiment schema is registered its
root fields are stored as ``MISSING`` too, so merging it (after ``conf/config.yaml``'s own values)
never resets ``seed``, ``device`` or ``tensorboard``.

What composition cannot check
-----------------------------
Ranges and relations (``n_envs >= 1``, ``top_k <= n_experts``, a name out of a set), keys added
on purpose with ``+key=value`` (Hydra adds them even to a typed node) and free-form nodes that are
a library's keyword arguments (``driftmoe.model.params``, ``t2mir.collector.sb3.algo_kwargs``)
are checked by :func:`validate`: it converts the config with ``OmegaConf.to_object`` (which also
reports ``???`` values) and calls ``check(at)`` on every dataclass in it, ``at`` being the node's
full key prefix, so each error names the full key (``skillblend.n_envs must be >= 1, got 0``).
:func:`streammoe.cli.run_experiment` validates before it writes anything, and every entry
validates again as its first line (entries are also called directly, by tests and benchmarks).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from streammoe.devices import resolve_device

__all__ = [
    "config_dir",
    "SCHEMA_GROUP",
    "ConfigError",
    "RootConfig",
    "at_least",
    "cpu_only_device",
    "greater_than",
    "in_range",
    "integer",
    "non_empty",
    "number",
    "one_of",
    "register_schemas",
    "validate",
]

SCHEMA_GROUP = "schema"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

R = TypeVar("R", bound="RootConfig")


class ConfigError(ValueError):
    """A config value out of its range, of the wrong kind, or a key no schema has; the message
    names the full key."""


# ------------------------------------------------------------------------------------- checks
def at_least(key: str, value: Any, low: float) -> None:
    """``value >= low`` (``None`` is an error: make the field ``Optional`` and skip it instead)."""
    if value is None or value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value!r}")


def greater_than(key: str, value: Any, low: float) -> None:
    if value is None or not value > low:
        raise ConfigError(f"{key} must be > {low}, got {value!r}")


def in_range(key: str, value: Any, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> None:
    """``low <= value <= high``, either end open on request."""
    ok = value is not None and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be in {interval}, got {value!r}")


def one_of(key: str, value: Any, options: Iterable[Any]) -> None:
    options = list(options)
    if value not in options:
        raise ConfigError(f"{key} must be one of {options}, got {value!r}")


def non_empty(key: str, value: Any) -> None:
    if value is None or len(value) == 0:
        raise ConfigError(f"{key} must not be empty, got {value!r}")


def integer(key: str, value: Any, low: int | None = None, *, optional: bool = False) -> None:
    """For free-form nodes (``dict[str, Any]``), where composition checks no type: an ``int``
    (not a bool, not ``1.5``), at least ``low``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer{f' >= {low}' if low is not None else ''}, "
                          f"got {value!r}")
    if low is not None:
        at_least(key, value, low)


def number(key: str, value: Any) -> None:
    """For free-form nodes: an int or a float (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")


def cpu_only_device(name: str, system: str, why: str) -> torch.device:
    """The device of a system that runs on the CPU only: ``device`` is validated as everywhere
    (``cuda`` without a GPU is an error), ``auto`` and ``cpu`` give the CPU, and an explicit
    ``cuda`` is refused rather than silently ignored."""
    resolve_device(name)
    if name.startswith("cuda"):
        raise ConfigError(f"device={name!r}: {system} runs on the CPU only ({why}); "
                          "use device=auto or device=cpu")
    return torch.device("cpu")


# -------------------------------------------------------------------------------- root schema
@dataclass
class RootConfig:
    """``conf/config.yaml``: the keys every experiment has. Experiment schemas subclass it."""

    seed: int = MISSING              # seeds python, numpy, torch and the environments
    device: str = MISSING            # auto | cpu | cuda[:N]
    experiment_name: str = MISSING   # set by the experiment file
    entry: str = MISSING             # module.function(cfg, run_dir) -> metrics
    objective: str | None = MISSING  # a metrics key a sweeper may optimise
    tensorboard: bool = True         # TensorBoard events in <run dir>/tensorboard

    def check(self, at: str) -> None:
        at_least(f"{at}seed", self.seed, 0)
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"{at}device must be auto, cpu or cuda[:N], got {self.device!r}")
        resolve_device(self.device)  # cuda without a GPU: a clear error before any work
        if "." not in self.entry:
            raise ConfigError(f"{at}entry must be a module.function path, got {self.entry!r}")


# ------------------------------------------------------------------------------- registration
def register_schemas(schemas: Mapping[str, type[RootConfig]]) -> None:
    """Store :class:`RootConfig` as ``schema/root`` and each experiment schema as
    ``schema/<name>`` in Hydra's ConfigStore (root fields ``MISSING``, see the module doc)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group=SCHEMA_GROUP, name="root", node=RootConfig)
    root_keys = [f.name for f in fields(RootConfig)]
    for name, schema in schemas.items():
        if not (isinstance(schema, type) and issubclass(schema, RootConfig)):
            raise TypeError(f"schema {name!r} must be a RootConfig subclass, got {schema!r}")
        node = OmegaConf.structured(schema)
        for key in root_keys:
            node[key] = MISSING
        store.store(group=SCHEMA_GROUP, name=name, node=node)


# --------------------------------------------------------------------------------- validation
def validate(cfg: DictConfig, schema: type[R] | None = None) -> R:
    """The config as its schema's dataclass, after every check; raises :class:`ConfigError`
    naming the key. ``schema``: the type an entry expects (a config composed without it, e.g.
    built by hand, is merged onto it first); ``None`` takes the config's own schema."""
    if schema is not None and OmegaConf.get_type(cfg) is not schema:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    _refuse_added_keys(cfg, "")
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key
        raise ConfigError(f"{key} has no value (??? in the config): set it, e.g. {key}=...") from err
    if not isinstance(obj, RootConfig):
        raise ConfigError("the config has no schema: an experiment file names its schema first "
                          "in its defaults list (- /schema/<name>@_global_, see streammoe/config.py)")
    _check(obj, "")
    return obj  # type: ignore[return-value]


def _refuse_added_keys(node: Any, at: str) -> None:
    """Keys in a typed node that its dataclass lacks (``+key=value`` adds them) are an error."""
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing():
            return
        schema = OmegaConf.get_type(node)
        if is_dataclass(schema):
            known = [f.name for f in fields(schema)]
            for key in node.keys():
                if key not in known:
                    raise ConfigError(f"{at}{key} is not a key of {at.rstrip('.') or 'the root config'} "
                                      f"(schema {schema.__name__}: {', '.join(known)}); keys cannot be "
                                      "added with +key=value, add a field to the schema instead")
        for key in node.keys():
            if not OmegaConf.is_missing(node, key):
                _refuse_added_keys(node._get_node(key), f"{at}{key}.")
    elif isinstance(node, ListConfig) and not (node._is_none() or node._is_missing()):
        for i in range(len(node)):
            _refuse_added_keys(node._get_node(i), f"{at.rstrip('.')}[{i}].")


def _check(obj: Any, at: str) -> None:
    """Call ``check(at)`` on every dataclass below ``obj``, parents first."""
    if is_dataclass(obj) and not isinstance(obj, type):
        check = getattr(obj, "check", None)
        if check is not None:
            check(at)
        for f in fields(obj):
            _check(getattr(obj, f.name), f"{at}{f.name}.")
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            _check(value, f"{at}{key}.")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check(value, f"{at.rstrip('.')}[{i}].")


def config_dir() -> Path:
    """Where the Hydra configs are: ``$STREAMMOE_CONF`` if set, else the ``conf/`` packaged in the
    wheel (``streammoe/conf``), else the repository's ``conf/`` (source checkouts, editable
    installs). The repository's ``conf/`` is the source; the wheel carries a copy of it."""
    override = os.environ.get("STREAMMOE_CONF")
    if override:
        path = Path(override).expanduser().resolve()
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"STREAMMOE_CONF={override!r} has no config.yaml; point it at a "
                                    "copy of streammoe's conf/ folder or unset it")
        return path
    here = Path(__file__).resolve().parent  # streammoe/
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"streammoe's configs are missing (looked in {here / 'conf'} and "
                            f"{here.parent / 'conf'}); reinstall streammoe or set STREAMMOE_CONF")
