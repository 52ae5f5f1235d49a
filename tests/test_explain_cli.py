"""``cnnlab explain`` on real (tiny) run directories: grid PNG, summary, resolution comparison, errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.explain import AnalysisRun, compare_runs, open_run
from cnnlab.models import create_deterministic_model

runner = CliRunner()


def _train(run_dir, resolution):
    from cnnlab.engine.config import build_config
    from cnnlab.engine.run import train

    cfg = build_config({"name": f"r{resolution}", "data": {"resolution": resolution},
                        "train": {"epochs": 1, "batch_size": 128, "device": "cpu"}})
    train(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_runs")
    return root, [_train(root / "r8", 8), _train(root / "r12", 12)]


def test_explain_run_writes_grid_attributions_and_summary(runs):
    _, (r8, _) = runs
    res = runner.invoke(app, ["explain", str(r8), "--images", "0,2-3", "--methods", "gradcam,ig,saliency",
                              "--set", "ig.n_steps=8", "--target", "true", "--perturb-samples", "2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["indices"] == [0, 2, 3] and summary["target_mode"] == "true"
    assert summary["targets"] == summary["labels"]
    assert summary["methods"]["ig"]["settings"]["n_steps"] == 8
    for m in ("gradcam", "ig", "saliency"):
        assert summary["methods"][m]["infidelity_mean"] >= 0 and summary["methods"][m]["sensitivity_max_mean"] >= 0
    png = r8 / "explain" / "explanations.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = torch.load(r8 / "explain" / "attributions.pt")
    assert saved["attributions"]["ig"].shape == (3, 1, 8, 8) and saved["attributions"]["gradcam"].shape == (3, 1, 8, 8)


def test_explain_bad_inputs_fail_cleanly(runs, tmp_path):
    _, (r8, _) = runs
    cases = [
        (["explain", str(r8), "--methods", "gradcm"], "unknown attribution method 'gradcm'"),
        (["explain", str(r8), "--images", "0,99999", "--no-metrics"], "--images: '99999' is outside [0,"),
        (["explain", str(r8), "--set", "ig.steps=3", "--methods", "ig"], "no option(s) steps"),
        (["explain", str(r8), "--target", "best"], "--target must be pred, true or a class index"),
        (["explain", str(r8), "--target", "12", "--no-metrics"], "target class 12 is out of range"),
        (["explain", str(tmp_path / "missing")], "does not exist"),
        (["explain", "compare", str(r8)], "at least two runs"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert msg in " ".join(res.output.split()), (args, res.output)


def test_explain_compare_across_resolutions(runs):
    root, _ = runs
    out = root / "cmp"
    res = runner.invoke(app, ["explain", "compare", str(root), "--images", "0-3", "--methods", "gradcam,saliency",
                              "--no-metrics", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["grid"] == 8 and list(rep["runs"]) == ["8px", "12px"]
    assert {(r["method"], r["a"], r["b"]) for r in rep["rows"]} == {("gradcam", "8px", "12px"), ("saliency", "8px", "12px")}
    for r in rep["rows"]:
        assert -1 <= r["spearman"] <= 1 and 0 <= r["iou"] <= 1
    for f in ("compare_gradcam.png", "maps_saliency.png", "compare.json"):
        assert (out / f).is_file()
    res = runner.invoke(app, ["explain", "compare", str(root), "--images", "0", "--methods", "saliency", "--no-metrics"])
    assert res.exit_code == 0, res.output
    default = root.parent / f"{root.name}-explain_compare"  # beside the folder of the runs, not inside it
    assert (default / "compare.json").is_file() and not (root / "explain_compare").exists()


def test_same_run_compared_with_itself_is_identical(runs):
    """Two analysis views of one trained model at the same resolution agree perfectly (Spearman = IoU = 1)."""
    _, (r8, _) = runs
    a = open_run(r8)
    b = open_run(r8)
    b.name = "copy"
    rep = compare_runs([a, b], r8 / "self_cmp", indices=[0, 1, 2], methods=["saliency"], metrics=False)
    assert rep["rows"][0]["spearman"] == pytest.approx(1.0) and rep["rows"][0]["iou"] == pytest.approx(1.0)


def test_in_memory_model_wrapper():
    from cnnlab.data import load_dataset

    ds = load_dataset("digits")
    model = create_deterministic_model(0, "tiny_cnn", "m", num_classes=10, in_channels=1)
    run = AnalysisRun.from_model(model, ds, resolution=12)
    x, y = run.inputs("test", [0, 1])
    assert x.shape == (2, 1, 12, 12) and torch.equal(y, ds.test.labels[:2])
    assert abs(float(run.inputs("train")[0].mean())) < 0.05  # normalised with the resized data's own stats


def test_explain_prints_plain_progress_lines_when_stderr_is_not_a_terminal(runs):
    """stderr of CliRunner is no terminal: ProgressLog writes k/N lines there (images x methods, twice with metrics)."""
    _, (r8, _) = runs
    res = runner.invoke(app, ["explain", str(r8), "--images", "3,1,1", "--methods", "saliency,gradcam", "--no-metrics"])
    assert res.exit_code == 0, res.output
    assert "explain: images x methods: 4/4 (100%)" in res.stderr  # 2 images (sorted, each once) x 2 methods
    summary = json.loads((r8 / "explain" / "summary.json").read_text())
    assert summary["indices"] == [1, 3]
    res = runner.invoke(app, ["explain", str(r8), "--images", "0", "--methods", "saliency", "--perturb-samples", "2"])
    assert res.exit_code == 0 and "explain: images x methods: 2/2 (100%)" in res.stderr
    res = runner.invoke(app, ["explain", str(r8), "--images", "0", "--methods", "saliency", "--no-metrics", "--json"])
    assert res.exit_code == 0 and "images x methods" not in res.stderr  # --json: stdout is the record, no progress


def test_explain_run_progress_hook_counts_every_chunk(runs):
    from cnnlab.explain import explain_run

    _, (r8, _) = runs
    seen = []
    explain_run(open_run(r8), r8 / "explain_hook", indices=[0, 1, 2], methods=["saliency"], metrics=False, batch_size=2,
                progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 3), (3, 3)]  # chunks of 2 and 1 images
