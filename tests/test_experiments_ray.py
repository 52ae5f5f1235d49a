"""Ray executor (optional extra): the pending runs of a sweep as tasks on a local Ray cluster."""

import json

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("ray")

from cnnlab.cli import app  # noqa: E402
from cnnlab.experiments import Sweep  # noqa: E402

cli = CliRunner()


@pytest.mark.slow
def test_ray_runs_the_pending_runs(tmp_path):
    spec = {"name": "rayed", "root": str(tmp_path / "runs"),
            "base": {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
                     "train": {"epochs": 1, "batch_size": 32}},
            "grid": {"optim.lr": [0.05, 0.04, 0.03]}}
    path = tmp_path / "rayed.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = cli.invoke(app, ["sweep", "run", str(path), "--indices", "2"])  # one run already done
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["sweep", "submit", str(path), "--executor", "ray", "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert sorted(o["index"] for o in out["outcomes"]) == [1, 3]
    assert all(o["status"] == "done" and o["action"] == "trained" for o in out["outcomes"])
    assert Sweep.load(path).status()["counts"]["done"] == 3
