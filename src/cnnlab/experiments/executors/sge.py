"""SGE (Grid Engine) job arrays: ``#$ -t 1-N`` / ``-tc K``; each task runs ``cnnlab sweep run-one --index $SGE_TASK_ID``."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from cnnlab.experiments.executors.base import (
    Executor,
    SubmitRequest,
    Submission,
    job_name,
    register_executor,
    shell_join,
    submit_dir,
    task_command,
)
from cnnlab.experiments.spec import ClusterOptions
from cnnlab.experiments.sweep import Sweep


def task_body(cmd: list[str], table: Optional[list[int]], task_var: str, opts: ClusterOptions, threads: Optional[int]) -> list[str]:
    """Shell lines shared by the SGE and Slurm scripts: set-up, thread counts, the index, the task command.

    ``table=None``: the array task id is the sweep index. Otherwise task t runs sweep index ``table[t-1]``
    (SGE arrays are ranges, not lists, so a subset of a sweep needs the table).
    """
    lines = ["set -eo pipefail"]
    lines += list(opts.setup)
    if threads:
        lines += [f"export OMP_NUM_THREADS={threads}", f"export MKL_NUM_THREADS={threads}"]
    lines.append(f': "${{{task_var}:?is not set: submit this script as a job array (or set {task_var}=N to run task N)}}"')
    if table is None:
        lines.append(f'exec {shell_join(cmd)} --index "${task_var}"')
    else:
        entries = " ".join(["0"] + [str(i) for i in table])  # entry 0 unused: task ids are 1-based
        lines.append(f"INDICES=({entries})")
        lines.append(f'exec {shell_join(cmd)} --index "${{INDICES[${task_var}]}}"')
    return lines


def write_script(sweep: Sweep, prefix: str, text: str) -> Path:
    path = submit_dir(sweep) / f"{prefix}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**6:06d}.sh"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def run_submit(argv: list[str], tool: str) -> str:
    """Run qsub/sbatch and return its stdout; a clear error if the tool is missing or refuses."""
    if shutil.which(argv[0]) is None:
        raise RuntimeError(f"{argv[0]} not found on PATH: this machine cannot submit to {tool}; "
                           "use --dry-run to only write the job script")
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shell_join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def sge_script(sweep: Sweep, request: SubmitRequest, indices: list[int]) -> str:
    opts = sweep.spec.executors.sge
    logs = submit_dir(sweep) / "logs"
    k = request.max_concurrent or opts.max_concurrent
    threads = request.threads or opts.threads
    req = SubmitRequest(**{**request.__dict__, "threads": threads})
    head = ["#!/bin/bash", f"#$ -N {job_name(sweep)}", "#$ -S /bin/bash", f"#$ -wd {Path.cwd()}",
            f"#$ -o {logs}", "#$ -j y", f"#$ -t 1-{len(indices)}"]
    if k:
        head.append(f"#$ -tc {k}")
    head += [f"#$ {o}" for o in opts.options]
    head.append(f"# cnnlab sweep {sweep.name}: {len(indices)} tasks -> sweep indices {indices[0]}..{indices[-1]}")
    table = None if indices == list(range(1, len(sweep) + 1)) else indices
    body = task_body(task_command(sweep, req, opts.python), table, "SGE_TASK_ID", opts, threads)
    return "\n".join(head + body) + "\n"


@register_executor
class SGEExecutor(Executor):
    name = "sge"
    description = "Grid Engine job array (qsub -t 1-N -tc K)"

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        indices = [r.index for r in request.runs]
        if not indices:
            return Submission(self.name, [])
        path = write_script(sweep, "sge", sge_script(sweep, request, indices))
        sub = Submission(self.name, indices, script=path, command=["qsub", "-terse", str(path)])
        if not request.dry_run:
            out = run_submit(sub.command, "SGE")
            sub.job_id = out.split(".", 1)[0].strip()
            sub.submitted = True
        return sub
