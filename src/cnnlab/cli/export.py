"""``cnnlab export RUN``: write a finished run's model as a state_dict, a torch.export program or ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json, print_table


def export_cmd(
    run: Path = typer.Argument(..., help="A finished run directory (cnnlab train)."),
    fmt: str = typer.Option("exported", "--format", help="state_dict | exported (torch.export, .pt2) | onnx (needs cnnlab[onnx])."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: RUN/export/model.{pt,pt2,onnx})."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last | best | a file name in RUN/checkpoints/."),
    batch: int = typer.Option(8, "--batch", min=2, help="Test images the written file is checked on (outputs must match the model's)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Export the trained model; the written file is loaded back and must reproduce the model's outputs on a test batch."""
    from cnnlab.engine.config import ConfigError
    from cnnlab.engine.export import FORMATS, SUFFIX, ExportError, export_model
    from cnnlab.engine.run import load_run

    if fmt not in FORMATS:
        fail(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not run.is_dir():
        fail(f"run directory {str(run)!r} does not exist")
    path = out if out is not None else run / "export" / f"model{SUFFIX[fmt]}"
    if path.is_dir():
        fail(f"--out {str(path)!r} is a directory; give a file name")
    try:
        loaded = load_run(run, checkpoint=checkpoint, device="cpu")
        n = min(batch, len(loaded.dataset.test))
        if n < 2:
            fail(f"the run's test split has {len(loaded.dataset.test)} image(s); the check needs at least 2")
        report = export_model(loaded.model, loaded.eval_inputs("test", 0, n), fmt, path)
    except (ConfigError, ExportError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if json_out:
        print_json(report.to_dict())
        return
    print_table(f"exported {run} as {fmt}", ["", "value"], [
        ("file", report.path), ("size MiB", f"{report.bytes / 2**20:.2f}"),
        ("checked on", "x".join(map(str, report.batch_shape))),
        ("max |difference|", f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:.3g})")])
    console.print(f"load it with: {_how_to_load(fmt, report.path)}", highlight=False, markup=False)


def _how_to_load(fmt: str, path: str) -> str:
    if fmt == "state_dict":
        return f"model.load_state_dict(torch.load({path!r}, weights_only=True))"
    if fmt == "exported":
        return f"torch.export.load({path!r}).module()"
    return f"onnxruntime.InferenceSession({path!r})"
