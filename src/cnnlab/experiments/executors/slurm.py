"""Slurm job arrays: an sbatch script with ``--array=IDX%K`` whose tasks run
``cnnlab sweep run-one --index $SLURM_ARRAY_TASK_ID`` (Slurm arrays take index lists, so ids are sweep indices).
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.experiments.executors.base import (
    Executor,
    SubmitRequest,
    Submission,
    compress_indices,
    job_name,
    register_executor,
    submit_dir,
    task_command,
)
from cnnlab.experiments.executors.sge import run_submit, task_body, write_script
from cnnlab.experiments.sweep import Sweep


def slurm_script(sweep: Sweep, request: SubmitRequest, indices: list[int]) -> str:
    opts = sweep.spec.executors.slurm
    logs = submit_dir(sweep) / "logs"
    k = request.max_concurrent or opts.max_concurrent
    threads = request.threads or opts.threads
    req = SubmitRequest(**{**request.__dict__, "threads": threads})
    array = compress_indices(indices) + (f"%{k}" if k else "")
    head = ["#!/bin/bash", f"#SBATCH --job-name={job_name(sweep)}", f"#SBATCH --chdir={Path.cwd()}",
            f"#SBATCH --output={logs}/%x-%A_%a.out", f"#SBATCH --array={array}"]
    if threads and not any(o.startswith(("--cpus-per-task", "-c")) for o in opts.options):
        head.append(f"#SBATCH --cpus-per-task={threads}")
    head += [f"#SBATCH {o}" for o in opts.options]
    head.append(f"# cnnlab sweep {sweep.name}: {len(indices)} tasks")
    body = task_body(task_command(sweep, req, opts.python), None, "SLURM_ARRAY_TASK_ID", opts, threads)
    return "\n".join(head + body) + "\n"


@register_executor
class SlurmExecutor(Executor):
    name = "slurm"
    description = "Slurm job array (sbatch --array=IDX%K)"

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        indices = [r.index for r in request.runs]
        if not indices:
            return Submission(self.name, [])
        path = write_script(sweep, "slurm", slurm_script(sweep, request, indices))
        sub = Submission(self.name, indices, script=path, command=["sbatch", "--parsable", str(path)])
        if not request.dry_run:
            out = run_submit(sub.command, "Slurm")
            sub.job_id = out.split(";", 1)[0].strip()
            sub.submitted = True
        return sub
