"""Executors decide only *where* runs execute; every one ends in ``runner.run_one`` on a claimed run.

A small registry: ``local`` (worker processes), ``sge`` and ``slurm`` (job-array scripts), ``ray``.
"""

from __future__ import annotations

from cnnlab.experiments.executors.base import (
    EXECUTORS,
    Executor,
    SubmitRequest,
    Submission,
    get_executor,
    list_executors,
    register_executor,
    todo_runs,
)
from cnnlab.experiments.executors import local, ray_exec, sge, slurm  # noqa: F401,E402  (register)
from cnnlab.experiments.executors.local import run_local  # noqa: E402

__all__ = ["EXECUTORS", "Executor", "SubmitRequest", "Submission", "get_executor", "list_executors",
           "register_executor", "run_local", "todo_runs"]
