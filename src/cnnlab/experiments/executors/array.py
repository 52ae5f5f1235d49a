"""What every job-array scheduler shares: its options (:class:`ClusterOptions`), an :class:`ArrayJob` (task
command + task ids), the script (header of directives, set-up, threads, index lookup), writing it, calling the
submit tool, and :class:`ArrayExecutor`.

A new array engine is one module: subclass ``ArrayExecutor``, set ``name`` / ``tool`` / ``task_var`` /
``submit_argv`` / ``directive``, write ``directives`` (the scheduler's own options) and ``job_id``, and
register it (its options model is :class:`ClusterOptions` unless it needs more).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from pydantic import Field

from cnnlab.engine.config import StrictModel
from cnnlab.experiments.executors.base import (Executor, SubmitRequest, Submission, job_name, shell_join, submit_dir,
                                               task_command)
from cnnlab.experiments.sweep import Sweep


class ClusterOptions(StrictModel):
    """Job-array options from the sweep file's ``executors:`` section (``sge:``, ``slurm:``, ...)."""

    options: list[str] = Field(default_factory=list, description="raw scheduler options, e.g. '-l h_vmem=8G' or '--mem=8G'")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the task, e.g. 'module load cuda'")
    threads: Optional[int] = Field(None, ge=1, description="torch/OpenMP threads per task")
    max_concurrent: Optional[int] = Field(None, ge=1, description="tasks running at once (-tc / %K)")
    python: Optional[str] = Field(None, description="interpreter for the task command (default: this one)")


@dataclass
class ArrayJob:
    """One job array: task ``t`` runs ``command --index ids[t]`` (ids are what the command calls indices).

    ``contiguous``: the ids are 1..N of the whole thing (task id = index, no lookup table needed)."""

    name: str
    what: str  # e.g. "cnnlab sweep tiny" (a comment line in the script)
    command: list[str]
    ids: list[int]
    directory: Path  # scripts here, scheduler logs in directory/logs
    contiguous: bool = False


def sweep_job(sweep: Sweep, request: SubmitRequest, python: Optional[str]) -> ArrayJob:
    ids = [r.index for r in request.runs]
    return ArrayJob(job_name(sweep), f"cnnlab sweep {sweep.name}", task_command(sweep, request, python), ids,
                    submit_dir(sweep), contiguous=ids == list(range(1, len(sweep) + 1)))


def task_body(cmd: list[str], table: Optional[list[int]], task_var: str, opts: ClusterOptions, threads: Optional[int]) -> list[str]:
    """Shell lines of every array script: set-up, thread counts, the index, the task command.

    ``table=None``: the array task id is the index. Otherwise task t runs index ``table[t-1]`` (SGE arrays are
    ranges, not lists, so a subset needs the table).
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


def write_script(directory: Path, prefix: str, text: str) -> Path:
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**6:06d}.sh"
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


class ArrayExecutor(Executor):
    """A scheduler of job arrays. Subclasses set ``name``, ``tool`` (display name), ``task_var`` (the array task id
    variable), ``submit_argv``, ``directive`` (the script prefix of scheduler options, e.g. ``#SBATCH``) and
    ``uses_table`` (array ids are ranges: subsets need a lookup table), and implement ``directives`` and ``job_id``
    (or ``header`` whole)."""

    tool: ClassVar[str] = ""
    task_var: ClassVar[str] = ""
    submit_argv: ClassVar[tuple[str, ...]] = ()
    directive: ClassVar[str] = ""
    uses_table: ClassVar[bool] = False
    options_model = ClusterOptions

    def directives(self, job: ArrayJob, opts: ClusterOptions, max_concurrent: Optional[int],
                   threads: Optional[int]) -> list[str]:
        """The scheduler's own options for this job (name, working directory, logs, array range), unprefixed."""
        raise NotImplementedError

    def summary(self, job: ArrayJob) -> str:
        """The script's comment line: what runs, in how many tasks."""
        return f"{job.what}: {len(job.ids)} tasks"

    def header(self, job: ArrayJob, opts: ClusterOptions, max_concurrent: Optional[int], threads: Optional[int]) -> list[str]:
        """``#!/bin/bash``, the directives, the user's raw ``options`` (after ours, so they win), a comment."""
        own = self.directives(job, opts, max_concurrent, threads)
        return (["#!/bin/bash"] + [f"{self.directive} {d}" for d in own + list(opts.options)]
                + [f"# {self.summary(job)}"])

    def job_id(self, stdout: str) -> str:
        raise NotImplementedError

    def script(self, job: ArrayJob, opts: ClusterOptions, request: SubmitRequest) -> str:
        k = request.max_concurrent or opts.max_concurrent
        threads = request.threads or opts.threads
        table = None if job.contiguous or not self.uses_table else job.ids
        head = self.header(job, opts, k, threads)
        body = task_body(job.command, table, self.task_var, opts, threads)
        return "\n".join(head + body) + "\n"

    def submit_job(self, job: ArrayJob, opts: ClusterOptions, request: SubmitRequest) -> Submission:
        """Write the job script; submit it unless ``request.dry_run``."""
        if not job.ids:
            return Submission(self.name, [])
        path = write_script(job.directory, self.name, self.script(job, opts, request))
        command = [*self.submit_argv, str(path)]
        sub = Submission(self.name, list(job.ids), script=path, command=command)
        if not request.dry_run:
            sub.job_id = self.job_id(run_submit(command, self.tool))
            sub.submitted = True
        return sub

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        opts: ClusterOptions = self.options(sweep)
        threads = request.threads or opts.threads
        req = SubmitRequest(**{**request.__dict__, "threads": threads})
        return self.submit_job(sweep_job(sweep, req, opts.python), opts, req)
