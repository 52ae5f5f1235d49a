"""``cnnlab models list | info``: browse the model zoo."""

from __future__ import annotations

from typing import Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import print_json, print_table

app = typer.Typer(help="Browse the model zoo.", no_args_is_help=True)


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="Shell-style pattern, e.g. 'resnet*'."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List registered models with family and parameter count at 10 classes."""
    from cnnlab.models import create_model, list_models, model_family, model_info
    from cnnlab.models.registry import get_entry, meta_device

    rows = []
    for name in list_models(pattern):
        with meta_device():
            params = model_info(create_model(name)).total_params
        rows.append({"name": name, "family": model_family(name), "params": params, "description": get_entry(name).description})
    if json_out:
        print_json(rows)
    else:
        print_table(f"{len(rows)} models", ["name", "family", "params (10 classes)", "description"],
                    [(r["name"], r["family"], r["params"], r["description"]) for r in rows])


@app.command("info")
def info_cmd(
    name: str,
    num_classes: int = typer.Option(10, "--num-classes", help="Classes of the model's head."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="Input channels (default: the model's, 3 for most)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input size; default: 32, or the family minimum."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Parameters, size and output shape of one model (built on the meta device: instant even for VGG)."""
    from cnnlab.models import UnknownModelError, create_model, model_family, model_info, output_shape
    from cnnlab.models.registry import get_entry, meta_device

    try:
        entry = get_entry(name)
        in_channels = entry.in_channels if in_channels is None else in_channels
        with meta_device():
            model = create_model(name, num_classes=num_classes, in_channels=in_channels)
    except (UnknownModelError, ValueError) as e:
        fail(str(e))
    res = resolution or max(32, entry.min_resolution)
    if res < entry.min_resolution:
        fail(f"--resolution {res} is below the minimum {entry.min_resolution} for {name!r}")
    info = model_info(model)
    out = {
        "name": name,
        "family": model_family(name),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "resolution": res,
        "total_params": info.total_params,
        "trainable_params": info.trainable_params,
        "size_mb": round(info.size_mb, 3),
        "output_shape": list(output_shape(model, in_channels, res)),
        "min_resolution": entry.min_resolution,
    }
    if json_out:
        print_json(out)
    else:
        print_table(name, ["field", "value"], list(out.items()))
