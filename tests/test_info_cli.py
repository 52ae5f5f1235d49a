"""``cnnlab mi`` over real (tiny) run directories: stored per-run results, caching, table and plots."""

import json

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.info.runs import compute_run_mi, load_run_mi, result_path, summarize
from cnnlab.info.analysis import MIConfig

runner = CliRunner()
ARGS = ["--keep", "0.5", "--masks", "2", "--examples", "120", "--bootstrap", "50", "--gap-examples", "150"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from cnnlab.engine.config import build_config
    from cnnlab.engine.run import train

    root = tmp_path_factory.mktemp("mi_runs")
    for lr in (0.05, 0.2):
        cfg = build_config({"name": f"lr{lr}", "optim": {"lr": lr}, "train": {"epochs": 1, "batch_size": 128, "device": "cpu"}})
        train(cfg, root / f"lr{lr}", progress=False)
    return root


def test_mi_cli_table_plots_and_stored_results(sweep):
    res = runner.invoke(app, ["mi", str(sweep), *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["factors"] == ["optim.lr"]  # the only config key that differs between the runs
    rows = out["rows"]
    assert len(rows) == 2 * 2  # runs x splits (one keep fraction)
    assert {r["optim.lr"] for r in rows} == {0.05, 0.2}
    for r in rows:
        assert r["mi_diff_low"] <= r["mi_diff"] <= r["mi_diff_high"]
        assert r["gen_gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["n_examples"] == 120
    assert (sweep / "mi" / "mi_diff_vs_gen_gap_optim.lr.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep / "mi" / "mi_summary.csv").read_text().startswith("run,split,keep,")
    stored = load_run_mi(sweep / "lr0.05")
    assert stored["config"]["n_masks"] == 2 and stored["units"] == "bits"


def test_mi_on_one_run_draws_no_one_point_scatter(sweep, tmp_path):
    res = runner.invoke(app, ["mi", str(sweep / "lr0.05"), *ARGS, "--out", str(tmp_path / "one"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["files"]["plots"] == {} and "two or more runs" in out["plot_note"]
    assert not list((tmp_path / "one").glob("*.png")) and (tmp_path / "one" / "mi_summary.csv").is_file()


def test_compute_run_mi_is_resumable(sweep):
    cfg = MIConfig(keeps=(0.5,), n_masks=2, n_examples=120, n_boot=50, gap_examples=150)
    run = sweep / "lr0.2"
    first = compute_run_mi(run, cfg)
    mtime = result_path(run).stat().st_mtime_ns
    again = compute_run_mi(run, cfg)
    assert again["cached"] and result_path(run).stat().st_mtime_ns == mtime
    assert again["splits"] == first["splits"]
    forced = compute_run_mi(run, cfg, force=True)
    assert not forced["cached"] and forced["splits"] == first["splits"]  # deterministic recomputation
    other = compute_run_mi(run, MIConfig(**{**cfg.to_dict(), "keeps": (0.25,), "splits": ("test",), "gap_examples": 150}))
    assert not other["cached"] and other["config"]["keeps"] == [0.25] and other["accuracy"] == {}
    summary = summarize([("a", {"f": 1}, other)], ["f"], sweep / "only_test")
    assert summary["files"]["plots"] == {}  # no generalisation gap without both splits: no plot, no crash


def test_mi_cli_bad_inputs(sweep, tmp_path):
    for args, msg in [
        (["mi", str(sweep / "lr0.05"), "--keep", "0.5,1.0"], "keep fraction must be in (0, 1)"),
        (["mi", str(tmp_path)], "no result.json found"),
        (["mi", str(sweep), *ARGS, "--factors", "optim.nope"], "--factors: optim.nope not found"),
        (["mi", str(sweep), "--keep", "half"], "--keep must be comma-separated numbers"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert msg in " ".join(res.output.split()), (args, res.output)


def test_mi_cli_over_a_sweep_file(tmp_path):
    """`cnnlab mi SWEEP`: every finished run of the sweep, coloured by the sweep's own factors; unfinished runs skipped."""
    from cnnlab.experiments.runner import run_one
    from cnnlab.experiments.sweep import Sweep

    sweep_file = tmp_path / "abl.yaml"
    sweep_file.write_text(
        "name: abl\n"
        f"root: {tmp_path / 'store'}\n"
        "base: {data: {name: digits, subset: 256}, train: {epochs: 1, batch_size: 64, device: cpu}}\n"
        "grid:\n"
        "  wd: {key: optim.weight_decay, values: {wd: 5.0e-4, no_wd: 0.0}}\n"
        "  bn: {key: model.options.batchnorm, values: {bn: true, no_bn: false}}\n"
    )
    res = runner.invoke(app, ["mi", str(sweep_file), *ARGS])
    assert res.exit_code == 2 and "has no finished run" in " ".join(res.output.split()), res.output
    sweep = Sweep.load(sweep_file)
    for r in sweep.runs()[:3]:
        run_one(sweep, r.index)
    res = runner.invoke(app, ["mi", str(sweep_file), *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["factors"] == ["wd", "bn"]
    assert out["sweep"] == {"name": "abl", "root": str(tmp_path / "store"), "runs": 4, "analysed": 3, "skipped_not_done": 1}
    rows = out["rows"]
    assert len(rows) == 3 * 2  # three finished runs x two splits; the fourth is pending
    assert {(r["wd"], r["bn"]) for r in rows} == {("wd", "bn"), ("no_wd", "bn"), ("wd", "no_bn")}
    for f in ("wd", "bn"):
        assert (tmp_path / "store" / "mi" / f"mi_diff_vs_gen_gap_{f}.png").is_file()
    assert all(load_run_mi(r.run_dir) is not None for r in sweep.runs("done"))
    res = runner.invoke(app, ["mi", str(sweep_file), *ARGS])  # human output: warns about the unfinished run
    assert res.exit_code == 0 and "1 of 4 runs" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["mi", str(tmp_path / "store"), "--root", "x"])
    assert res.exit_code == 2 and "--root and --set apply to a sweep file" in " ".join(res.output.split())
    res = runner.invoke(app, ["mi", str(tmp_path / "typo.yaml")])
    squeezed = "".join(res.output.split())  # rich may wrap a long path anywhere, even inside the file name
    assert res.exit_code == 2 and "sweepfile" in squeezed and "typo.yaml'doesnotexist" in squeezed, res.output


def test_mi_prints_plain_progress_lines_in_masked_evaluations(sweep):
    """2 runs x 2 splits x 1 keep x 2 masks = 8 masked evaluations; stored results count at once."""
    res = runner.invoke(app, ["mi", str(sweep), *ARGS, "--force"])
    assert res.exit_code == 0, res.output
    assert "masking MI (2 runs, masked evaluations): 8/8 (100%)" in res.stderr
    assert "masking MI (2 runs, masked evaluations): 1/8" in res.stderr  # the first unit is always shown
    res = runner.invoke(app, ["mi", str(sweep), *ARGS])
    assert res.exit_code == 0 and ": 8/8 (100%)" in res.stderr


def test_compute_run_mi_progress_counts_masked_evaluations(sweep):
    from cnnlab.info.runs import run_units

    cfg = MIConfig(keeps=(0.25, 0.5), n_masks=3, n_examples=60, n_boot=20, gap_examples=60)
    calls = []
    compute_run_mi(sweep / "lr0.05", cfg, force=True, progress=calls.append)
    assert run_units(cfg) == 2 * 2 * 3 and sum(calls) == run_units(cfg)
