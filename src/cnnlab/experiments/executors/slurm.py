"""Slurm job arrays: an sbatch script with ``--array=IDX%K`` whose tasks run ``... --index $SLURM_ARRAY_TASK_ID``
(Slurm arrays take index lists, so array ids are the indices themselves)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cnnlab.experiments.executors.array import ArrayExecutor, ArrayJob, ClusterOptions
from cnnlab.experiments.executors.base import compress_indices, register_executor


@register_executor
class SlurmExecutor(ArrayExecutor):
    name = "slurm"
    tool = "Slurm"
    description = "Slurm job array (sbatch --array=IDX%K)"
    task_var = "SLURM_ARRAY_TASK_ID"
    submit_argv = ("sbatch", "--parsable")
    directive = "#SBATCH"

    def directives(self, job: ArrayJob, opts: ClusterOptions, max_concurrent: Optional[int],
                   threads: Optional[int]) -> list[str]:
        array = compress_indices(job.ids) + (f"%{max_concurrent}" if max_concurrent else "")
        own = [f"--job-name={job.name}", f"--chdir={Path.cwd()}", f"--output={job.directory / 'logs'}/%x-%A_%a.out",
               f"--array={array}"]
        if threads and not any(o.startswith(("--cpus-per-task", "-c")) for o in opts.options):
            own.append(f"--cpus-per-task={threads}")
        return own

    def job_id(self, stdout: str) -> str:
        return stdout.split(";", 1)[0].strip()
