"""Helpers shared by CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand

from cnnlab.utils.console import console, err_console, print_json

MLFLOW_DEFAULT = "default"  # bare --mlflow: a sqlite store beside the command's runs (see resolve_mlflow_uri)
_URI_PREFIXES = ("sqlite:", "file:", "http:", "https:", "databricks", "postgresql", "mysql", "mssql")


# One grammar: old spellings of renamed flags, per command, still accepted for one release with a line on stderr.
RENAMED_FLAGS: dict[str, dict[str, str]] = {
    "data list": {"--root": "--data-root"},
    "data info": {"--root": "--data-root", "-o": "--set", "--option": "--set"},
    "data download": {"--root": "--data-root", "-o": "--set", "--option": "--set"},
    "explain maps": {"-o": "--set", "--opt": "--set"},
    "explain compare": {"-o": "--set", "--opt": "--set"},
    "lds": {"--models": "--num-models", "--scores_file": "--scores"},
    "sweep run": {"--threads-per-worker": "--threads"},
}


def _command_path(ctx) -> str:
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(names))


def rename_flags(args: list[str], renames: dict[str, str], command: str) -> list[str]:
    """``args`` with each old flag spelling replaced by its new name (``--old=v`` too), saying so on stderr."""
    out: list[str] = []
    for a in args:
        if a == "--":
            out += args[len(out):]
            break
        flag, eq, value = a.partition("=")
        if flag in renames:
            new = renames[flag]
            err_console.print(f"warning: `cnnlab {command} {flag}` is deprecated and goes in the next release; "
                              f"use {new}", highlight=False, markup=False)
            a = f"{new}={value}" if eq else new
        out.append(a)
    return out


class CnnlabCommand(TyperCommand):
    """Every cnnlab command's parser: old flag spellings (``RENAMED_FLAGS``) mapped to the new ones, and
    ``--mlflow`` standing alone (-> a sqlite store under the run store) or taking a URI: ``--mlflow [URI]``.

    The word after a bare ``--mlflow`` is its URI only if it looks like one (``sqlite:///…``, ``http://…``,
    ``file:…``), so ``cnnlab train --mlflow train.epochs=3`` keeps its override.
    """

    def parse_args(self, ctx, args):
        command = _command_path(ctx)
        args = rename_flags(list(args), RENAMED_FLAGS.get(command, {}), command)
        for i, a in enumerate(args):
            if a == "--mlflow":
                nxt = args[i + 1] if i + 1 < len(args) else None
                if nxt is None or not (nxt == MLFLOW_DEFAULT or nxt.startswith(_URI_PREFIXES) or "://" in nxt):
                    args.insert(i + 1, MLFLOW_DEFAULT)
                break
        return super().parse_args(ctx, args)


def set_option(what: str = "key=value setting (repeatable), e.g. --set train.epochs=3") -> Any:
    """``--set key=value``: the one spelling of settings in every command (beside positional overrides)."""
    return typer.Option(None, "--set", help=what[:1].upper() + what[1:] + ".")


def run_out_option() -> Any:
    """``--out DIR``, the run directory of the commands that train one (train, magic, population train|es)."""
    return typer.Option(None, "--out", help="Run directory (default: runs/<name>-<timestamp>).")


def resume_option() -> Any:
    """``--resume``: continue the run in ``--out`` (checked by :func:`check_out`)."""
    return typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")


def progress_option() -> Any:
    """``--progress/--no-progress``: a bar on a terminal, plain lines in a log, or nothing."""
    return typer.Option(True, "--progress/--no-progress",
                        help="Show a progress bar (plain lines when stderr is not a terminal).")


def mlflow_option(where: str) -> Any:
    """The ``--mlflow [URI]`` option (bare or with a URI: CnnlabCommand parses it)."""
    return typer.Option(None, "--mlflow", metavar="[URI]",
                        help=f"Log to MLflow (tracking URI); bare --mlflow: sqlite:///{where}/mlflow.db "
                             "(artifacts in mlartifacts/ beside it; browse with `mlflow ui --backend-store-uri URI`).")


def resolve_mlflow_uri(uri: Optional[str], root: Path) -> Optional[str]:
    """``--mlflow``'s value as a tracking URI: bare means ``ROOT/mlflow.db`` under the run store, never the cwd."""
    if uri is None or uri != MLFLOW_DEFAULT:
        return uri
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db')}"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error (no traceback) and exit non-zero."""
    # brackets in messages are text; soft_wrap: one line however long its paths, so logs keep it greppable
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def check_attribution_executor_option(executor: Optional[str]) -> None:
    """Fail before any compute when ``--executor`` (lds, magic) names no engine attribution tasks run on."""
    if executor is None:
        return
    from cnnlab.experiments.attribution_jobs import check_attribution_executor

    try:
        check_attribution_executor(executor)
    except ValueError as e:
        fail(str(e))


def check_mlflow(uri: Optional[str]) -> None:
    """Fail before any compute when ``--mlflow`` is given but mlflow is not installed."""
    if uri is not None:
        from importlib.util import find_spec

        if find_spec("mlflow") is None:
            fail("--mlflow needs mlflow: pip install 'cnnlab[mlflow]'")


def log_to_mlflow(uri: Optional[str], run_dir: Path, experiment: str) -> Optional[str]:
    """After a command finished: record its run directory as one MLflow run (``--mlflow``); the run id."""
    if uri is None:
        return None
    from cnnlab.experiments.tracking import log_run_dir

    resolved = resolve_mlflow_uri(uri, Path(run_dir).parent) or uri
    run_id = log_run_dir(resolved, run_dir, experiment=experiment)
    err_console.print(f"logged to MLflow run {run_id} in {resolved}", highlight=False, markup=False)
    return run_id


def check_out(out: Optional[Path], resume: bool) -> None:
    """Refuse an --out that cannot be a run directory, and --resume on one that holds no run to continue."""
    if out is None:
        if resume:
            fail("--resume needs --out RUN_DIR (the run to continue)")
        return
    if str(out).strip() in ("", "."):
        fail(f"--out {str(out)!r}: give a run directory (an empty --out would train into the current folder)")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is an existing file, not a run directory")
    if resume and not ((out / "config.yaml").is_file() or (out / "checkpoints" / "last.pt").is_file()):
        fail(f"--resume: {out} holds no run to continue (no config.yaml or checkpoints/last.pt); "
             "leave out --resume to start a new run there")


def print_submission(sub: Any, record: dict[str, Any], json_out: bool, *, tasks: str, then: str) -> None:
    """What a job-array submission (``Submission``) wrote and did: ``record`` as JSON, or the job script, how it was
    (or is to be) submitted, and ``then``, what to run once its ``tasks`` finished."""
    if json_out:
        print_json(record)
        return
    lines = [f"job script for {len(sub.indices)} {tasks} task(s): {sub.script}",
             f"submitted with {' '.join(sub.command)}: job {sub.job_id}" if sub.submitted
             else f"dry run; submit with: {' '.join(sub.command)}", then]
    for line in lines:
        console.print(line, highlight=False, markup=False)
