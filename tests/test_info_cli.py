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
