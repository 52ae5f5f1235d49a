"""Attribution on the sweep executors: an LDS study's subset models, or MAGIC's target chunks, as array jobs.

LDS: every task runs ``cnnlab lds RUN_DIR --drop D --models M --seed S --index K``: it trains subset model K-1
of the study unless its record exists (resumable, idempotent), with the step engine, so each record is
bitwise the local path's. ``cnnlab lds`` without ``--index`` merges once every record exists (their index,
shape and provenance checked) and computes the LDS.

MAGIC: every task runs ``cnnlab magic CONFIG --out RUN_DIR --targets T --chunk C ... --index K``: it computes
chunk K of the targets unless its file exists (:class:`~cnnlab.attribution.chunks.MagicChunks`). The same
``cnnlab magic`` command without ``--index`` merges once every chunk exists.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from cnnlab.attribution.chunks import MagicChunks
from cnnlab.attribution.lds import LDSStudy, Regime
from cnnlab.experiments.executors import EXECUTORS, SubmitRequest, Submission, get_executor
from cnnlab.experiments.executors.array import ArrayExecutor, ArrayJob


def attribution_executors() -> tuple[str, ...]:
    """The executors attribution tasks run on: ``local`` and ``ray`` (run here), and every registered
    job-array scheduler (an :class:`ArrayExecutor` subclass, so a new engine module is picked up)."""
    arrays = sorted(n for n, cls in EXECUTORS.items() if issubclass(cls, ArrayExecutor))
    return ("local", *arrays, "ray")


def check_attribution_executor(executor: str) -> None:
    """Raise ValueError naming ``--executor`` and the choices when attribution cannot run on ``executor``."""
    if executor not in attribution_executors():
        raise ValueError(f"--executor must be one of {', '.join(attribution_executors())}, got {executor!r}")


def lds_task_command(run_dir: Path, regime: Regime, python: Optional[str] = None) -> list[str]:
    """The command of one subset-model task, without ``--index`` (absolute paths)."""
    return [python or sys.executable, "-m", "cnnlab", "lds", str(Path(run_dir).resolve()), "--drop", f"{regime.drop:g}",
            "--models", str(regime.models), "--seed", str(regime.seed)]


def lds_job(study: LDSStudy, python: Optional[str] = None) -> ArrayJob:
    """The pending subset models of ``study`` as an array job (task ids: 1-based model numbers)."""
    ids = [k + 1 for k in study.pending()]
    name = "lds-" + "".join(c if c.isalnum() or c in "_.-" else "_" for c in study.run_dir.resolve().name)
    return ArrayJob(name, f"cnnlab lds {study.run_dir} ({study.regime.tag})", lds_task_command(study.run_dir, study.regime, python),
                    ids, study.dir.resolve() / "_submit", contiguous=ids == list(range(1, study.regime.models + 1)))


def _ray_task(run_dir: str, drop: float, models: int, seed: int, k: int, threads: int) -> int:
    import torch

    from cnnlab.attribution.pipeline import lds_study

    torch.set_num_threads(threads)
    lds_study(run_dir, Regime(drop, models, seed)).train_one(k)
    return k


def _run_ray_tasks(task: Callable[..., Any], calls: list[tuple], done: int, total: int, address: Optional[str],
                   workers: Optional[int], progress: Optional[Callable[[int, int], None]]) -> None:
    """Run ``task(*args)`` for every tuple of ``calls`` as one-CPU Ray tasks (a local Ray unless ``address``),
    reporting ``progress(done, total)`` as each finishes; a Ray cnnlab started is shut down again."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'cnnlab[ray]'") from None
    from cnnlab.utils.ray_session import init_ray

    started = init_ray(ray, address, workers)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(task)
        pending = [remote.remote(*args) for args in calls]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
            done += len(ready)
            if progress:
                progress(done, total)
    finally:
        if started:
            ray.shutdown()


def _run_ray(study: LDSStudy, address: Optional[str], workers: Optional[int], threads: int,
             progress: Optional[Callable[[int, int], None]]) -> None:
    r, run_dir = study.regime, str(study.run_dir.resolve())
    calls = [(run_dir, r.drop, r.models, r.seed, k, threads) for k in study.pending()]
    _run_ray_tasks(_ray_task, calls, r.models - len(calls), r.models, address, workers, progress)


def run_lds_models(study: LDSStudy, executor: str, *, workers: int = 1, threads: Optional[int] = None,
                   max_concurrent: Optional[int] = None, dry_run: bool = False, address: Optional[str] = None,
                   python: Optional[str] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> Optional[Submission]:
    """Train ``study``'s missing subset models through ``executor``.

    local / ray: blocks until they are trained (returns None). sge / slurm: writes (and unless ``dry_run``
    submits) a job array and returns its Submission; merge later with ``cnnlab lds`` once the tasks finished.
    """
    check_attribution_executor(executor)
    if not study.pending():
        return None
    if executor == "local":
        if threads:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads * max(1, workers))
        try:
            study.train(workers=workers, progress=progress, engine="step")
        finally:
            if threads:
                torch.set_num_threads(before)
        return None
    if executor == "ray":
        _run_ray(study, address, workers, threads or 1, progress)
        return None
    ex = get_executor(executor)
    assert isinstance(ex, ArrayExecutor)
    opts = ex.options(None)
    request = SubmitRequest([], max_concurrent=max_concurrent, dry_run=dry_run, threads=threads)
    return ex.submit_job(lds_job(study, python), opts, request)


def submission_summary(sub: Submission, unit: str = "models") -> dict[str, Any]:
    """A JSON record of a submission; ``unit``: "models" (0-based subset models) or "chunks" (1-based)."""
    ids = [i - 1 for i in sub.indices] if unit == "models" else list(sub.indices)
    return {"executor": sub.executor, "tasks": len(sub.indices), unit: ids,
            "script": str(sub.script) if sub.script else None, "command": sub.command, "job_id": sub.job_id,
            "submitted": sub.submitted}


# ------------------------------------------------------------------------------ MAGIC target chunks
def magic_task_command(config: str, overrides: list[str], run_dir: Path, chunks: MagicChunks, *,
                       measure: str, checkpointing: str, tree_k: int, dtype: str, vjp: str, offload: bool,
                       compile: bool, compile_chunk: int, threads: Optional[int] = None,
                       python: Optional[str] = None) -> list[str]:
    """The ``cnnlab magic`` command of one chunk task, without ``--index`` (absolute paths)."""
    from cnnlab.experiments.executors.base import compress_indices

    path = Path(config)
    cmd = [python or sys.executable, "-m", "cnnlab", "magic", str(path.resolve()) if path.exists() else config]
    for item in overrides:
        cmd += ["--set", item]
    cmd += ["--out", str(Path(run_dir).resolve()), "--targets", compress_indices(chunks.targets),
            "--chunk", str(chunks.chunk), "--measure", measure, "--checkpointing", checkpointing, "--tree-k", str(tree_k),
            "--dtype", dtype, "--vjp", vjp, *(["--offload"] if offload else []),
            *(["--compile", "--compile-chunk", str(compile_chunk)] if compile else []),
            *(["--threads", str(threads)] if threads else [])]
    return cmd


def magic_job(chunks: MagicChunks, task_command: list[str]) -> ArrayJob:
    """The pending chunks of a MAGIC request as an array job (task ids: 1-based chunk numbers).

    ``task_command``: the ``cnnlab magic`` command of one task without ``--index`` (absolute paths)."""
    ids = chunks.pending()
    name = "magic-" + "".join(c if c.isalnum() or c in "_.-" else "_" for c in chunks.run_dir.resolve().name)
    return ArrayJob(name, f"cnnlab magic {chunks.run_dir} ({len(chunks)} chunks of {chunks.chunk} targets)",
                    task_command, ids, chunks.dir.resolve() / "_submit", contiguous=ids == list(range(1, len(chunks) + 1)))


def _ray_magic_task(command: list[str], k: int, threads: int) -> int:
    """One chunk in a Ray worker: the task's own ``cnnlab magic ... --index K`` in a fresh process, so that
    it runs exactly what an array task runs (and Ray's worker process keeps no replay state)."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([*command, "--index", str(k), "--threads", str(threads)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"MAGIC chunk {k} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return k


def _run_ray_magic(chunks: MagicChunks, command: list[str], address: Optional[str], workers: Optional[int],
                   threads: int, progress: Optional[Callable[[int, int], None]]) -> None:
    calls = [(command, k, threads) for k in chunks.pending()]
    _run_ray_tasks(_ray_magic_task, calls, len(chunks) - len(calls), len(chunks), address, workers, progress)


def run_magic_chunks(chunks: MagicChunks, executor: str, task_command: list[str], *, workers: Optional[int] = None,
                     threads: Optional[int] = None, max_concurrent: Optional[int] = None, dry_run: bool = False,
                     address: Optional[str] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> Optional[Submission]:
    """Compute the missing chunks of ``chunks`` through ``executor``.

    Args:
        chunks (MagicChunks): The request (its plan already checked).
        executor (str): local (in this process, one chunk after another) | ray (one Ray task per chunk) |
            sge | slurm (a job array, one task per chunk).
        task_command (list of str): One task's ``cnnlab magic`` command without ``--index`` (what the array
            script and the Ray tasks run).
        workers (int, optional): ray: CPUs of the local Ray it starts. Default: Ray's choice.
        threads (int, optional): torch threads per task. Default: torch's (local), 1 (ray), unset (sge/slurm).
        max_concurrent (int, optional): sge/slurm: array tasks running at once. Default: no limit.
        dry_run (bool, optional): sge/slurm: write the job script, do not submit it. Default: False.
        address (str, optional): ray: cluster address. Default: a local Ray.
        progress (callable, optional): ``progress(done, total)`` after each chunk (local, ray). Default: None.

    Returns:
        None once the chunks are computed (local, ray), else the Submission of the job array (merge later
        with the same ``cnnlab magic`` command once its tasks finished).
    """
    check_attribution_executor(executor)
    if not chunks.pending():
        return None
    if executor == "local":
        import torch

        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            for k in chunks.pending():
                chunks.compute_one(k)
                if progress:
                    progress(len(chunks) - len(chunks.pending()), len(chunks))
        finally:
            torch.set_num_threads(before)
        return None
    if executor == "ray":
        _run_ray_magic(chunks, task_command, address, workers, threads or 1, progress)
        return None
    ex = get_executor(executor)
    assert isinstance(ex, ArrayExecutor)
    request = SubmitRequest([], max_concurrent=max_concurrent, dry_run=dry_run, threads=threads)
    return ex.submit_job(magic_job(chunks, task_command), ex.options(None), request)
