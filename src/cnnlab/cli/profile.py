"""``cnnlab profile``: parameters, FLOPs, latency, throughput and peak memory per model × resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json, print_table


def profile_cmd(
    models: str = typer.Option(..., "--models", help="Shell patterns, comma-separated, e.g. 'resnet*,tiny_cnn'."),
    resolutions: str = typer.Option("32", "--resolutions", help="Comma-separated input sizes, e.g. 64,128,224."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Throughput batch (latency is also taken at batch 1)."),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto."),
    in_channels: int = typer.Option(3, "--in-channels", min=1, help="Input channels of the profiled models."),
    num_classes: int = typer.Option(10, "--num-classes", min=1, help="Classes of the profiled models' heads."),
    out: Path = typer.Option(Path("profiles"), "--out", help="Folder for {model}/{resolution}.json, CSV, JSON and plots."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory (CPU: two subprocesses per entry)."),
    min_run_time: float = typer.Option(0.5, "--min-run-time", help="Seconds per latency measurement."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: torch's)."),
    force: bool = typer.Option(False, "--force", help="Re-measure entries already stored with the same settings."),
    json_out: bool = typer.Option(False, "--json", help="Print the table rows as JSON."),
) -> None:
    """Profile models at several resolutions; entries are stored per {model}/{resolution} and reused."""
    import torch

    from cnnlab.models import UnknownModelError
    from cnnlab.profile.runner import ProfileSettings, export, plot_families, run_profile, select_models, table_row

    try:
        try:
            res = sorted({int(r) for r in resolutions.split(",") if r.strip()})
        except ValueError:
            raise ValueError(f"--resolutions must be comma-separated integers, got {resolutions!r}") from None
        if not res or min(res) < 1:
            raise ValueError(f"--resolutions must hold sizes >= 1, got {resolutions!r}")
        names = select_models(models)
        if not names:
            raise ValueError(f"--models {models!r} matches no registered model; see `cnnlab models list`")
        settings = ProfileSettings(batch_size=batch_size, device=device, in_channels=in_channels,
                                   num_classes=num_classes, memory=memory, min_run_time=min_run_time, threads=threads)
        settings.resolved_device()
        if threads:
            torch.set_num_threads(threads)

        def progress(e: dict) -> None:
            if not json_out:
                console.print(f"[dim]{e['model']} @ {e['resolution']}px{' (stored)' if e.get('cached') else ''}[/]")

        entries, skipped = run_profile(names, res, out, settings, force=force, on_entry=progress)
        if not entries:
            raise ValueError("nothing to profile: " + "; ".join(f"{s['model']} @ {s['resolution']}: {s['reason']}" for s in skipped))
        files = export(entries, out)
        files["plots"] = plot_families(entries, out)  # type: ignore[assignment]
    except (ValueError, RuntimeError, UnknownModelError) as e:
        fail(str(e))
    rows = [table_row(e) for e in entries]
    if json_out:
        print_json({"rows": rows, "skipped": skipped, "files": files})
        return
    def mib(v):
        return "-" if v is None else f"{v:.0f}"

    print_table(f"profile on {rows[0]['device']}: GFLOPs per image, latency at batch 1 (median ± IQR), "
                f"throughput at batch {batch_size}",
                ["model", "res", "params", "GFLOPs fwd / +bwd", "ms b1", "img/s infer / train", "MiB infer / train"],
                [(r["model"], r["resolution"], r["params"], f"{r['gflops_fwd']:.3g} / {r['gflops_fwd_bwd']:.3g}",
                  f"{r['latency_b1_ms']:.3g} ± {r['latency_b1_iqr_ms']:.2g}",
                  f"{r['throughput_img_s']:,.0f} / {r['train_img_s']:,.0f}",
                  f"{mib(r['peak_mem_fwd_mib'])} / {mib(r['peak_mem_train_mib'])}") for r in rows])
    for s in skipped:
        console.print(f"[yellow]skipped[/] {s['model']} @ {s['resolution']}px: {s['reason']}")
    console.print(f"table: {files['csv']}")
