"""FLOP counts against analytic 2 × MACs, the per-layer table, and timing/memory sanity (no time thresholds)."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.profile import PassSpec, count_flops, cpu_peak_memory, layer_table, measure, profile_model
from cnnlab.profile.runner import ProfileSettings

runner = CliRunner()


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 5))


def _analytic(n=2, h=8, w=8):
    """2 × MACs from the layer shapes: conv = 2·N·Cout·H·W·Cin·k·k, linear = 2·N·in·out (bias not counted)."""
    conv1 = 2 * n * 4 * h * w * 3 * 3 * 3
    conv2 = 2 * n * 6 * h * w * 4 * 3 * 3
    fc = 2 * n * (6 * h * w) * 5
    return conv1, conv2, fc


def test_forward_flops_equal_analytic_count():
    conv1, conv2, fc = _analytic()
    c = count_flops(_net(), torch.randn(2, 3, 8, 8))
    assert c.total == conv1 + conv2 + fc
    assert c.by_module["Sequential.0"] == conv1 and c.by_module["Sequential.2"] == conv2 and c.by_module["Sequential.5"] == fc


def test_forward_backward_flops():
    """Backward = weight grad + input grad (each one forward's FLOPs), except the first conv, whose input
    needs no gradient: FlopCounterMode counts only its weight gradient there."""
    conv1, conv2, fc = _analytic()
    net = _net()
    c = count_flops(net, torch.randn(2, 3, 8, 8), backward=True)
    assert c.by_module["Sequential.0"] == conv1 + conv1          # forward + grad_weight
    assert c.by_module["Sequential.2"] == conv2 + 2 * conv2      # forward + grad_weight + grad_input
    assert c.by_module["Sequential.5"] == fc + 2 * fc
    assert c.total == 2 * conv1 + 3 * conv2 + 3 * fc
    assert all(p.grad is None for p in net.parameters())  # counting leaves no gradients behind


def test_resnet9_matches_the_published_cost():
    """The reference sheet's measured figure: rn9 costs 1.744 GFLOP forward+backward per 32×32 image."""
    from cnnlab.models import create_model

    c = count_flops(create_model("resnet9").eval(), torch.randn(1, 3, 32, 32), backward=True)
    assert round(c.total / 1e9, 3) == 1.744


def test_layer_table_rows_sum_to_total():
    net = _net()
    x = torch.randn(1, 3, 8, 8)
    rows = layer_table(net, x, count_flops(net, x).by_module)
    assert [r["layer"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert rows[0]["output_shape"] == [1, 4, 8, 8] and rows[0]["params"] == 4 * 3 * 9 + 4
    assert sum(r["flops"] for r in rows) == count_flops(net, x).total
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in net.parameters())


def test_latency_sanity():
    net = _net().eval()
    x = torch.randn(1, 3, 8, 8)
    lat = measure(lambda: net(x), min_run_time=0.02, warmup=1)
    assert lat.median_s > 0 and lat.iqr_s >= 0 and lat.calls >= 1 and lat.blocks >= 1


def test_profile_model_entry_structure():
    e = profile_model("tiny_cnn", 8, ProfileSettings(batch_size=2, device="cpu", memory=False, min_run_time=0.02))
    assert e["params"] == sum(r["params"] for r in e["layers"])
    assert e["flops"]["forward"] == sum(r["flops"] for r in e["layers"])
    assert e["flops"]["forward_backward"] > 2 * e["flops"]["forward"]
    for key in ("forward_b1", "forward_b2", "forward_backward_b2"):
        assert e["latency"][key]["median_s"] > 0 and e["latency"][key]["iqr_s"] >= 0
    assert e["throughput"]["forward_img_s"] > 0 and e["memory"] is None and e["cuda_events"] is None
    with pytest.raises(ValueError, match="at least"):
        profile_model("simple_cnn", 4, ProfileSettings(memory=False))


def test_profile_cli_stores_entries_and_reuses_them(tmp_path):
    args = ["profile", "--models", "tiny_cnn", "--resolutions", "8,16", "--batch-size", "2", "--device", "cpu",
            "--no-memory", "--min-run-time", "0.02", "--out", str(tmp_path), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [(r["model"], r["resolution"]) for r in out["rows"]] == [("tiny_cnn", 8), ("tiny_cnn", 16)]
    fc = 2 * 64 * 10 / 1e9  # the head's FLOPs do not depend on the resolution; the convs' grow with the pixels
    assert out["rows"][1]["gflops_fwd"] - fc == pytest.approx(4 * (out["rows"][0]["gflops_fwd"] - fc), rel=1e-12)
    for f in ("tiny_cnn/8.json", "tiny_cnn/16.json", "profile.csv", "profile.json", "profile_small_cnn.png"):
        assert (tmp_path / f).is_file(), f
    stored = (tmp_path / "tiny_cnn" / "8.json").read_text()
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0 and (tmp_path / "tiny_cnn" / "8.json").read_text() == stored  # reused, not re-measured
    bad = runner.invoke(app, ["profile", "--models", "nothing*", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "matches no registered model" in bad.output


@pytest.mark.slow
def test_cpu_peak_memory_in_a_fresh_subprocess():
    r = cpu_peak_memory(PassSpec("simple_cnn", 32, batch_size=32, backward=True))
    assert r["idle_mib"] > 0 and r["process_peak_mib"] > r["idle_mib"]
    assert r["peak_mib"] > 0
