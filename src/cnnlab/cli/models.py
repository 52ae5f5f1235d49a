"""``cnnlab models list | info``: browse the model zoo."""

from __future__ import annotations

from typing import Any, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import print_json, print_table

app = typer.Typer(help="Browse the model zoo.", no_args_is_help=True)


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="Shell-style pattern, e.g. 'resnet*'."),
    aliases: bool = typer.Option(False, "--aliases", help="Also list the seeds' names (construct_rn9, resnet18_224, ...)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List registered models with family and parameter count at 10 classes."""
    from cnnlab.models import create_model, list_models, model_family, model_info
    from cnnlab.models.registry import get_entry, meta_device

    rows = []
    for name in list_models(pattern, aliases=aliases):
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
    """Parameters, size, output shape and options (with defaults) of one model, built on the meta device
    (instant even for VGG). NAME may also be an alias, an import path 'pkg.mod:factory' or an entry point."""
    from cnnlab.models import UnknownModelError, create_model, model_family, model_info, model_options, output_shape
    from cnnlab.models.registry import get_entry, meta_device

    for flag, value in (("--num-classes", num_classes), ("--in-channels", in_channels), ("--resolution", resolution)):
        if value is not None and value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    try:
        entry = get_entry(name)
        in_channels = entry.in_channels if in_channels is None else in_channels
        with meta_device():
            model = create_model(name, num_classes=num_classes, in_channels=in_channels)
        options = model_options(name)
    except (UnknownModelError, ValueError, TypeError) as e:
        fail(str(e))
    in_channels = in_channels or 3  # a user factory that takes no in_channels: probe with RGB
    res = resolution or entry.resolution or max(32, entry.min_resolution)
    if res < entry.min_resolution:
        fail(f"--resolution {res} is below the minimum {entry.min_resolution} for {name!r}")
    if entry.max_resolution and res > entry.max_resolution:
        fail(f"--resolution {res} is above the maximum {entry.max_resolution} for {name!r}")
    info = model_info(model)
    option_rows = {k: {"type": t, "default": list(d) if isinstance(d, tuple) else d} for k, (t, d) in options.items()}
    out: dict[str, Any] = {
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
        "max_resolution": entry.max_resolution,
        "alias_of": entry.alias_of,
        "options": option_rows,
    }
    if json_out:
        print_json(out)
    else:
        rows = [(k, v) for k, v in out.items() if k != "options" and v is not None]
        rows += [(f"option {k}", f"{o['default']!r} ({o['type']})") for k, o in option_rows.items()]
        print_table(name, ["field", "value"], rows)
