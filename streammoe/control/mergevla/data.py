"""MergeVLA demonstrations: scripted Meta-World experts with action noise, stored as HDF5 in
robomimic's layout, read back as per-suite training arrays with action chunks.

**Collection** (:func:`collect_demos`). For each task, ``episodes_per_task`` episodes on the
task's *training* variations (:func:`streammoe_envs.metaworld.split_variations`; a seeded shuffle,
cycled): at every step the env's scripted expert (``metaworld.policies``) proposes an action,
Gaussian noise of standard deviation ``action_noise`` is added and the result, clipped to
``[-1, 1]``, is executed. The expert's own success rate per task is measured on these episodes;
a task under ``min_success`` (95 %) is dropped, with a warning, and listed in the file. Only
successful episodes become demonstrations. ``extra_variations`` adds one episode on each of that
many extra placements (drawn by Meta-World's generator with other seeds; never evaluated).

**File format**: HDF5 in robomimic's layout, chosen because robomimic's readers (and LIBERO's
datasets, which use the same layout) open it without conversion, h5py reads it anywhere, and one
file holds every suite (filter keys select one)::

    data/                         attrs: total (samples), env_args (JSON: env_name, type=2 (gym),
                                  env_kwargs), mergevla (JSON: format, settings, per-task expert
                                  success, dropped tasks, suites, vocabulary, variation split)
    data/demo_<i>/obs/<key>       the env's observation dict per step, (T, ...): image uint8
                                  (T, H, W, 3) or state float32 (T, 17); proprio float32 (T, 4);
                                  instruction int64 (T, L); image demos also hold state (the
                                  object positions and goal: the base's pre-training targets,
                                  never an input of an image policy)
    data/demo_<i>/actions         float32 (T, 4): the executed (noisy, clipped) actions
    data/demo_<i>/expert_actions  float32 (T, 4): the expert's noise-free action in each state
    data/demo_<i>/rewards         float32 (T,);  dones uint8 (T,), 1 at the last step
    data/demo_<i>                 attrs: num_samples, task, suite, variation, instruction, success
    mask/<suite>, mask/<task>     robomimic filter keys: the names of their demos (bytes)
    / (root)                      attrs: sha256, the content fingerprint

The **fingerprint** is a SHA-256 over every group, attribute and dataset (names, dtypes, shapes,
decompressed bytes) in a fixed order; :func:`read_demos` recomputes it and refuses a file whose
content changed. A file that is not HDF5, or lacks parts, is refused with its path and the fix.

**Training arrays** (:func:`load_demos`): per suite, every step of every demo stacked: the
observation dict, the target chunk of the next ``chunk_size`` actions (padded at the episode end
by repeating the last action; ``action_valid`` marks the real entries) and the task index.

>>> import tempfile, pathlib
>>> demos = collect_demos(["drawer-close-v3", "button-press-v3"], episodes_per_task=1, vision=False)
>>> {task: s["success_rate"] for task, s in demos.stats.items()}
{'drawer-close-v3': 1.0, 'button-press-v3': 1.0}
>>> path = pathlib.Path(tempfile.mkdtemp()) / "demos.hdf5"
>>> fingerprint = write_demos(path, demos)
>>> data = load_demos(path, chunk_size=4)
>>> sorted(data), data["drawer"].actions.shape[1:], data["drawer"].obs["state"].shape[1:]
(['button', 'drawer'], (4, 4), (17,))
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import multiprocessing as mp
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from streammoe_envs.metaworld import (
    ALL_TASK_NAMES,
    ENV_ID,
    INSTRUCTION_LEN,
    N_EXTRA_VARIATIONS,
    N_VARIATIONS,
    TASK_GROUPS,
    TASK_NAMES,
    VOCAB,
    split_variations,
    task_spec,
)
from streammoe_envs.metaworld.env import ACTION_DIM, DEFAULT_CAMERA, MetaWorldTaskEnv, check_markers

from streammoe.runs import progress

__all__ = [
    "FORMAT",
    "DemoSet",
    "Episode",
    "SuiteData",
    "action_chunks",
    "collect_demos",
    "collect_episode",
    "ensure_demos",
    "load_demos",
    "read_demos",
    "suite_data",
    "write_demos",
]

FORMAT = "streammoe.mergevla.demos/1"
_GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE
_FINGERPRINT_ATTR = "sha256"


@dataclass
class Episode:
    """One episode: ``obs[key]`` is ``(T, ...)``, the observation before each of the ``T``
    actions; ``dones`` is 1 at the last step."""

    task: str
    suite: str
    variation: int
    instruction: str
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    expert_actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    success: bool

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class DemoSet:
    """Demonstrations with their provenance: ``stats[task]`` holds the scripted expert's
    ``attempts``, ``successes``, ``success_rate`` and ``mean_steps`` (of its successes);
    ``dropped[task]`` the success rate of a task left out for being under ``min_success``;
    ``settings`` the collection settings."""

    episodes: list[Episode]
    stats: dict[str, dict[str, Any]]
    dropped: dict[str, float]
    settings: dict[str, Any]
    fingerprint: str | None = None

    def summary(self) -> str:
        """One line per task: the expert's successes and rate, and whether the task was kept."""
        lines = []
        for task, s in self.stats.items():
            verdict = "DROPPED" if task in self.dropped else "kept"
            lines.append(f"{task:30s} {s['successes']:3d}/{s['attempts']:<3d} "
                         f"{100 * s['success_rate']:5.1f} %  {verdict}")
        return "\n".join(lines)


@dataclass
class SuiteData:
    """One suite's training arrays, one row per step of every demo (``N`` rows):
    ``obs[key]`` ``(N, ...)``; ``actions`` float32 ``(N, C, 4)``, the actions at steps
    ``t .. t+C-1`` of the episode (the last action repeated past its end); ``action_valid`` bool
    ``(N, C)``, False where repeated; ``task_index`` int64 ``(N,)`` into ``tasks``;
    ``episode_index`` (the demo number in the file) and ``step`` int64 ``(N,)``."""

    suite: str
    tasks: tuple[str, ...]
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    action_valid: np.ndarray
    task_index: np.ndarray
    episode_index: np.ndarray
    step: np.ndarray
    instructions: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


# ----- collection --------------------------------------------------------------------------------

def collect_episode(env: MetaWorldTaskEnv, rng: np.random.Generator, action_noise: float,
                    variation: int | None = None) -> Episode:
    """Run the env's scripted expert (plus Gaussian ``action_noise``) for one episode."""
    obs, info = env.reset(options=None if variation is None else {"variation": variation})
    # image demos also keep the object state: the base's pre-training targets, never a policy input
    privileged = "state" not in obs
    frames: dict[str, list[np.ndarray]] = {k: [] for k in [*obs, *(["state"] if privileged else [])]}
    actions, expert, rewards = [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        clean = env.expert_action()
        action = np.clip(clean + rng.normal(0.0, action_noise, ACTION_DIM), -1.0, 1.0)
        for k, v in obs.items():
            frames[k].append(v)
        if privileged:
            frames["state"].append(env.object_state())
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        expert.append(clean)
        rewards.append(reward)
    dones = np.zeros(len(actions), np.uint8)
    dones[-1] = 1
    return Episode(task=env.task, suite=info["suite"], variation=env.variation,
                   instruction=env.instruction, obs={k: np.stack(v) for k, v in frames.items()},
                   actions=np.asarray(actions, np.float32), expert_actions=np.asarray(expert, np.float32),
                   rewards=np.asarray(rewards, np.float32), dones=dones, success=bool(info["success"]))


def _check_settings(tasks: Sequence[str], episodes_per_task: int, action_noise: float,
                    min_success: float, variations: Sequence[int] | None, extra_variations: int) -> None:
    for task in tasks:
        task_spec(task)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks are listed twice: {list(tasks)}")
    if not tasks:
        raise ValueError("no tasks to collect; give at least one of " + str(list(TASK_NAMES)))
    if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int) or episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be an integer >= 1, got {episodes_per_task!r}")
    if not (math.isfinite(action_noise) and action_noise >= 0):
        raise ValueError(f"action_noise must be a finite number >= 0, got {action_noise!r}")
    if not 0.0 <= min_success <= 1.0:
        raise ValueError(f"min_success must lie in [0, 1], got {min_success!r}")
    if isinstance(extra_variations, bool) or not isinstance(extra_variations, (int, np.integer)) \
            or not 0 <= extra_variations <= N_EXTRA_VARIATIONS:
        raise ValueError(f"extra_variations must be an integer in [0, {N_EXTRA_VARIATIONS}], "
                         f"got {extra_variations!r}")
    if variations is not None:
        bad = [v for v in variations if isinstance(v, bool) or not isinstance(v, (int, np.integer))
               or not 0 <= int(v) < N_VARIATIONS]
        if not variations or bad:
            raise ValueError(f"variations must be a non-empty list of integers in [0, {N_VARIATIONS}) "
                             f"or None (the training split), got {list(variations)!r}")


def collect_demos(tasks: Sequence[str] | None = None, episodes_per_task: int = 10, *,
                  vision: bool = True, image_size: int = 64, camera: str = DEFAULT_CAMERA,
                  action_noise: float = 0.1, seed: int = 0, min_success: float = 0.95,
                  variations: Sequence[int] | None = None, n_heldout: int = 10,
                  split_seed: int = 0, jobs: int = 1, markers: bool = False,
                  extra_variations: int = 0) -> DemoSet:
    """Scripted-expert demonstrations of ``tasks`` (default: every task of every suite).

    ``variations``: the variation indices to cycle through (default: the training split of
    ``split_variations(n_heldout, split_seed)``). Each task draws from its own generator
    (``seed`` and the task's position in ``TASK_NAMES``), so adding or dropping a task leaves the
    others' demonstrations unchanged, and ``jobs`` worker processes (tasks split among them)
    collect the same demonstrations as one. ``markers``: the images draw the goal's depth
    markers and a yellow puck (``MetaWorldTaskEnv(markers=...)``); recorded in the settings only
    when it draws something (images and ``True``), so files made before it stay valid.
    ``extra_variations``: after those episodes, one more on each of the first ``extra_variations``
    extra variations (placements beyond Meta-World's 50, drawn by its own generator with other
    seeds: ``streammoe_envs.metaworld.N_EXTRA_VARIATIONS``), for more placements to learn from;
    the held-out variations stay the only evaluated ones. Recorded only when > 0 (likewise)."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, got the string {tasks!r}; write [{tasks!r}]")
    tasks = list(TASK_NAMES if tasks is None else tasks)
    _check_settings(tasks, episodes_per_task, action_noise, min_success, variations, extra_variations)
    train, heldout = split_variations(n_heldout, split_seed)
    pool = list(train if variations is None else variations)
    settings = {"tasks": tasks, "episodes_per_task": episodes_per_task, "vision": bool(vision),
                "image_size": int(image_size), "camera": camera, "action_noise": float(action_noise),
                "seed": int(seed), "min_success": float(min_success),
                "variations": None if variations is None else [int(v) for v in variations],
                "variation_pool": pool,
                "n_heldout": int(n_heldout), "split_seed": int(split_seed),
                "train_variations": list(train), "heldout_variations": list(heldout)}
    markers = _markers(markers, vision)
    if markers:
        settings["markers"] = True
    extra = list(range(N_VARIATIONS, N_VARIATIONS + int(extra_variations)))
    if extra:
        settings["extra_variations"] = len(extra)
    episodes: list[Episode] = []
    stats: dict[str, dict[str, Any]] = {}
    dropped: dict[str, float] = {}
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    args = [(task, episodes_per_task, bool(vision), int(image_size), camera, float(action_noise),
             int(seed), pool, markers, extra) for task in tasks]
    bar = progress(total=len(tasks), desc="collect demos (tasks)")
    if jobs > 1 and len(tasks) > 1:
        with mp.get_context("spawn").Pool(min(jobs, len(tasks))) as workers:
            per_task = []
            for runs in workers.imap(_collect_task, args):
                per_task.append(runs)
                bar.update()
            workers.close()  # let the workers exit (the with block alone terminates them)
            workers.join()
    else:
        per_task = []
        for a in args:
            per_task.append(_collect_task(a))
            bar.update()
    for task, runs in zip(tasks, per_task):
        ok = [e for e in runs if e.success]
        rate = len(ok) / len(runs)
        stats[task] = {"attempts": len(runs), "successes": len(ok), "success_rate": rate,
                       "mean_steps": float(np.mean([len(e) for e in ok])) if ok else None}
        if rate < min_success:
            dropped[task] = rate
            warnings.warn(f"MergeVLA task {task}: the scripted expert succeeded in {len(ok)}/"
                          f"{len(runs)} episodes ({rate:.0%} < min_success {min_success:.0%}); "
                          "the task is dropped from the demonstrations", stacklevel=2)
        else:
            episodes.extend(ok)
    bar.close()
    return DemoSet(episodes, stats, dropped, settings)


def _markers(markers: Any, vision: bool) -> bool:
    """``markers`` checked; ``True`` only where it draws something (images)."""
    return check_markers(markers) and bool(vision)


def _collect_task(args: tuple[str, int, bool, int, str, float, int, list[int], bool, list[int]]
                  ) -> list[Episode]:
    """Every episode of one task (its own generator; a worker process's job): ``episodes_per_task``
    on the pool, cycled in a seeded order, then one on each extra variation."""
    task, episodes_per_task, vision, image_size, camera, action_noise, seed, pool, markers, extra = args
    rng = np.random.default_rng([seed, ALL_TASK_NAMES.index(task)])
    order = rng.permutation(pool)
    env = MetaWorldTaskEnv(task, int(order[0]), vision=vision, image_size=image_size, camera=camera,
                           markers=markers)
    try:
        return [collect_episode(env, rng, action_noise, int(v))
                for v in [*(order[i % len(order)] for i in range(episodes_per_task)), *extra]]
    finally:
        env.close()


_COLLECT_SIGNATURE = inspect.signature(collect_demos)


# ----- files -------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """An HDF5 attribute value as plain JSON-able Python (the same on write and read)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fingerprint(f: h5py.File, store: dict[str, np.ndarray] | None = None) -> str:
    """SHA-256 over the file's content in a fixed order (the fingerprint attribute excluded);
    ``store`` receives every dataset's array by its path (one read serves hashing and loading)."""
    h = hashlib.sha256()

    def attrs(obj: h5py.HLObject, skip: tuple[str, ...] = ()) -> bytes:
        items = {k: _plain(obj.attrs[k]) for k in sorted(obj.attrs) if k not in skip}
        return json.dumps(items, sort_keys=True).encode()

    def visit(group: h5py.Group) -> None:
        for name in sorted(group):
            item = group[name]
            if isinstance(item, h5py.Group):
                h.update(b"G" + item.name.encode() + b"\0" + attrs(item))
                visit(item)
            else:
                arr = np.ascontiguousarray(item[()])
                h.update(b"D" + item.name.encode() + b"\0" + attrs(item)
                         + f"{arr.dtype.str}{arr.shape}".encode())
                h.update(arr.tobytes())
                if store is not None:
                    store[item.name] = arr

    h.update(attrs(f, skip=(_FINGERPRINT_ATTR,)))
    visit(f)
    return h.hexdigest()


def _meta(demos: DemoSet) -> dict[str, Any]:
    present = {ep.task for ep in demos.episodes}
    return {
        "format": FORMAT,
        "settings": demos.settings,
        "expert_stats": demos.stats,
        "dropped": demos.dropped,
        "suites": {s: [t for t in tasks if t in present] for s, tasks in TASK_GROUPS.items()
                   if any(t in present for t in tasks)},
        "vocab": list(VOCAB),
        "instruction_len": INSTRUCTION_LEN,
        "action_dim": ACTION_DIM,
    }


def write_demos(path: str | Path, demos: DemoSet) -> str:
    """Write ``demos`` to ``path`` (HDF5, robomimic's layout; see the module docstring) and
    return its content fingerprint. The file appears complete or not at all (written under a
    temporary name, then renamed)."""
    if not demos.episodes:
        raise ValueError("no demonstrations to write (every task was dropped or none succeeded)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    settings = demos.settings
    env_args = {"env_name": ENV_ID, "type": _GYM_ENV_TYPE,
                "env_kwargs": {k: settings[k] for k in ("vision", "image_size", "camera", "markers")
                               if k in settings}}
    masks: dict[str, list[str]] = {}
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["total"] = int(sum(len(ep) for ep in demos.episodes))
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["mergevla"] = json.dumps(_meta(demos))
            for i, ep in enumerate(demos.episodes):
                name = f"demo_{i}"
                g = data.create_group(name)
                g.attrs.update({"num_samples": len(ep), "task": ep.task, "suite": ep.suite,
                                "variation": int(ep.variation), "instruction": ep.instruction,
                                "success": bool(ep.success)})
                for key, arr in ep.obs.items():
                    kwargs = {"compression": "gzip", "compression_opts": 4} if arr.dtype == np.uint8 else {}
                    g.create_dataset(f"obs/{key}", data=arr, **kwargs)
                g.create_dataset("actions", data=ep.actions.astype(np.float32))
                g.create_dataset("expert_actions", data=ep.expert_actions.astype(np.float32))
                g.create_dataset("rewards", data=ep.rewards.astype(np.float32))
                g.create_dataset("dones", data=ep.dones.astype(np.uint8))
                masks.setdefault(ep.suite, []).append(name)
                masks.setdefault(ep.task, []).append(name)
            mask = f.create_group("mask")
            for key, names in masks.items():
                mask.create_dataset(key, data=np.array(names, dtype="S"))
            fingerprint = _fingerprint(f)
            f.attrs[_FINGERPRINT_ATTR] = fingerprint
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    demos.fingerprint = fingerprint
    return fingerprint


def _demo_names(data: h5py.Group) -> list[str]:
    names = [n for n in data if n.startswith("demo_")]
    return sorted(names, key=lambda n: int(n.split("_", 1)[1]))


def read_demos(path: str | Path) -> DemoSet:
    """Read and check a demonstration file: format, content fingerprint, vocabulary, shapes and
    finiteness. Every problem is an error that names the file and what to do."""
    path = Path(path)
    redo = "delete it and collect the demonstrations again (collect_demos + write_demos)"
    if not path.is_file():
        raise FileNotFoundError(f"no MergeVLA demonstration file at {path}; collect it first "
                                "(collect_demos + write_demos, or ensure_demos)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file ({e}); {redo}") from e
    try:
        with f:
            return _read_open(f, path, redo)
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged or incomplete ({type(e).__name__}: {e}); {redo}") from e


def _read_open(f: h5py.File, path: Path, redo: str) -> DemoSet:
    if _FINGERPRINT_ATTR not in f.attrs or "data" not in f:
        raise ValueError(f"{path} is not a MergeVLA demonstration file (no fingerprint or no "
                         f"'data' group); {redo}")
    meta = json.loads(f["data"].attrs["mergevla"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, this code reads {FORMAT!r}; {redo}")
    stored = _plain(f.attrs[_FINGERPRINT_ATTR])
    arrays: dict[str, np.ndarray] = {}
    actual = _fingerprint(f, arrays)
    if actual != stored:
        raise ValueError(f"{path}: content fingerprint mismatch (stored {stored[:12]}..., content "
                         f"{actual[:12]}...): the file was modified or corrupted; {redo}")
    vocab = meta["vocab"]
    if list(VOCAB[: len(vocab)]) != vocab:
        raise ValueError(f"{path} was tokenized with another vocabulary than "
                         f"streammoe_envs.metaworld.VOCAB (its token ids differ); {redo}")
    episodes = []
    for name in _demo_names(f["data"]):
        g = f["data"][name]
        a = dict(g.attrs)
        base = f"/data/{name}/"
        ep = Episode(task=_plain(a["task"]), suite=_plain(a["suite"]), variation=int(a["variation"]),
                     instruction=_plain(a["instruction"]),
                     obs={k: arrays[f"{base}obs/{k}"] for k in g["obs"]},
                     actions=arrays[base + "actions"], expert_actions=arrays[base + "expert_actions"],
                     rewards=arrays[base + "rewards"], dones=arrays[base + "dones"],
                     success=bool(a["success"]))
        n = int(a["num_samples"])
        lengths = {k: len(v) for k, v in ep.obs.items()} | {
            "actions": len(ep.actions), "expert_actions": len(ep.expert_actions),
            "rewards": len(ep.rewards), "dones": len(ep.dones)}
        if any(length != n for length in lengths.values()):
            raise ValueError(f"{path}: {name} has num_samples={n} but lengths {lengths}; {redo}")
        if ep.actions.shape != (n, ACTION_DIM) or not np.isfinite(ep.actions).all():
            raise ValueError(f"{path}: {name}/actions must be finite with shape ({n}, {ACTION_DIM}), "
                             f"got {ep.actions.shape}; {redo}")
        episodes.append(ep)
    if not episodes:
        raise ValueError(f"{path} holds no demonstrations; {redo}")
    return DemoSet(episodes, meta["expert_stats"], meta["dropped"], meta["settings"],
                   fingerprint=_plain(f.attrs[_FINGERPRINT_ATTR]))


# ----- training arrays ---------------------------------------------------------------------------

def action_chunks(actions: np.ndarray, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(T, C, A)`` chunks: row ``t`` holds actions ``t .. t+C-1``, the last action repeated past
    the end; and the ``(T, C)`` mask of real (not repeated) entries.

    >>> chunks, valid = action_chunks(np.arange(3.0).reshape(3, 1), 2)
    >>> chunks[:, :, 0].tolist(), valid.tolist()
    ([[0.0, 1.0], [1.0, 2.0], [2.0, 2.0]], [[True, True], [True, True], [True, False]])
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    actions = np.asarray(actions)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"actions must have shape (T >= 1, action_dim), got {actions.shape}")
    idx = np.arange(len(actions))[:, None] + np.arange(chunk_size)[None, :]
    valid = idx < len(actions)
    return actions[np.minimum(idx, len(actions) - 1)], valid


def suite_data(episodes: Sequence[Episode], chunk_size: int, action_key: str = "actions",
               episode_ids: Sequence[int] | None = None) -> dict[str, SuiteData]:
    """Stack episodes per suite (suites and tasks in ``TASK_GROUPS`` order: the suites, then the
    pre-training tasks as the group ``"pretrain"``). ``action_key``:
    ``"actions"`` (executed, noisy) or ``"expert_actions"`` (noise-free) as targets."""
    if action_key not in ("actions", "expert_actions"):
        raise ValueError(f"action_key must be 'actions' or 'expert_actions', got {action_key!r}")
    ids = list(range(len(episodes)) if episode_ids is None else episode_ids)
    out: dict[str, SuiteData] = {}
    for suite, suite_tasks in TASK_GROUPS.items():
        members = [(i, ep) for i, ep in zip(ids, episodes, strict=True) if ep.suite == suite]
        if not members:
            continue
        tasks = tuple(t for t in suite_tasks if any(ep.task == t for _, ep in members))
        keys = set(members[0][1].obs)
        for i, ep in members:
            if set(ep.obs) != keys:
                raise ValueError(f"demo {i} has observation keys {sorted(ep.obs)}, others {sorted(keys)}")
        chunks, valid = zip(*(action_chunks(getattr(ep, action_key), chunk_size) for _, ep in members),
                            strict=True)
        out[suite] = SuiteData(
            suite=suite, tasks=tasks,
            obs={k: np.concatenate([ep.obs[k] for _, ep in members]) for k in sorted(keys)},
            actions=np.concatenate(chunks).astype(np.float32), action_valid=np.concatenate(valid),
            task_index=np.concatenate([np.full(len(ep), tasks.index(ep.task), np.int64) for _, ep in members]),
            episode_index=np.concatenate([np.full(len(ep), i, np.int64) for i, ep in members]),
            step=np.concatenate([np.arange(len(ep), dtype=np.int64) for _, ep in members]),
            instructions={ep.task: ep.instruction for _, ep in members},
        )
    return out


def load_demos(path: str | Path, chunk_size: int, suites: Sequence[str] | None = None,
               action_key: str = "actions") -> dict[str, SuiteData]:
    """Per-suite training arrays (:class:`SuiteData`) of a checked demonstration file;
    ``suites`` keeps only those (each must be in the file)."""
    demos = read_demos(path)
    data = suite_data(demos.episodes, chunk_size, action_key)
    if suites is not None:
        missing = [s for s in suites if s not in data]
        if missing:
            raise ValueError(f"{path} has no demonstrations of suites {missing}; it has {sorted(data)}")
        data = {s: data[s] for s in suites}
    return data


def ensure_demos(data_dir: str | Path, **settings: Any) -> tuple[Path, DemoSet]:
    """The demonstration file for these :func:`collect_demos` settings under ``data_dir``
    (``demos_<hash of the settings, defaults filled in>.hdf5``), collected and written first if
    absent; returns its path and its checked content."""
    try:
        bound = _COLLECT_SIGNATURE.bind(**settings)
    except TypeError as e:
        raise TypeError(f"ensure_demos: {e} (it takes collect_demos' keyword arguments)") from e
    bound.apply_defaults()
    jobs = bound.arguments.pop("jobs")  # how, not what: it leaves the file's content and name alone
    markers = bound.arguments.pop("markers")  # named only when it draws (older files stay valid)
    extra = bound.arguments.pop("extra_variations")  # named only when > 0 (likewise)
    spec = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in bound.arguments.items()}
    if _markers(markers, spec["vision"]):
        spec["markers"] = True
    if extra:
        spec["extra_variations"] = extra
    if spec["tasks"] is None:
        spec["tasks"] = list(TASK_NAMES)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(data_dir) / f"demos_{digest}.hdf5"
    if not path.is_file():
        write_demos(path, collect_demos(**spec, jobs=jobs))
    demos = read_demos(path)
    differ = {k: (demos.settings.get(k), spec.get(k)) for k in sorted({*spec, "markers", "extra_variations"})
              if demos.settings.get(k) != spec.get(k)}
    if differ:
        raise ValueError(f"{path} was collected with other settings (file, asked): {differ}; delete it")
    return path, demos
