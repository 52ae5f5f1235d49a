"""Ray: the sweep's pending runs as Ray tasks on a running cluster (``address``) or a local one.

Each task calls ``run_one``, so the run store's locks still decide who trains what (a cluster needs the
run-store root on a shared filesystem). Optional extra: ``pip install 'cnnlab[ray]'``.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from cnnlab.engine.config import StrictModel
from cnnlab.experiments.executors.base import Executor, SubmitRequest, Submission, register_executor
from cnnlab.experiments.runner import Outcome, run_one
from cnnlab.experiments.sweep import Sweep


class RayOptions(StrictModel):
    """``executors: {ray: ...}`` of a sweep file."""

    address: Optional[str] = Field(None, description="'auto' or ray://host:port; default: start a local Ray")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per run (Ray task)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per run (Ray task)")


def _task(sweep: Sweep, index: int, retry_failed: bool, mlflow_uri: Optional[str], threads: int,
          rerun_stale: bool = False) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    return run_one(sweep, index, retry_failed=retry_failed, rerun_stale=rerun_stale, mlflow_uri=mlflow_uri).to_dict()


def run_ray(sweep: Sweep, request: SubmitRequest) -> list[Outcome]:
    """Run ``request.runs`` as Ray tasks; blocks until all finish and returns their outcomes."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'cnnlab[ray]'") from None
    opts: RayOptions = sweep.spec.executors.get("ray")
    address = request.address or opts.address
    from cnnlab.utils.ray_session import init_ray

    started = init_ray(ray, address, request.workers)  # a local Ray with ``workers`` CPUs (default: all)
    if request.mlflow_uri:
        from cnnlab.experiments.tracking import ensure_experiment

        ensure_experiment(request.mlflow_uri, sweep.name)
    threads = request.threads or max(1, int(opts.num_cpus))
    remote = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_retries=0)(_task)
    pending = [remote.remote(sweep, r.index, request.retry_failed, request.mlflow_uri, threads, request.rerun_stale) for r in request.runs]
    outcomes: list[Outcome] = []
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                out = Outcome(**ray.get(ref))
                if out.action == "busy":
                    continue
                outcomes.append(out)
                if request.on_outcome is not None:
                    request.on_outcome(out)
    finally:
        if started:
            ray.shutdown()
    return outcomes


@register_executor
class RayExecutor(Executor):
    name = "ray"
    description = "Ray tasks on a running cluster (--address) or a local Ray"
    options_model = RayOptions
    waits = True

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        if request.dry_run:
            return Submission(self.name, [r.index for r in request.runs])
        outcomes = run_ray(sweep, request)
        return Submission(self.name, [r.index for r in request.runs], submitted=True,
                          outcomes=[o.to_dict() for o in outcomes])
