"""One data-attribution interface: MAGIC, TracIn, TRAK and external scores behind one registry, a user's own
method registered beside them and scored by LDS, and the store split without import cycles."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab.attribution import baselines as bl
from cnnlab.attribution.lds import Regime
from cnnlab.attribution.magic_files import load_magic
from cnnlab.attribution.methods import (ATTRIBUTION_METHODS, AttributionMethod, AttributionRun, ExternalScores,
                                        attribution_method, baseline_names, register_attribution_method)
from cnnlab.attribution.pipeline import baseline_scores, lds_analysis
from cnnlab.attribution.scores import Scores
from cnnlab.attribution.trained import final_state
from cnnlab.cli import app
from cnnlab.engine.run import read_run_config

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab" / "attribution"
TINY = {"name": "tiny", "seed": 0,
        "model": {"name": "tiny_cnn", "options": {"widths": [4, 8], "activation": "gelu", "pool": "avg"}},
        "data": {"name": "digits", "subset": 48},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle"}, "train": {"epochs": 2, "batch_size": 16, "device": "cpu"}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("methods")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "run"
    res = CliRunner().invoke(app, ["magic", str(cfg), "--targets", "0-2", "--out", str(out), "--plot-targets", "0",
                                   "--json"])
    assert res.exit_code == 0, res.output
    return out


def test_the_four_methods_are_registered_and_unknown_names_say_what_exists():
    assert {"magic", "tracin", "trak", "external"} <= set(ATTRIBUTION_METHODS.names())
    assert baseline_names() == ["tracin", "trak"]
    with pytest.raises(ValueError, match=r"unknown attribution method 'tracn'.*Did you mean 'tracin'"):
        attribution_method("tracn")
    assert attribution_method("trak", proj_dim=256, unrelated=1).settings() == {"proj_dim": 256, "seed": 0}


def test_a_method_must_implement_compute():
    class Incomplete(AttributionMethod):
        pass

    with pytest.raises(TypeError, match="compute"):
        Incomplete()  # type: ignore[abstract]


def test_magic_result_holds_the_shared_scores(run_dir):
    magic = load_magic(run_dir)
    assert isinstance(magic.attribution, Scores) and magic.attribution.method == "magic"
    assert magic.scores is magic.attribution.scores and magic.target_indices.tolist() == [0, 1, 2]
    s = attribution_method("magic").scores(AttributionRun(run_dir))
    assert torch.equal(s.scores, magic.scores)


def test_tracin_through_the_interface_is_the_direct_computation_and_is_cached(run_dir):
    parts, state = final_state(run_dir, read_run_config(run_dir))
    magic = load_magic(run_dir)
    direct = bl.tracin_scores(parts, state, magic.train_indices, magic.target_indices, magic.measurement)
    got = baseline_scores(run_dir, "tracin")
    assert torch.equal(got.scores, direct.scores) and got.method == "tracin"
    cache = run_dir / "baselines" / "tracin.pt"
    stamp = cache.stat().st_mtime_ns
    again = baseline_scores(run_dir, "tracin")
    assert torch.equal(again.scores, direct.scores) and cache.stat().st_mtime_ns == stamp  # served from the cache
    baseline_scores(run_dir, "tracin", force=True)
    assert cache.stat().st_mtime_ns != stamp


def test_external_scores_are_checked_against_the_runs_layout(run_dir, tmp_path):
    magic = load_magic(run_dir)
    good = tmp_path / "mine.npy"
    np.save(good, magic.scores.numpy() * 2)
    method = ExternalScores(good)
    assert method.key == "external:mine"
    assert torch.equal(method.scores(AttributionRun(run_dir)).scores, magic.scores.double() * 2)
    bad = tmp_path / "short.npy"
    np.save(bad, magic.scores.numpy()[:-1])
    with pytest.raises(ValueError, match="has shape"):
        ExternalScores(bad).scores(AttributionRun(run_dir))


def test_a_users_method_is_scored_by_lds_beside_magic(run_dir):
    """Negated MAGIC scores: every per-target Spearman is exactly minus MAGIC's on the same subset models."""

    @register_attribution_method("negated_magic_for_test")
    class NegatedMagic(AttributionMethod):
        baseline = True

        def compute(self, run):
            like = run.like
            return Scores(-like.scores, like.train_indices, like.target_indices, like.measurement, self.key)

    try:
        summary = lds_analysis(run_dir, Regime(0.25, 4, 0), baselines=["negated_magic_for_test"], engine="step",
                               bootstrap=0)
        mine, magic = summary["methods"]["negated_magic_for_test"], summary["methods"]["magic"]
        assert mine["spearman_per_target"] == [-v for v in magic["spearman_per_target"]]
        assert "negated_magic_for_test" in baseline_names()
    finally:
        ATTRIBUTION_METHODS._entries.pop("negated_magic_for_test", None)


def _imports(name: str, top: bool = False) -> set[str]:
    """Modules ``name`` imports from (``top``: only its module-level imports)."""
    tree = ast.parse((SRC / name).read_text())
    nodes = tree.body if top else list(ast.walk(tree))
    return {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}


def test_no_import_cycle_between_the_scores_format_the_run_listing_and_lds():
    assert not any(m.startswith("cnnlab.attribution") for m in _imports("scores.py"))
    assert not {"cnnlab.attribution.store", "cnnlab.attribution.runs"} & _imports("lds.py")
    assert "cnnlab.attribution.lds" in _imports("runs.py", top=True)  # the old function-level import is gone
    for name in ("replay.py", "states.py", "record.py"):
        assert "resource" not in (SRC / name).read_text()  # peak memory comes from cnnlab.utils.memory
