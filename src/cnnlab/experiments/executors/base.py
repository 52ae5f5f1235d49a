"""The executor base and registry, and what all executors share: the request, the submission record, the task command."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from pydantic import BaseModel

from cnnlab.experiments.sweep import Sweep, SweepRun
from cnnlab.utils.registry import Registry


@dataclass
class SubmitRequest:
    """What to execute and how. ``runs``: the runs to hand out (normally ``todo_runs``)."""

    runs: list[SweepRun]
    retry_failed: bool = False
    rerun_stale: bool = False
    mlflow_uri: Optional[str] = None
    max_concurrent: Optional[int] = None
    dry_run: bool = False
    workers: Optional[int] = None
    threads: Optional[int] = None
    address: Optional[str] = None
    on_outcome: Optional[Callable[[Any], None]] = None


@dataclass
class Submission:
    """What an executor did: a finished local/Ray execution (outcomes) or a written/submitted job script."""

    executor: str
    indices: list[int]
    script: Optional[Path] = None
    command: Optional[list[str]] = None
    job_id: Optional[str] = None
    submitted: bool = False
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["script"] = str(self.script) if self.script else None
        return d


class Executor:
    """Where runs execute. Subclasses must provide:

    - ``name``: the executor's name (``--executor NAME``, the key of its section under the sweep file's
      ``executors:``), and a one-line ``description``;
    - ``options_model``: a pydantic model of that section's options (every field with a default);
    - ``submit(sweep, request)``: execute or hand out ``request.runs`` and say what was done.

    Set ``waits = True`` where ``submit`` returns only when the runs finished (with their outcomes), as the
    local and Ray executors do, rather than when a job was queued. Register with ``@register_executor``: that
    one module is the whole executor (the CLI, sweep-file validation and ``cnnlab sweep executors`` read the
    registry).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options_model: ClassVar[type[BaseModel]] = BaseModel
    waits: ClassVar[bool] = False

    def options(self, sweep: Optional[Sweep]) -> Any:
        """This executor's options from the sweep file's ``executors:`` section (the model's defaults where
        there are none)."""
        found = sweep.spec.executors.given.get(self.name) if sweep is not None else None
        return found if found is not None else self.options_model()

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        raise NotImplementedError


EXECUTORS: Registry[type[Executor]] = Registry(
    "executor", error=ValueError, hint="`cnnlab sweep executors` lists them with their options.")


def register_executor(cls: type[Executor]) -> type[Executor]:
    """Class decorator: register an :class:`Executor` subclass under its ``name`` (a taken name is refused)."""
    return EXECUTORS.register(cls.name, cls)


def get_executor(name: str) -> Executor:
    """An instance of the executor registered as ``name``; an unknown name is a ValueError naming the closest."""
    return EXECUTORS.get(name)()


def list_executors() -> list[str]:
    return sorted(EXECUTORS.names())


def describe_executors() -> list[dict[str, Any]]:
    """Name, description and options (type, default, description) of every registered executor."""
    out = []
    for name in list_executors():
        cls = EXECUTORS.get(name)
        options = {}
        for key, f in cls.options_model.model_fields.items():
            default = f.get_default(call_default_factory=True)
            options[key] = {"type": _type_name(f.annotation), "default": default, "description": f.description or ""}
        out.append({"name": name, "description": cls.description, "options": options})
    return out


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def todo_runs(sweep: Sweep, *, retry_failed: bool = False, rerun_stale: bool = False,
              runs: Optional[list[SweepRun]] = None) -> list[SweepRun]:
    """Runs still to execute: pending (incl. interrupted) ones, plus failed / stale ones when asked."""
    wanted = {"pending"} | ({"failed"} if retry_failed else set()) | ({"stale"} if rerun_stale else set())
    return [r for r in (sweep.runs() if runs is None else runs) if r.state().status in wanted]


def task_command(sweep: Sweep, request: SubmitRequest, python: Optional[str] = None) -> list[str]:
    """The ``cnnlab sweep run-one`` command of a cluster task, without ``--index`` (absolute paths throughout)."""
    cmd = [python or sys.executable, "-m", "cnnlab", "sweep", "run-one", str(sweep.path.resolve()),
           "--root", str(sweep.root.resolve())]
    for item in sweep.set_overrides:
        cmd += ["--set", item]
    if request.retry_failed:
        cmd.append("--retry-failed")
    if request.rerun_stale:
        cmd.append("--rerun-stale")
    if request.mlflow_uri:
        cmd += ["--mlflow", request.mlflow_uri]
    if request.threads:
        cmd += ["--threads", str(request.threads)]
    return cmd


def shell_join(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def compress_indices(indices: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1-3,5,7-8" (Slurm --array syntax)."""
    out: list[str] = []
    idx = sorted(indices)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(out)


def submit_dir(sweep: Sweep) -> Path:
    """Where job scripts and scheduler logs go: ``ROOT/_submit`` (logs in ``ROOT/_submit/logs``)."""
    d = sweep.root.resolve() / "_submit"
    (d / "logs").mkdir(parents=True, exist_ok=True)
    return d


def job_name(sweep: Sweep) -> str:
    """A scheduler-safe job name (letters first, no spaces or slashes)."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", sweep.name) or "sweep"
    return name if name[0].isalpha() else f"s{name}"
