"""The ``cnnlab`` command. Each command group lives in its own module and is added here."""

from __future__ import annotations

import typer

from cnnlab.cli import models as _models
from cnnlab.cli import train as _train

app = typer.Typer(
    name="cnnlab",
    help="Fast, reproducible, analysable experiments on convolutional image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(_models.app, name="models")
app.command("train")(_train.train_cmd)


def main() -> None:
    app()
