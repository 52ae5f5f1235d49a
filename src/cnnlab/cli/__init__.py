"""The ``cnnlab`` command. Each command group lives in its own module and is added here."""

from __future__ import annotations

import typer
from typer.core import TyperCommand

from cnnlab.cli.common import CnnlabCommand
from cnnlab.cli import data as _data
from cnnlab.cli import explain as _explain
from cnnlab.cli import export as _export
from cnnlab.cli import lds as _lds
from cnnlab.cli import magic as _magic
from cnnlab.cli import mi as _mi
from cnnlab.cli import models as _models
from cnnlab.cli import plot as _plot
from cnnlab.cli import population as _population
from cnnlab.cli import profile as _profile
from cnnlab.cli import report as _report
from cnnlab.cli import results as _results
from cnnlab.cli import runs as _runs
from cnnlab.cli import sweep as _sweep
from cnnlab.cli import train as _train

app = typer.Typer(
    name="cnnlab",
    help="Fast, reproducible, analysable experiments on convolutional image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _print_version(value: bool) -> None:
    if value:
        from cnnlab import __version__

        typer.echo(f"cnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print cnnlab's version and exit."),
) -> None:
    """Fast, reproducible, analysable experiments on convolutional image classifiers."""


app.add_typer(_models.app, name="models")
app.add_typer(_data.app, name="data")
app.command("train")(_train.train_cmd)
app.add_typer(_sweep.app, name="sweep")
app.command("results")(_results.results_cmd)
app.command("plot")(_plot.plot_cmd)
app.add_typer(_explain.app, name="explain")
app.command("mi")(_mi.mi_cmd)
app.command("profile")(_profile.profile_cmd)
app.command("magic")(_magic.magic_cmd)
app.command("lds")(_lds.lds_cmd)
app.add_typer(_runs.app, name="runs")
app.command("export")(_export.export_cmd)
app.command("report")(_report.report_cmd)
app.add_typer(_population.app, name="population")


def _use_cnnlab_parser(group: typer.Typer) -> None:
    """Every command parses with CnnlabCommand: old flag spellings, bare --mlflow (one grammar everywhere)."""
    for info in group.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = CnnlabCommand
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _use_cnnlab_parser(sub.typer_instance)


_use_cnnlab_parser(app)


def main() -> None:
    app()
