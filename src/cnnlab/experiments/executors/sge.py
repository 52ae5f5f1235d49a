"""SGE (Grid Engine) job arrays: ``#$ -t 1-N`` / ``-tc K``; task t runs ``... --index`` of entry t (``$SGE_TASK_ID``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cnnlab.experiments.executors.array import ArrayExecutor, ArrayJob
from cnnlab.experiments.executors.base import register_executor
from cnnlab.experiments.spec import ClusterOptions


@register_executor
class SGEExecutor(ArrayExecutor):
    name = "sge"
    tool = "SGE"
    description = "Grid Engine job array (qsub -t 1-N -tc K)"
    task_var = "SGE_TASK_ID"
    submit_argv = ("qsub", "-terse")
    uses_table = True  # SGE arrays are ranges, not lists

    def header(self, job: ArrayJob, opts: ClusterOptions, max_concurrent: Optional[int], threads: Optional[int]) -> list[str]:
        head = ["#!/bin/bash", f"#$ -N {job.name}", "#$ -S /bin/bash", f"#$ -wd {Path.cwd()}",
                f"#$ -o {job.directory / 'logs'}", "#$ -j y", f"#$ -t 1-{len(job.ids)}"]
        if max_concurrent:
            head.append(f"#$ -tc {max_concurrent}")
        head += [f"#$ {o}" for o in opts.options]
        head.append(f"# {job.what}: {len(job.ids)} tasks -> indices {job.ids[0]}..{job.ids[-1]}")
        return head

    def job_id(self, stdout: str) -> str:
        return stdout.split(".", 1)[0].strip()
