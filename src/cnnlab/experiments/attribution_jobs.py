"""Attribution on the sweep executors: an LDS study's subset models as an array job (one task per model).

Every task runs ``cnnlab lds RUN_DIR --drop D --models M --seed S --index K``: it trains subset model K-1
of the study unless its record exists (resumable, idempotent), with the step engine, so each record is
bitwise the local path's. ``cnnlab lds`` without ``--index`` merges once every record exists (their index,
shape and provenance checked) and computes the LDS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from cnnlab.attribution.lds import LDSStudy, Regime
from cnnlab.experiments.executors import SubmitRequest, Submission, get_executor
from cnnlab.experiments.executors.array import ArrayExecutor, ArrayJob

ENGINES = ("local", "sge", "slurm", "ray")


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


def _run_ray(study: LDSStudy, address: Optional[str], workers: Optional[int], threads: int,
             progress: Optional[Callable[[int, int], None]]) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'cnnlab[ray]'") from None
    from cnnlab.utils.ray_session import init_ray

    started = init_ray(ray, address, workers)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        r = study.regime
        pending = [remote.remote(str(study.run_dir.resolve()), r.drop, r.models, r.seed, k, threads) for k in study.pending()]
        done = r.models - len(pending)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
            done += len(ready)
            if progress:
                progress(done, r.models)
    finally:
        if started:
            ray.shutdown()


def run_lds_models(study: LDSStudy, executor: str, *, workers: int = 1, threads: Optional[int] = None,
                   max_concurrent: Optional[int] = None, dry_run: bool = False, address: Optional[str] = None,
                   python: Optional[str] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> Optional[Submission]:
    """Train ``study``'s missing subset models through ``executor``.

    local / ray: blocks until they are trained (returns None). sge / slurm: writes (and unless ``dry_run``
    submits) a job array and returns its Submission; merge later with ``cnnlab lds`` once the tasks finished.
    """
    if executor not in ENGINES:
        raise ValueError(f"--executor must be one of {', '.join(ENGINES)}, got {executor!r}")
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


def submission_summary(sub: Submission) -> dict[str, Any]:
    return {"executor": sub.executor, "tasks": len(sub.indices), "models": [i - 1 for i in sub.indices],
            "script": str(sub.script) if sub.script else None, "command": sub.command, "job_id": sub.job_id,
            "submitted": sub.submitted}
