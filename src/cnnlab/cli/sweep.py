"""``cnnlab sweep plan | status | run | run-one | submit``: expand, inspect and execute sweep files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from cnnlab.cli.common import fail, mlflow_option, resolve_mlflow_uri
from cnnlab.utils.console import console, print_json, print_table

app = typer.Typer(help="Sweeps: grids of runs with a resumable run store and local/SGE/Slurm/Ray executors.",
                  no_args_is_help=True)

SetOpt = typer.Option(None, "--set", help="key=value applied to every run (e.g. train.epochs=50); repeatable.")
RootOpt = typer.Option(None, "--root", help="Run-store directory (default: the sweep's root:, else runs/<name>).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
MlflowOpt = mlflow_option("<run-store root>")
RetryOpt = typer.Option(False, "--retry-failed", help="Also run the runs that failed before.")
RerunStaleOpt = typer.Option(False, "--rerun-stale", help="Retrain runs whose stored config differs from this one "
                                                          "(their old results are deleted).")
IndicesOpt = typer.Option(None, "--indices", help="Only these runs, e.g. 1-8,12.")


def _executor_names(incomplete: str) -> list[str]:
    """Shell completion of --executor from the executor registry (imported only when completing)."""
    from cnnlab.experiments.executors import list_executors

    return [n for n in list_executors() if n.startswith(incomplete)]


def load_sweep(path: str, set_: Optional[List[str]], root: Optional[Path]):
    """Load and validate a sweep for a command, or exit with the error naming the bad key."""
    from cnnlab.engine.config import ConfigError
    from cnnlab.experiments.sweep import Sweep

    try:
        return Sweep.load(path, overrides=set_ or [], root=root)
    except ConfigError as e:
        fail(str(e))


def _start(path: str, set_: Optional[List[str]], root: Optional[Path]):
    """The sweep a training command works on, with SIGTERM (a scheduler's or ``kill``'s) turned into a clean stop
    that leaves the run in progress resumable."""
    from cnnlab.experiments.runner import exit_on_sigterm

    sweep = load_sweep(path, set_, root)
    exit_on_sigterm()
    return sweep


def _select(sweep, indices: Optional[str]):
    try:
        return sweep.select(indices)
    except (ValueError, IndexError) as e:
        fail(f"--indices: {e}")


@app.command("plan")
def plan_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP", help="Sweep YAML file."),
    set_: Optional[List[str]] = SetOpt,
    root: Optional[Path] = RootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Print the expanded runs (index, name, factors, overrides) without running anything."""
    sweep = load_sweep(sweep_file, set_, root)
    rows = sweep.plan()
    if json_out:
        print_json({"sweep": sweep.name, "root": str(sweep.root), "total": len(rows), "runs": rows})
        return
    names = [f.name for f in sweep.factors]
    print_table(f"{sweep.name}: {len(rows)} runs under {sweep.root}", ["index", "name", *names, "seed"],
                [(r["index"], r["name"], *(r["factors"][n] for n in names), r["seed"]) for r in rows])


@app.command("status")
def status_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP"),
    set_: Optional[List[str]] = SetOpt,
    root: Optional[Path] = RootOpt,
    all_runs: bool = typer.Option(False, "--all", help="List every run, not only those that are not done."),
    json_out: bool = JsonOpt,
) -> None:
    """Counts of done / running / failed / diverged / stale / pending runs, and the runs that are not done.

    A run is ``stale`` when its directory holds a run of another resolved config (e.g. another
    ``--set train.epochs=``): it is never counted as done; ``sweep run --rerun-stale`` retrains it."""
    sweep = load_sweep(sweep_file, set_, root)
    st = sweep.status()
    if json_out:
        print_json(st)
        return
    c = st["counts"]
    console.print(f"[bold]{st['sweep']}[/]: {st['total']} runs under {st['root']}  " +
                  "  ".join(f"{k} {v}" for k, v in c.items()), highlight=False, soft_wrap=True)
    shown = [r for r in st["runs"] if all_runs or r["status"] != "done"]
    if shown:
        print_table(None, ["index", "name", "status", "detail"],
                    [(r["index"], r["name"], r["status"], r["detail"]) for r in shown])


def _run_label(sweep, index: int) -> str:
    """A run as its path under the sweep's root (layout + name): run names alone repeat across the grid."""
    run = sweep.run(index)
    try:
        return str(run.run_dir.relative_to(sweep.root))
    except ValueError:
        return run.name


def _report(out, prefix: str = "", label: Optional[str] = None) -> None:
    m = out.metrics
    metric = f" test_acc {m['test_acc']:.4f}" if "test_acc" in m else ""
    err = f"  {out.error}" if out.error and out.status in ("failed", "stale") else ""
    console.print(f"{prefix}[{out.index}] {out.status:<8} {out.action:<8} {label or out.name}{metric} ({out.seconds:.1f} s){err}",
                  highlight=False, markup=False, soft_wrap=True)


class _Counter:
    """Prints each finished run as ``k/N`` with an ETA from the rate of the runs finished so far."""

    def __init__(self, total: int, sweep=None):
        import time

        self.total, self.done, self._t0, self._time = total, 0, time.perf_counter(), time.perf_counter
        self.sweep = sweep

    def __call__(self, out) -> None:
        from cnnlab.utils.progress import eta_seconds, format_duration

        if out.action in ("trained", "resumed", "refused") or out.action == "skipped" and out.status == "stale":
            self.done += 1
        elapsed = self._time() - self._t0
        eta = eta_seconds(self.done, self.total, elapsed)
        when = f", ETA {format_duration(eta)}" if eta is not None and self.done < self.total else ""
        _report(out, f"{min(self.done, self.total)}/{self.total} ({format_duration(elapsed)}{when}) ",
                _run_label(self.sweep, out.index) if self.sweep is not None else None)


def _stale_note(sweep, rerun_stale: bool) -> None:
    stale = [r for r in sweep.runs("stale")]
    if stale and not rerun_stale:
        console.print(f"{len(stale)} run(s) were trained under another config and are stale (e.g. run "
                      f"{stale[0].index}: {stale[0].state().detail}); they are not reused: --rerun-stale retrains them",
                      highlight=False, markup=False, soft_wrap=True)


def _finish(sweep, outcomes, json_out: bool, extra: Optional[dict] = None) -> None:
    st = sweep.status()
    failed_now = [o for o in outcomes if o.status == "failed" and o.action != "skipped"]
    if json_out:
        print_json({**(extra or {}), "outcomes": [o.to_dict() for o in outcomes], "counts": st["counts"],
                    "total": st["total"]})
    else:
        console.print(f"{sweep.name}: " + "  ".join(f"{k} {v}" for k, v in st["counts"].items()), highlight=False, soft_wrap=True)
    if failed_now:
        raise typer.Exit(1)


@app.command("run")
def run_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes (default: the sweep's executors.local.workers, else 1)."),
    threads_per_worker: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads per worker process (default: cores / workers)."),
    retry_failed: bool = RetryOpt,
    rerun_stale: bool = RerunStaleOpt,
    indices: Optional[str] = IndicesOpt,
    mlflow: Optional[str] = MlflowOpt,
    set_: Optional[List[str]] = SetOpt,
    root: Optional[Path] = RootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run the sweep's unfinished runs on this machine; interrupted runs resume from their last checkpoint."""
    from cnnlab.experiments.executors import run_local, todo_runs

    sweep = _start(sweep_file, set_, root)
    runs = todo_runs(sweep, retry_failed=retry_failed, rerun_stale=rerun_stale, runs=_select(sweep, indices))
    opts = sweep.spec.executors.local
    if not json_out:
        console.print(f"{sweep.name}: {len(runs)} of {len(sweep)} runs to do", highlight=False, soft_wrap=True)
        _stale_note(sweep, rerun_stale)
    try:
        outcomes = run_local(sweep, runs, workers=workers or opts.workers,
                             threads_per_worker=threads_per_worker or opts.threads_per_worker,
                             retry_failed=retry_failed, rerun_stale=rerun_stale, mlflow_uri=resolve_mlflow_uri(mlflow, sweep.root),
                             on_outcome=None if json_out else _Counter(len(runs), sweep))
    except ImportError as e:
        fail(str(e))
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or SIGTERM through exit_on_sigterm
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
        fail("interrupted: the runs in progress resume from their last checkpoint when you run the same command again",
             code=code)
    _finish(sweep, outcomes, json_out)


@app.command("run-one")
def run_one_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP"),
    index: int = typer.Option(..., "--index", help="1-based run index (a scheduler's array task id)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run it even if it failed before."),
    rerun_stale: bool = RerunStaleOpt,
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads for this run's process."),
    mlflow: Optional[str] = MlflowOpt,
    set_: Optional[List[str]] = SetOpt,
    root: Optional[Path] = RootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run one run of a sweep (what each cluster task executes). Exits 1 if the run failed."""
    from cnnlab.experiments.runner import run_one

    sweep = _start(sweep_file, set_, root)
    if not 1 <= index <= len(sweep):
        fail(f"--index {index} is out of range: the sweep {sweep.name!r} has runs 1..{len(sweep)}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        out = run_one(sweep, index, retry_failed=retry_failed, rerun_stale=rerun_stale, mlflow_uri=resolve_mlflow_uri(mlflow, sweep.root))
    except ImportError as e:
        fail(str(e))
    if json_out:
        print_json(out.to_dict())
    else:
        _report(out, label=_run_label(sweep, index))
    if out.status == "failed" and out.action != "skipped":
        raise typer.Exit(1)


@app.command("submit")
def submit_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP"),
    executor: str = typer.Option(..., "--executor", autocompletion=_executor_names,
                                 help="A registered executor, e.g. slurm (`cnnlab sweep executors` lists them and their options)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="Array tasks running at once (-tc K / %K)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the job script, do not submit it."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also submit the runs that failed before."),
    rerun_stale: bool = RerunStaleOpt,
    all_runs: bool = typer.Option(False, "--all", help="One task per run of the sweep (finished runs exit at once) "
                                  "instead of only the unfinished runs."),
    indices: Optional[str] = IndicesOpt,
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads per task / worker."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="local: worker processes; ray (local cluster): CPUs."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address ('auto', ray://host:port)."),
    mlflow: Optional[str] = MlflowOpt,
    set_: Optional[List[str]] = SetOpt,
    root: Optional[Path] = RootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Hand the unfinished runs to an executor: write (and qsub/sbatch) a job-array script, or run on Ray."""
    from cnnlab.experiments.executors import SubmitRequest, get_executor, todo_runs

    try:
        ex = get_executor(executor)
    except ValueError as e:
        fail(f"--executor: {e}")
    sweep = load_sweep(sweep_file, set_, root)
    selected = _select(sweep, indices)
    runs = selected if all_runs else todo_runs(sweep, retry_failed=retry_failed, rerun_stale=rerun_stale, runs=selected)
    if not json_out:
        _stale_note(sweep, rerun_stale)
    req = SubmitRequest(runs, retry_failed=retry_failed, rerun_stale=rerun_stale, mlflow_uri=resolve_mlflow_uri(mlflow, sweep.root), max_concurrent=max_concurrent,
                        dry_run=dry_run, workers=workers, threads=threads, address=address,
                        on_outcome=None if json_out else (lambda o: _report(o, label=_run_label(sweep, o.index))))
    if not runs:
        if json_out:
            print_json({"executor": executor, "indices": [], "submitted": False})
        else:
            console.print(f"{sweep.name}: nothing to submit (all selected runs are done, running or failed; "
                          "--retry-failed retries failures)", highlight=False, soft_wrap=True)
        return
    try:
        sub = ex.submit(sweep, req)
    except (RuntimeError, ImportError) as e:
        fail(str(e))
    if sub.outcomes or ex.waits and not dry_run:
        from cnnlab.experiments.runner import Outcome

        _finish(sweep, [Outcome(**o) for o in sub.outcomes], json_out, {"executor": executor, "indices": sub.indices})
        return
    if json_out:
        print_json(sub.to_dict())
        return
    if sub.script:
        console.print(f"job script for {len(sub.indices)} array task(s): {sub.script}", highlight=False, soft_wrap=True)
    if sub.submitted:
        console.print(f"submitted with {' '.join(sub.command or [])}: job {sub.job_id}", highlight=False, soft_wrap=True)
    elif sub.command:
        console.print(f"dry run; submit with: {' '.join(sub.command)}", highlight=False, soft_wrap=True)


@app.command("executors")
def executors_cmd(json_out: bool = JsonOpt) -> None:
    """List the registered executors and the options each takes under a sweep file's ``executors:`` section."""
    from cnnlab.experiments.executors import describe_executors

    rows = describe_executors()
    if json_out:
        print_json(rows)
        return
    print_table("executors (sweep submit --executor NAME; options under executors: NAME: in the sweep file)",
                ["name", "description", "options (default)"],
                [(r["name"], r["description"],
                  "; ".join(f"{k}: {o['type']} = {o['default']!r}" + (f" ({o['description']})" if o["description"] else "")
                            for k, o in r["options"].items()))
                 for r in rows])
