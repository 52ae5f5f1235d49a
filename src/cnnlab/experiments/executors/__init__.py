"""Executors decide only *where* runs execute; every one ends in ``runner.run_one`` on a claimed run.

One module per executor, each registering its class (and options model) in ``EXECUTORS``: ``local`` (worker
processes), ``sge`` and ``slurm`` (job-array scripts on the ``array`` base), ``ray``. Every module of this
package is imported here, so a new executor is one new file; an executor of your own registers with
``@register_executor`` wherever it is defined.
"""

from __future__ import annotations

import importlib
import pkgutil

from cnnlab.experiments.executors.base import (
    EXECUTORS,
    Executor,
    SubmitRequest,
    Submission,
    describe_executors,
    get_executor,
    list_executors,
    register_executor,
    todo_runs,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # each executor module registers itself

from cnnlab.experiments.executors.local import run_local  # noqa: E402

__all__ = ["EXECUTORS", "Executor", "SubmitRequest", "Submission", "describe_executors", "get_executor",
           "list_executors", "register_executor", "run_local", "todo_runs"]
