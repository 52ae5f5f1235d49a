"""``cnnlab mi RUN_DIR...``: first-layer masking + mutual information per run, and the table/plots across runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json, print_table


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{option}: no value given")
    return vals


def mi_cmd(
    paths: List[Path] = typer.Argument(..., help="Run directories, or folders holding run directories (found by result.json)."),
    keep: str = typer.Option("0.25,0.5,0.75", "--keep", help="Keep fractions of the first block's activations."),
    masks: int = typer.Option(10, "--masks", min=1, help="Seeded masks per keep fraction."),
    examples: int = typer.Option(2000, "--examples", min=1, help="Evaluation examples per split (capped by the split size)."),
    mask_seed: int = typer.Option(0, "--mask-seed", help="Seed of the masks (same seed + shape -> same masks in every run)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example subset and the bootstrap."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples for the intervals."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the intervals."),
    correction: str = typer.Option("miller-madow", "--correction", help="miller-madow | none."),
    gap_examples: Optional[int] = typer.Option(None, "--gap-examples", min=1,
                                               help="Examples per split for the accuracy gap (default: whole splits)."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="Evaluation batch size (does not change results)."),
    factors: Optional[str] = typer.Option(None, "--factors",
                                          help="Config keys to colour plots by (default: the keys that differ between runs)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the table and plots (default: <parent of the runs>/mi)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (default: each run's)."),
    force: bool = typer.Option(False, "--force", help="Recompute results already stored in RUN_DIR/analysis/mi.json."),
    json_out: bool = typer.Option(False, "--json", help="Print the table rows as JSON."),
) -> None:
    """MI(Y; Ŷ) in bits with and without masking the first conv block, vs the generalisation gap.

    Per run the result is stored in RUN_DIR/analysis/mi.json (reused unless --force); across runs a
    table (CSV, JSON) and one plot of MI drop vs generalisation gap per factor are written to --out.
    """
    from cnnlab.explain.runs import find_run_dirs, varying_factors
    from cnnlab.info.analysis import MIConfig
    from cnnlab.info.runs import compute_run_mi, summarize

    try:
        cfg = MIConfig(keeps=_floats(keep, "--keep"), n_masks=masks, n_examples=examples, mask_seed=mask_seed, seed=seed,
                       n_boot=bootstrap, confidence=confidence, correction=correction, batch_size=batch_size,
                       gap_examples=gap_examples)
        dirs = find_run_dirs(paths)
        reports = []
        for d in dirs:
            if not json_out:
                console.print(f"[dim]masking MI: {d}[/]")
            reports.append(compute_run_mi(d, cfg, force=force, device=device))
        configs = [_config_of(d) for d in dirs]
        chosen = [f.strip() for f in factors.split(",") if f.strip()] if factors else varying_factors(configs)
        from cnnlab.explain.runs import flatten

        flat = [flatten(c) for c in configs]
        missing = [f for f in chosen if all(f not in fl for fl in flat)]
        if missing:
            raise ValueError(f"--factors: {', '.join(missing)} not found in the runs' configs "
                             f"(keys look like optim.lr, train.batch_size)")
        labels = _labels(dirs)
        entries = [(lab, {f: fl.get(f) for f in chosen}, rep) for lab, fl, rep in zip(labels, flat, reports)]
        plot_by = chosen or ["run"]
        if not chosen:
            entries = [(lab, {"run": lab}, rep) for lab, _, rep in entries]
        dest = out or Path(os.path.commonpath([str(d.resolve()) for d in dirs])) / "mi"
        summary = summarize(entries, plot_by, dest)
    except (FileNotFoundError, ValueError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    if json_out:
        print_json(summary)
        return
    cached = sum(1 for r in reports if r.get("cached"))
    print_table(f"masking MI (bits, Miller-Madow; {cfg.n_masks} masks; {len(dirs)} runs, {cached} from stored results)",
                ["run", *chosen, "split", "keep", "MI", "MI drop", "CI low", "CI high", "acc drop", "gen gap"],
                [(r["run"], *[r.get(f) for f in chosen], r["split"], r["keep"], r["mi_unmasked"], r["mi_diff"],
                  r["mi_diff_low"], r["mi_diff_high"], r["acc_drop"], r["gen_gap"]) for r in summary["rows"]])
    console.print(f"table: {summary['files']['csv']}")
    for f, p in summary["files"]["plots"].items():
        console.print(f"plot ({f}): {p}")


def _config_of(run_dir: Path) -> dict:
    import yaml

    p = run_dir / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml")
    return yaml.safe_load(p.read_text(encoding="utf-8")) or {}


def _labels(dirs: list[Path]) -> list[str]:
    """Run labels: folder names, or paths relative to the common parent where names repeat."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    return [str(d.resolve().relative_to(root)) for d in dirs]
