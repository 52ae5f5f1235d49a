"""``cnnlab export``: each format is written, loaded back by its own loader and gives the model's outputs."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.engine.export import ExportError, export_model

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from cnnlab.engine.config import build_config
    from cnnlab.engine.run import train

    root = tmp_path_factory.mktemp("export_run")
    cfg = build_config({"name": "exp", "model": {"name": "tiny_cnn"},
                        "train": {"epochs": 1, "batch_size": 256, "device": "cpu"}})
    train(cfg, root / "run", progress=False)
    return root / "run"


def _test_batch(run_dir, n=5):
    from cnnlab.engine.run import load_run

    loaded = load_run(run_dir, device="cpu")
    return loaded.model, loaded.eval_inputs("test", 0, n)


def test_state_dict_export_loads_strictly_into_a_fresh_model(run_dir, tmp_path):
    from cnnlab.engine.run import read_run_config
    from cnnlab.engine.setup import build_run

    res = runner.invoke(app, ["export", str(run_dir), "--format", "state_dict", "--out", str(tmp_path / "w.pt"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "state_dict" and report["max_abs_diff"] <= report["tolerance"]
    fresh = build_run(read_run_config(run_dir)).model  # a fresh (untrained) model of the run's config
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)
    model, x = _test_batch(run_dir)
    torch.testing.assert_close(fresh.eval()(x), model(x))


def test_exported_program_has_a_dynamic_batch(run_dir):
    res = runner.invoke(app, ["export", str(run_dir), "--json"])  # default: torch.export into RUN/export/
    assert res.exit_code == 0, res.output
    path = run_dir / "export" / "model.pt2"
    assert json.loads(res.stdout)["path"] == str(path)
    program = torch.export.load(path).module()
    model, x = _test_batch(run_dir, n=7)  # another batch size than the one exported with
    torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-5)
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file


def test_onnx_export_matches_in_onnxruntime(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    res = runner.invoke(app, ["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    json.loads(res.stdout)  # the exporter's own progress lines stay out of --json output
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model, x = _test_batch(run_dir, n=3)
    (out,) = session.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-5)


class _Drifting(nn.Module):
    """A model whose forward depends on a call counter: no exported file can reproduce it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1)) + self.calls


def test_a_file_that_does_not_reproduce_the_model_is_not_written(tmp_path):
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ExportError, match="does not reproduce"):
        export_model(_Drifting(), x, "state_dict", tmp_path / "w.pt")
    assert list(tmp_path.iterdir()) == []


def test_bad_export_requests_are_clear_errors(run_dir, tmp_path):
    cases = [
        (["export", str(run_dir), "--format", "tflite"], "--format"),
        (["export", str(tmp_path / "nope")], "does not exist"),
        (["export", str(run_dir), "--out", str(tmp_path)], "is a directory"),
        (["export", str(run_dir), "--checkpoint", "best"], "best checkpoint"),
        (["export", str(run_dir), "--batch", "1"], "--batch"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in " ".join(res.output.split()) and "Traceback" not in res.output, (args, res.output)
