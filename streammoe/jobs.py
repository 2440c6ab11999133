"""Benchmark jobs: Hydra runs in subprocesses, a pool of them at a time, resumable.

A :class:`Job` is one command that writes a run folder; it is *finished* when the folder holds
``metrics.json`` (every streammoe entry writes it last). :func:`run_jobs` skips finished jobs,
runs the others ``n_workers`` at a time (each a subprocess with its output in ``log.txt``, so
both cores are used and a crash stays in its job) and never raises on a failed job: failures are
returned for the caller to list. An interrupted job's folder is either deleted and the job rerun
(``resume=False``: entries without checkpoints) or kept so the entry resumes from its checkpoints
(``resume=True``).

>>> import sys, tempfile
>>> out = Path(tempfile.mkdtemp())
>>> code = "import pathlib, sys; pathlib.Path(sys.argv[1], 'metrics.json').write_text('{}')"
>>> jobs = [Job(f"demo {i}", out / f"run{i}", [sys.executable, "-c", code, str(out / f"run{i}")])
...         for i in range(2)]
>>> report = run_jobs(jobs, n_workers=2, echo=False)
>>> report["n_run"], report["failures"]
(2, [])
>>> run_jobs(jobs, n_workers=2, echo=False)["n_skipped"]  # finished: skipped
2
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Job", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One command (``argv``) writing the run folder ``dir``; ``name`` labels it in logs."""

    name: str
    dir: Path
    command: Sequence[str]

    @property
    def finished(self) -> bool:
        return (Path(self.dir) / "metrics.json").is_file()


def _run(job: Job, cwd: Path | None, resume: bool, env: dict[str, str] | None) -> tuple[int, float]:
    """Run one job in its folder; (exit code, seconds). Output to ``log.txt`` (appended on resume)."""
    job_dir = Path(job.dir)
    if job_dir.exists() and not resume:  # interrupted earlier and cannot resume: start over
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (job_dir / "log.txt").open("a") as log:
        log.write("$ " + " ".join(map(str, job.command)) + "\n")
        log.flush()
        try:
            rc = subprocess.run(list(map(str, job.command)), cwd=cwd, stdout=log, env=env,
                                stderr=subprocess.STDOUT).returncode
        except OSError as err:
            log.write(f"could not start: {err}\n")
            rc = -1
    if rc == 0 and not job.finished:
        rc = -2  # exited cleanly without results
    return rc, time.perf_counter() - t0


def run_jobs(jobs: Sequence[Job], n_workers: int, cwd: Path | None = None, resume: bool = False,
             echo: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Run the unfinished ``jobs`` in a pool of ``n_workers`` subprocesses (see the module
    docstring). ``threads``: CPU threads per job (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, which
    torch reads at start), so jobs side by side do not oversubscribe the cores. Returns ``n_jobs``, ``n_run``, ``n_skipped``, ``failures`` (job, dir, exit code,
    log), ``job_seconds_sum`` and ``run_seconds``."""
    todo = [j for j in jobs if not j.finished]
    env = None
    if threads is not None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if echo:
        print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} finished earlier, {len(todo)} to run "
              f"with {n_workers} workers", flush=True)
    failures: list[dict[str, Any]] = []
    job_seconds = 0.0
    t0 = time.perf_counter()
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
            futures = {pool.submit(_run, j, cwd, resume, env): j for j in todo}
            for done, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    rc, seconds = future.result()
                except Exception as err:  # noqa: BLE001 - a broken job must not stop the bench
                    rc, seconds = -3, float("nan")
                    if echo:
                        print(f"  {job.name}: {err!r}", flush=True)
                job_seconds += seconds if math.isfinite(seconds) else 0.0
                if echo:
                    status = "ok" if rc == 0 else f"FAILED (rc {rc})"
                    print(f"[{done}/{len(todo)}] {status} {job.name} in {seconds:.0f}s "
                          f"(elapsed {time.perf_counter() - t0:.0f}s)", flush=True)
                if rc != 0:
                    failures.append({"job": job.name, "dir": str(job.dir), "rc": rc,
                                     "log": str(Path(job.dir) / "log.txt")})
    return {"n_jobs": len(jobs), "n_run": len(todo), "n_skipped": len(jobs) - len(todo),
            "failures": failures, "job_seconds_sum": job_seconds, "run_seconds": time.perf_counter() - t0}
