"""The run plumbing below the analyses (cnnlab.engine.analysis_run), one flatten, and the registries of
explanation methods and executors: an executor is one module, read by the CLI and sweep-file validation."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.data.dataset import Split
from cnnlab.engine.analysis_run import (AnalysisRun, find_run_dirs, flatten, inputs_at, open_run, split_of,
                                        varying_factors)
from cnnlab.engine.config import ConfigError
from cnnlab.utils.registry import Registry

cli = CliRunner()
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 512}}


def test_old_homes_re_export_the_one_run_plumbing():
    import cnnlab.explain as explain
    import cnnlab.explain.runs as old
    from cnnlab.utils import configdiff

    assert old.AnalysisRun is AnalysisRun and old.open_run is open_run and explain.AnalysisRun is AnalysisRun
    assert old.find_run_dirs is find_run_dirs and old.varying_factors is varying_factors
    assert old.flatten is flatten is configdiff.flatten  # one flatten


def test_flatten_and_the_mlflow_params_agree():
    from cnnlab.experiments.tracking import flatten_params

    cfg = {"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "model": {"options": {}}, "name": "x", "long": "a" * 7000}
    assert flatten(cfg) == {"optim.lr": 0.1, "optim.betas": [0.9, 0.99], "model.options": {}, "name": "x",
                            "long": "a" * 7000}
    params = flatten_params(cfg)
    assert params["optim.lr"] == "0.1" and params["optim.betas"] == "[0.9, 0.99]" and len(params["long"]) == 6000


def test_varying_factors_skips_bookkeeping_keys():
    a = {"name": "a", "optim": {"lr": 0.1}, "train": {"device": "cpu", "epochs": 3}}
    b = {"name": "b", "optim": {"lr": 0.2}, "train": {"device": "cuda", "epochs": 3}}
    assert varying_factors([a, b]) == ["optim.lr"]


def test_inputs_at_transforms_the_selected_images_and_names_bad_indices():
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).view(5, 1, 2, 2)
    data = Split(images, torch.tensor([0, 1, 2, 3, 4]))
    x, y = inputs_at(data, [4, 1], lambda t: t.float() * 2, "cpu")
    torch.testing.assert_close(x, images[[4, 1]].float() * 2)
    assert y.tolist() == [4, 1]
    x_all, y_all = inputs_at(data, None, lambda t: t.float(), "cpu")
    assert x_all.shape == (5, 1, 2, 2) and y_all.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(IndexError, match=r"test split of 5 images: \[5, -1\]"):
        inputs_at(data, [0, 5, -1], lambda t: t.float(), "cpu", split="test")


def test_analysis_run_inputs_and_parts_inputs_agree_with_the_eval_transform(tmp_path):
    from cnnlab.engine.analysis_run import parts_inputs_at
    from cnnlab.engine.config import build_config
    from cnnlab.engine.run import load_run, train

    train(build_config({"name": "p", **BASE}), tmp_path / "p", progress=False)
    run = open_run(tmp_path / "p")
    loaded = load_run(tmp_path / "p")
    x, y = run.inputs("test", [3, 0])
    x2, y2 = parts_inputs_at(loaded.parts, "test", [3, 0])
    ref = loaded.eval_inputs("test")  # the engine's own eval inputs of the whole split
    torch.testing.assert_close(x, ref[[3, 0]])
    torch.testing.assert_close(x2, ref[[3, 0]])
    assert y.tolist() == y2.tolist() == loaded.dataset.test.labels[[3, 0]].tolist()
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        split_of(loaded.dataset, "val")
    assert find_run_dirs([tmp_path]) == [tmp_path / "p"]


def test_explanation_methods_live_in_a_registry():
    from cnnlab.explain.methods import METHODS, AttributionMethod, list_methods, register_method

    assert isinstance(METHODS, Registry) and set(list_methods()) >= {"gradcam", "ig", "saliency", "smoothgrad"}
    with pytest.raises(ValueError, match="registered twice"):
        @register_method("saliency")
        class Again(AttributionMethod):
            pass


# ------------------------------------------------------------------------------------------ executors
def _sweep_file(tmp_path, executors):
    spec = {"name": "ex", "base": BASE, "grid": {"optim.lr": [0.05, 0.04]}, "root": str(tmp_path / "runs"),
            "executors": executors}
    path = tmp_path / "ex.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def dry_executor():
    """A whole new executor in one place: its options model, its class, one registration."""
    from pydantic import Field

    from cnnlab.engine.config import StrictModel
    from cnnlab.experiments.executors import EXECUTORS, Executor, Submission, register_executor

    class QueueOptions(StrictModel):
        queue: str = Field("default", description="where the runs would go")

    @register_executor
    class QueueExecutor(Executor):
        name = "queue_test"
        description = "records which runs it was handed"
        options_model = QueueOptions

        def submit(self, sweep, request):
            opts = self.options(sweep)
            return Submission(self.name, [r.index for r in request.runs], command=["enqueue", opts.queue])

    yield QueueExecutor
    EXECUTORS._entries.pop("queue_test")


def test_a_new_executor_is_one_registration(tmp_path, dry_executor):
    from cnnlab.experiments import Sweep

    path = _sweep_file(tmp_path, {"queue_test": {"queue": "gpu"}, "slurm": {"threads": 2}})
    sweep = Sweep.load(path)
    assert sweep.spec.executors.get("queue_test").queue == "gpu" and sweep.spec.executors.slurm.threads == 2
    assert sweep.spec.executors.sge.options == []  # defaults where the file says nothing
    res = cli.invoke(app, ["sweep", "submit", str(path), "--executor", "queue_test", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["command"] == ["enqueue", "gpu"] and json.loads(res.stdout)["indices"] == [1, 2]
    res = cli.invoke(app, ["sweep", "executors", "--json"])
    listed = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"local", "ray", "sge", "slurm", "queue_test"} <= set(listed)
    assert listed["queue_test"]["options"]["queue"] == {"type": "str", "default": "default",
                                                       "description": "where the runs would go"}
    assert listed["slurm"]["options"]["max_concurrent"]["default"] is None
    with pytest.raises(ConfigError, match=r"executors\.queue_test\.queue: Input should be a valid string"):
        Sweep.load(_sweep_file(tmp_path, {"queue_test": {"queue": 3}}))


def test_sweep_files_name_unknown_executors_and_options(tmp_path):
    from cnnlab.experiments import Sweep

    with pytest.raises(ConfigError, match=r"executors\.slrum: unknown executor 'slrum'\. Did you mean 'slurm'"):
        Sweep.load(_sweep_file(tmp_path, {"slrum": {}}))
    with pytest.raises(ConfigError, match=r"executors\.ray\.num_cpu: unknown key"):
        Sweep.load(_sweep_file(tmp_path, {"ray": {"num_cpu": 2}}))
    with pytest.raises(ConfigError, match=r"executors must map executor names"):
        Sweep.load(_sweep_file(tmp_path, ["sge"]))
    res = cli.invoke(app, ["sweep", "submit", str(_sweep_file(tmp_path, {})), "--executor", "slurmm"])
    assert res.exit_code == 2 and "unknown executor 'slurmm'" in res.output and "slurm" in res.output


def test_spec_keeps_the_moved_options_models_reachable():
    from cnnlab.experiments import spec
    from cnnlab.experiments.executors.array import ClusterOptions
    from cnnlab.experiments.executors.ray_exec import RayOptions

    assert spec.ClusterOptions is ClusterOptions and spec.RayOptions is RayOptions


def test_explain_cli_default_methods_are_the_pipelines():
    from cnnlab.cli.explain import MethodsOpt
    from cnnlab.explain.pipeline import DEFAULT_METHODS

    assert MethodsOpt.default == ",".join(DEFAULT_METHODS)


def test_sweep_executors_lists_each_engine_with_its_options():
    res = cli.invoke(app, ["sweep", "executors"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name in ("local", "ray", "sge", "slurm"):
        assert name in text
    assert "max_concurrent" in text and "num_gpus" in text and "threads_per_worker" in text
