"""SkillBlender training, top to bottom.

``experiment=skillblend_skills`` -> :func:`train_skills`: train every primitive skill with SB3 PPO
on its goal-conditioned env, copy the actor into a frozen :class:`MLPSkill`, save it as
``skills/<name>.safetensors`` (plus the SB3 zip), evaluate the frozen skill and record a video.

``experiment=skillblend`` -> :func:`run`: load the skills (or train them first), train one policy on
a task with SB3 PPO -- the per-joint blender (``method=blend``), hard selection of one skill
(``method=hard``) or flat PPO from scratch (``method=flat``) -- then evaluate it, record a rollout
video and, for blenders, plot the per-joint blend weights over an episode.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from streammoe_envs.skillblend import ENV_IDS, PROPRIO_DIM, PROPRIO_RATES, SKILL_ENVS, TASK_ENVS

from streammoe.control.skillblend.checkpoint import (
    CHECKPOINT_DIR,
    PeriodicCheckpoint,
    find_checkpoint_dir,
    keep_earlier_curve,
    learn_resumable,
    resume_or_build,
)
from streammoe.control.skillblend.config import (
    METHODS,
    VEC_ENVS,
    goal_gain_for,
    validated,
    validated_skills,
)
from streammoe.control.skillblend.evaluate import (
    evaluate,
    plot_blend_weights,
    record_rollout,
    rollout_blend_weights,
)
from streammoe.control.skillblend.policy import SkillBlendPolicy
from streammoe.control.skillblend.skills import (
    MLPSkill,
    load_skill,
    save_skill,
    skill_from_sb3,
    skill_path,
)
from streammoe.devices import resolve_device
from streammoe.routing import RoutingStats
from streammoe.runs import RunRecorder

__all__ = ["CURVE_FILE", "METHODS", "CurveCallback", "ensure_skills", "make_model", "make_vec", "run",
           "train_skill", "train_skills"]

INFO_KEYS = ("error", "success")
CURVE_FILE = "curve.json"


# ---------------------------------------------------------------------- shared pieces
def env_kwargs(episode_steps: int | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``gym.make`` keyword arguments: the episode length (``None``: registered) and ``extra``."""
    out = dict(extra or {})
    if episode_steps is not None:
        out["max_episode_steps"] = int(episode_steps)
    return out


def skill_env_kwargs(sk: DictConfig, name: str) -> dict[str, Any]:
    """The skill's env constructor arguments from ``skills.env_kwargs.<name>`` (may be absent)."""
    per_skill = sk.env_kwargs
    return dict(OmegaConf.to_container(per_skill[name], resolve=True)) if name in per_skill else {}


def make_vec(env_id: str, n_envs: int, seed: int, episode_steps: int | None = None,
             extra: dict[str, Any] | None = None, vec_env: str = "dummy") -> VecEnv:
    """SB3 vectorised env with Monitor wrappers that also record the final task error.
    ``vec_env``: ``dummy`` (``DummyVecEnv``: all envs in this process, stepped one after another)
    or ``subproc`` (``SubprocVecEnv``: one process per env, started by ``fork``, so the workers
    inherit the registered env ids; platforms without ``fork`` are refused). Both give the same
    transitions (same seeds), so a run's results do not depend on it."""
    if vec_env not in VEC_ENVS:
        raise ValueError(f"vec_env must be one of {VEC_ENVS}, got {vec_env!r}")
    if vec_env == "subproc":
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError("vec_env='subproc' needs the fork start method (Linux, macOS); use vec_env='dummy'")
        kw: dict[str, Any] = {"vec_env_cls": SubprocVecEnv, "vec_env_kwargs": {"start_method": "fork"}}
    else:
        kw = {"vec_env_cls": DummyVecEnv}
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs(episode_steps, extra),
                        monitor_kwargs={"info_keywords": INFO_KEYS}, **kw)


def ppo_kwargs(ppo: DictConfig) -> dict[str, Any]:
    """SB3 PPO arguments from a ``ppo`` config block (net_arch / log_std_init go to the policy)."""
    kw = OmegaConf.to_container(ppo, resolve=True)
    policy_kwargs = {"net_arch": list(kw.pop("net_arch")), "log_std_init": float(kw.pop("log_std_init"))}
    return {**kw, "policy_kwargs": policy_kwargs}


class RecorderCallback(BaseCallback):
    """After every rollout: one metrics.csv row (phase, env steps, episode return, final error)."""

    def __init__(self, recorder: RunRecorder, phase: str) -> None:
        super().__init__()
        self.recorder, self.phase = recorder, phase
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        eps = list(self.model.ep_info_buffer)

        def mean(key: str) -> float:  # NaN until the first episode ends
            return float(np.mean([e[key] for e in eps])) if eps else float("nan")

        self.recorder.log(phase=self.phase, env_steps=self.num_timesteps, episode_return=mean("r"),
                          final_error=mean("error"), success_rate=mean("success"),
                          steps_per_s=self.num_timesteps / (time.perf_counter() - self.start))


class CurveCallback(BaseCallback):
    """Learning curve: a noise-off evaluation (``evaluate_fn(model)``) at the first rollout
    boundary at or after each of ``points`` env steps. A point is exactly the model a run with
    that budget ends with (PPO's schedules are constant, and the evaluation draws no random
    numbers, so training is unchanged by it). Points go to ``path`` (JSON) as they come; a run
    resumed from a checkpoint keeps the points up to the checkpoint, read from ``earlier`` (the
    ``curve.json`` of the run it resumes; default ``path``), and evaluates the rest. Points beyond
    the last rollout boundary are left for the caller (:meth:`finish`: the final evaluation)."""

    def __init__(self, points: list[int], evaluate_fn: Any, path: Path, start_steps: int = 0,
                 earlier: Path | None = None) -> None:
        super().__init__()
        self.points = sorted(int(p) for p in points)
        self.evaluate_fn, self.path = evaluate_fn, Path(path)
        earlier = Path(earlier) if earlier is not None else self.path
        self.done: list[dict[str, Any]] = []
        if start_steps > 0 and earlier.is_file():  # resumed: keep what the stopped run evaluated
            old = json.loads(earlier.read_text())["points"]
            self.done = [p for p in old if p["env_steps"] <= start_steps]
        self._write()
        self.seconds = 0.0  # evaluation time, left out of the training throughput

    def _on_step(self) -> bool:
        return True

    def _due(self, steps: int) -> list[int]:
        recorded = {p["at"] for p in self.done}
        return [p for p in self.points if p <= steps and p not in recorded]

    def _on_rollout_start(self) -> None:
        due = self._due(self.model.num_timesteps)
        if due:
            start = time.perf_counter()
            metrics = self.evaluate_fn(self.model)
            self.seconds += time.perf_counter() - start
            self._record(due, self.model.num_timesteps, metrics)

    def _record(self, due: list[int], steps: int, metrics: dict[str, Any]) -> None:
        self.done += [{"at": p, "env_steps": int(steps), **metrics} for p in due]
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"points": self.done}, indent=1) + "\n")
        tmp.replace(self.path)

    def finish(self, budget: int, steps: int, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """Add the final evaluation (``metrics`` at ``steps`` env steps) as the point of the run's
        ``budget`` and of every requested point no rollout boundary reached; the whole curve."""
        self._record([*self._due(steps), int(budget)], steps, metrics)
        return list(self.done)


def skill_policy_fn(skill: MLPSkill):
    """obs = [goal, proprio] -> the frozen skill's action, as numpy."""
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32)
            return skill(x[: skill.goal_dim], x[skill.goal_dim:]).numpy()
    return act


def model_policy_fn(model: PPO):
    return lambda obs: model.predict(obs, deterministic=True)[0]


# ---------------------------------------------------------------------- primitive skills
def train_skill(name: str, sk: DictConfig, out_dir: Path, seed: int, device: str,
                recorder: RunRecorder | None = None, checkpoint_dir: Path | None = None,
                resume_dir: Path | None = None) -> tuple[MLPSkill, dict[str, Any]]:
    """Train one skill with PPO, save ``<name>.safetensors`` (frozen actor) and ``<name>_ppo.zip``.
    With ``checkpoint_dir``, PPO checkpoints go there every ``sk.checkpoint_every`` rollouts; with
    ``resume_dir``, training continues from the latest ``skill_<name>`` checkpoint found there."""
    if name not in SKILL_ENVS:
        raise ValueError(f"unknown skill {name!r}; available: {sorted(SKILL_ENVS)}")
    env_cls, env_id = SKILL_ENVS[name], ENV_IDS[name]
    extra = skill_env_kwargs(sk, name)
    meta = {"phase": f"skill_{name}", "env_id": env_id, "n_envs": int(sk.n_envs), "seed": int(seed)}
    model = resume_or_build(resume_dir, meta, lambda: PPO(
        "MlpPolicy", make_vec(env_id, sk.n_envs, seed, sk.episode_steps, extra), seed=seed, device=device,
        verbose=0, tensorboard_log=recorder.sb3_tensorboard_log(f"skill_{name}") if recorder else None,
        **ppo_kwargs(sk.ppo)))
    callbacks: list[BaseCallback] = [RecorderCallback(recorder, f"skill_{name}")] if recorder else []
    if checkpoint_dir is not None:
        callbacks.append(PeriodicCheckpoint(checkpoint_dir, meta, int(sk.checkpoint_every)))
    start = time.perf_counter()
    learn_resumable(model, int(sk.timesteps[name]), callbacks)
    seconds = time.perf_counter() - start
    model.get_env().close()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / f"{name}_ppo.zip")
    skill = skill_from_sb3(model, name, env_cls.goal_low, env_cls.goal_high)
    save_skill(skill, skill_path(out_dir, name))
    skill = load_skill(skill_path(out_dir, name))  # evaluate exactly what the blender will load
    metrics = evaluate(skill_policy_fn(skill), env_id, sk.eval_episodes, seed=10_000 + seed,
                       **env_kwargs(sk.episode_steps, extra))
    metrics.update(train_steps=model.num_timesteps, train_seconds=seconds,
                   train_steps_per_s=model.num_timesteps / seconds)
    return skill, metrics


def ensure_skills(sk: DictConfig, skills_dir: str | None, run_dir: Path, seed: int, device: str,
                  recorder: RunRecorder | None = None, resume_dir: Path | None = None
                  ) -> tuple[list[MLPSkill], Path]:
    """Load the skills from ``skills_dir``; train the missing ones first (saying so), with
    checkpoints in ``<run dir>/checkpoints`` and resuming from ``resume_dir`` if given."""
    names = list(sk.names)
    target = Path(skills_dir) if skills_dir else run_dir / "skills"
    paths = {n: skill_path(target, n) for n in names}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        where = f"in {target}" if skills_dir else "(skills_dir not set)"
        print(f"[skillblend] no trained skill checkpoints for {missing} {where}: training them first "
              f"with the skillblend_skills settings into {target}. Next time pass "
              f"skillblend.skills_dir={target} to reuse them.", flush=True)
        for name in missing:
            train_skill(name, sk, target, seed, device, recorder, run_dir / CHECKPOINT_DIR, resume_dir)
    return [load_skill(paths[n]) for n in names], target


def train_skills(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Entry of ``experiment=skillblend_skills``."""
    validated_skills(cfg)  # every key's type and range, device (skillblend/config.py)
    sk = cfg.skillblend.skills
    torch.set_num_threads(int(cfg.skillblend.threads))
    device = str(resolve_device(cfg.device))
    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    skills_dir = run_dir / "skills"
    metrics: dict[str, Any] = {"skills_dir": str(skills_dir)}
    resume_dir = find_checkpoint_dir(sk.resume, run_dir)
    keep_earlier_curve(run_dir, resume_dir)
    for name in sk.names:
        skill, m = train_skill(name, sk, skills_dir, cfg.seed, device, rec, run_dir / CHECKPOINT_DIR, resume_dir)
        metrics.update({f"{name}_{k}": v for k, v in m.items()})
        if sk.video_episodes:
            _, n_frames = record_rollout(skill_policy_fn(skill), ENV_IDS[name], run_dir / f"{name}.mp4",
                                         sk.video_episodes, 20_000 + cfg.seed,
                                         **env_kwargs(sk.episode_steps, skill_env_kwargs(sk, name)))
            metrics[f"{name}_video_frames"] = n_frames
    return rec.finish(metrics, title="skillblend_skills: frozen skills, evaluated with noise off")


# ---------------------------------------------------------------------- task policies
def make_model(method: str, vec: VecEnv, skills: list[MLPSkill], c: DictConfig, seed: int,
               device: str, tensorboard_log: str | None = None) -> PPO:
    """SB3 PPO with the blender policy (``blend`` / ``hard``) or the plain MlpPolicy (``flat``);
    ``tensorboard_log``: SB3's TensorBoard folder (None: none written)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    kw = {**ppo_kwargs(c.ppo), "tensorboard_log": tensorboard_log}
    if method == "flat":
        return PPO("MlpPolicy", vec, seed=seed, device=device, verbose=0, **kw)
    kw["policy_kwargs"].update(skills=skills, proprio_dim=PROPRIO_DIM, selection=method,
                               gate_temperature=float(c.gate_temperature), goal_gain=goal_gain_for(c),
                               hidden_from_blender=() if c.blender_sees_rates else PROPRIO_RATES)
    return PPO(SkillBlendPolicy, vec, seed=seed, device=device, verbose=0, **kw)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Entry of ``experiment=skillblend``: train and evaluate one policy on one task."""
    validated(cfg)  # every key's type and range, device (skillblend/config.py)
    c = cfg.skillblend
    if c.task not in TASK_ENVS:
        raise ValueError(f"unknown task {c.task!r}; available: {sorted(TASK_ENVS)}")
    torch.set_num_threads(int(c.threads))
    device = str(resolve_device(cfg.device))
    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    resume_dir = find_checkpoint_dir(c.resume, run_dir)
    skills_resume = find_checkpoint_dir(c.skills.resume, run_dir) or resume_dir
    keep_earlier_curve(run_dir, skills_resume)
    skills: list[MLPSkill] = []
    if c.method != "flat":
        skills, skills_dir = ensure_skills(c.skills, c.skills_dir, run_dir, cfg.seed, device, rec, skills_resume)
    env_id = ENV_IDS[c.task]
    eval_kw = env_kwargs(c.episode_steps)
    meta = {"phase": f"task_{c.task}_{c.method}", "env_id": env_id, "n_envs": int(c.n_envs), "seed": int(cfg.seed)}
    model = resume_or_build(resume_dir, meta, lambda: make_model(
        c.method, make_vec(env_id, c.n_envs, cfg.seed, c.episode_steps, vec_env=c.vec_env), skills, c, cfg.seed,
        device, rec.sb3_tensorboard_log(c.method)))

    def evaluate_model(m: PPO) -> dict[str, Any]:  # the same episodes at every curve point and at the end
        return evaluate(model_policy_fn(m), env_id, c.eval_episodes, 10_000 + cfg.seed, tilt_limit=c.tilt_limit,
                        **eval_kw)

    curve = CurveCallback(list(c.curve_at), evaluate_model, run_dir / CURVE_FILE, model.num_timesteps,
                          earlier=resume_dir.parent / CURVE_FILE if resume_dir is not None else None)
    callbacks = [RecorderCallback(rec, c.method), curve,
                 PeriodicCheckpoint(run_dir / CHECKPOINT_DIR, meta, int(c.checkpoint_every))]
    start, start_steps = time.perf_counter(), model.num_timesteps
    learn_resumable(model, int(c.timesteps), callbacks)
    seconds = time.perf_counter() - start - curve.seconds  # training only (a resumed run: since the resume)
    model.get_env().close()
    model.save(run_dir / "model.zip")

    policy = model_policy_fn(model)
    final = evaluate_model(model)
    trained = model.num_timesteps - start_steps
    metrics: dict[str, Any] = {"task": c.task, "method": c.method, "seed": int(cfg.seed), **final}
    metrics.update(train_steps=model.num_timesteps, train_seconds=seconds,
                   train_steps_per_s=trained / seconds if trained else float("nan"), device=device,
                   vec_env=c.vec_env, resumed_at_steps=start_steps,
                   curve=curve.finish(int(c.timesteps), model.num_timesteps, final))
    if c.video_episodes:
        _, metrics["video_frames"] = record_rollout(policy, env_id, run_dir / f"{c.task}_{c.method}.mp4",
                                                    c.video_episodes, 20_000 + cfg.seed, **eval_kw)
    if c.method != "flat":
        metrics.update(skills_dir=str(skills_dir), **_blend_summary(model, env_id, skills, run_dir,
                                                                     30_000 + cfg.seed, c, eval_kw))
    return rec.finish(metrics, title=f"skillblend: {c.method} on {c.task}")


def _blend_summary(model: PPO, env_id: str, skills: list[MLPSkill], run_dir: Path, seed: int,
                   c: DictConfig, kw: dict[str, Any]) -> dict[str, Any]:
    """Per-joint weights over one episode: plot, raw arrays, and mean weight per skill and joint."""
    roll = rollout_blend_weights(model, env_id, seed, **kw)
    names = [s.name for s in skills]
    np.savez(run_dir / "blend_weights.npz", **roll, skills=np.array(names))
    plot_blend_weights(roll["weights"], names, run_dir / "blend_weights.png", error=roll["error"],
                       title=f"{c.method} on {c.task}: skill weight per joint")
    stats = RoutingStats(len(skills))
    stats.update(np.moveaxis(roll["weights"], -1, 1).reshape(-1, len(skills)))  # (T*A, K)
    out: dict[str, Any] = {"routing_entropy": stats.mean_entropy}
    mean_w = roll["weights"].mean(axis=0)  # (K, A)
    for k, name in enumerate(names):
        out[f"weight_{name}"] = float(mean_w[k].mean())
    return out
