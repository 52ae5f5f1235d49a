"""SGE (Grid Engine) job arrays: ``#$ -t 1-N`` / ``-tc K``; task t runs ``... --index`` of entry t (``$SGE_TASK_ID``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cnnlab.experiments.executors.array import ArrayExecutor, ArrayJob, ClusterOptions
from cnnlab.experiments.executors.base import register_executor


@register_executor
class SGEExecutor(ArrayExecutor):
    name = "sge"
    tool = "SGE"
    description = "Grid Engine job array (qsub -t 1-N -tc K)"
    task_var = "SGE_TASK_ID"
    submit_argv = ("qsub", "-terse")
    directive = "#$"
    uses_table = True  # SGE arrays are ranges, not lists

    def directives(self, job: ArrayJob, opts: ClusterOptions, max_concurrent: Optional[int],
                   threads: Optional[int]) -> list[str]:
        own = [f"-N {job.name}", "-S /bin/bash", f"-wd {Path.cwd()}", f"-o {job.directory / 'logs'}", "-j y",
               f"-t 1-{len(job.ids)}"]
        return own + ([f"-tc {max_concurrent}"] if max_concurrent else [])

    def summary(self, job: ArrayJob) -> str:
        return f"{super().summary(job)} -> indices {job.ids[0]}..{job.ids[-1]}"

    def job_id(self, stdout: str) -> str:
        return stdout.split(".", 1)[0].strip()
