"""Results table (mean ± std over seeds), CSV / JSON / DataFrame, plots; the shipped tiny sweeps end to end."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.experiments import Sweep, collect
from cnnlab.experiments import plots
from cnnlab.utils.io import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
cli = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fabricated(tmp_path):
    """A 2x3 factor sweep with 3 seeds whose result.json files hold known numbers (one diverged, one pending)."""
    spec = {"name": "fab", "base": {"model": {"name": "tiny_cnn"}, "data": {"name": "digits"}},
            "grid": {"wd": {"key": "optim.weight_decay", "values": {"wd": 5e-4, "no_wd": 0.0}}, "data.resolution": [8, 12, 16]},
            "seeds": [0, 1, 2], "root": str(tmp_path / "runs")}
    path = tmp_path / "fab.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = Sweep.load(path)
    rng = np.random.default_rng(0)
    truth = {}
    for r in sweep.runs():
        if r.index == 18:
            continue  # pending: never ran
        acc = 0.5 + 0.01 * r.factors["data.resolution"] + (0.05 if r.labels["wd"] == "wd" else 0.0) + rng.normal(0, 0.01)
        status = "diverged" if r.index == 5 else "completed"
        write_json_atomic(r.run_dir / "result.json", {
            "status": status, "epochs_completed": 3, "stopped_early": False, "num_params": 1000,
            "final": {"epoch": 3, "step": 30, "lr": 0.1, "test_acc": acc, "test_loss": 1 - acc, "train_acc": acc + 0.1},
            "timings": {"total_s": 2.0 + r.index, "train_s": 1.5, "images_per_s": 100.0}})
        if status == "completed":
            truth[r.index] = acc
    return sweep, truth


def test_table_and_grouped_mean_std_match_numpy(fabricated):
    sweep, truth = fabricated
    table = collect(sweep)
    assert len(table.rows) == 18
    statuses = {r["index"]: r["status"] for r in table.rows}
    assert statuses[5] == "diverged" and statuses[18] == "pending" and sum(s == "done" for s in statuses.values()) == 16
    row = table.rows[0]
    assert row["wd"] == "wd" and row["data.resolution"] == 8 and row["model"] == "tiny_cnn" and row["family"] == "small_cnn"
    assert row["test_acc"] == truth[1] and row["total_s"] == 3.0 and "epoch" not in row and "lr" not in row
    assert table.factors == ["wd", "data.resolution"] and "test_acc" in table.metrics
    groups = table.grouped()
    assert len(groups) == 6
    for g in groups:
        members = [r for r in sweep.runs() if r.labels["wd"] == g["wd"] and r.factors["data.resolution"] == g["data.resolution"]]
        vals = np.array([truth[r.index] for r in members if r.index in truth])
        assert g["n"] == len(vals) and g["n_runs"] == 3
        assert g["test_acc_mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert g["test_acc_std"] == pytest.approx(vals.std(ddof=1), rel=1e-9)
    by_wd = {g["wd"]: g for g in table.grouped(by=["wd"], metrics=["test_acc"])}
    assert by_wd["wd"]["n"] == 9 and by_wd["no_wd"]["n"] == 7  # runs 5 (diverged) and 18 (pending) are no_wd
    with pytest.raises(KeyError, match="no column 'nope'"):
        table.grouped(by=["nope"])


def test_csv_json_and_cli(fabricated, tmp_path):
    sweep, truth = fabricated
    out_csv, g_csv = tmp_path / "runs.csv", tmp_path / "groups.csv"
    res = cli.invoke(app, ["results", str(sweep.path), "--csv", str(out_csv), "--grouped-csv", str(g_csv)])
    assert res.exit_code == 0, res.output
    assert "mean ± std over seeds (16/18 runs done)" in res.output
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and float(rows[0]["test_acc"]) == pytest.approx(truth[1])
    with open(g_csv) as f:
        groups = list(csv.DictReader(f))
    assert len(groups) == 6 and {"test_acc_mean", "test_acc_std", "n"} <= set(groups[0])
    res = cli.invoke(app, ["results", str(sweep.path), "--json"])
    data = json.loads(res.stdout)
    assert len(data["runs"]) == 18 and len(data["groups"]) == 6 and data["factors"] == ["wd", "data.resolution"]
    res = cli.invoke(app, ["results", str(sweep.path), "--per-run", "--metric", "test_acc"])
    assert res.exit_code == 0 and "pending" in res.output
    res = cli.invoke(app, ["results", str(sweep.path), "--metric", "test_acc_typo"])
    assert res.exit_code == 2 and "test_acc_typo" in res.output


def test_dataframe_is_optional(fabricated, monkeypatch):
    sweep, truth = fabricated
    table = collect(sweep)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pandas.*--csv"):
        table.to_frame()
    monkeypatch.undo()
    pd = pytest.importorskip("pandas")
    from cnnlab.experiments import results_frame

    df = results_frame(sweep.path)
    assert isinstance(df, pd.DataFrame) and len(df) == 18
    done = df[df.status == "done"]
    ref = done.groupby(["wd", "data.resolution"])["test_acc"].agg(["mean", "std"])
    for g in table.grouped():
        assert ref.loc[(g["wd"], g["data.resolution"]), "mean"] == pytest.approx(g["test_acc_mean"])
        assert ref.loc[(g["wd"], g["data.resolution"]), "std"] == pytest.approx(g["test_acc_std"])
    assert len(table.to_frame(grouped=True)) == 6


def test_plots_write_pngs_of_the_aggregated_numbers(fabricated, tmp_path):
    sweep, truth = fabricated
    table = collect(sweep)
    out = tmp_path / "p.png"
    series = plots.plot_metric(table, "data.resolution", "test_acc", out, hue="wd")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert list(series) == ["wd", "no_wd"] and [p["x"] for p in series["wd"]] == [8, 12, 16]
    by_key = {(g["wd"], g["data.resolution"]): g for g in table.grouped()}
    for hue, pts in series.items():
        for p in pts:
            assert p["mean"] == pytest.approx(by_key[(hue, p["x"])]["test_acc_mean"])
    ab = plots.plot_ablation(table, tmp_path / "ab.png")
    assert set(ab) == {"wd", "data.resolution"}
    wd_vals = np.array([truth[r.index] for r in sweep.runs() if r.index in truth and r.labels["wd"] == "wd"])
    assert ab["wd"][0]["x"] == "wd" and ab["wd"][0]["mean"] == pytest.approx(wd_vals.mean())
    assert ab["wd"][0]["std"] == pytest.approx(wd_vals.std(ddof=1))
    res_plot = plots.plot_resolution(table, tmp_path / "res.png", x="data.resolution")
    assert list(res_plot) == ["small_cnn"] and [p["x"] for p in res_plot["small_cnn"]["tiny_cnn"]] == [8, 12, 16]
    res = cli.invoke(app, ["plot", str(sweep.path), "--x", "data.resolution", "--y", "test_acc", "--hue", "wd", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert Path(data["png"]).read_bytes()[:8] == PNG_MAGIC and data["png"].endswith("test_acc_vs_data.resolution_by_wd.png")
    res = cli.invoke(app, ["plot", str(sweep.path), "--x", "colour"])
    assert res.exit_code == 2 and "no column 'colour'" in res.output


def test_tiny_resolution_sweep_end_to_end(tmp_path):
    sweep_path = REPO / "sweeps" / "tiny_resolution.yaml"
    root = tmp_path / "res"
    res = cli.invoke(app, ["sweep", "run", str(sweep_path), "--root", str(root)])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    for model in ("tiny_cnn", "simple_cnn"):  # progress lines name each run by its path, not only "seed0"
        for r in (8, 12, 16):
            assert f"small_cnn/{model}/{r}/seed0" in flat
    sweep = Sweep.load(sweep_path, root=root)
    assert sweep.status()["counts"]["done"] == 6
    run = sweep.run(6)
    assert run.run_dir == root / "small_cnn" / "simple_cnn" / "16" / "seed0"
    kept = sorted(p.name for p in (run.run_dir / "checkpoints").glob("*.pt"))
    assert "last.pt" in kept and 1 <= len(kept) - 1 <= 3  # top-3 checkpoints (2 epochs here) + last
    res = cli.invoke(app, ["results", str(sweep_path), "--root", str(root), "--json"])
    data = json.loads(res.stdout)
    assert len(data["groups"]) == 6 and all(g["n"] == 1 for g in data["groups"])
    assert "best_test_acc" in data["metrics"]
    res = cli.invoke(app, ["plot", str(sweep_path), "--root", str(root), "--preset", "resolution", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert Path(out["png"]).read_bytes()[:8] == PNG_MAGIC
    assert set(out["data"]["small_cnn"]) == {"tiny_cnn", "simple_cnn"}
    assert [p["x"] for p in out["data"]["small_cnn"]["tiny_cnn"]] == [8, 12, 16]
    loaded = run.load()  # the analyses' way in: a finished run as a model + dataset
    assert loaded.config.data.resolution == 16 and not loaded.model.training


@pytest.mark.slow
def test_tiny_ablation_sweep_end_to_end(tmp_path):
    sweep_path = REPO / "sweeps" / "tiny_ablation.yaml"
    root = tmp_path / "abl"
    res = cli.invoke(app, ["sweep", "run", str(sweep_path), "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["done"] == 64
    sweep = Sweep.load(sweep_path, root=root)
    runs = sweep.runs("done")
    assert len(runs) == 64 and runs[0].factors == {"wd": 5e-4, "bn": True, "crop": 4, "flip": "random", "batch_size": 8}
    res = cli.invoke(app, ["results", str(sweep_path), "--root", str(root), "--json"])
    data = json.loads(res.stdout)
    assert len(data["groups"]) == 32 and all(g["n"] == 2 for g in data["groups"])
    assert "gen_gap" in data["metrics"]  # clean_train_eval is on, as the MI analysis needs
    res = cli.invoke(app, ["plot", str(sweep_path), "--root", str(root), "--preset", "ablation", "--y", "gen_gap", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert list(out["data"]) == ["wd", "bn", "crop", "flip", "batch_size"]
    assert [p["x"] for p in out["data"]["bn"]] == ["bn", "no_bn"] and all(p["n"] == 32 for p in out["data"]["bn"])
