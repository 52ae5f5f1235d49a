"""train.precision / train.channels_last "auto" (the defaults): bf16 autocast + channels_last only where the CPU
has native bf16, fp32 NCHW elsewhere, and result.json says which was chosen and why."""

from __future__ import annotations

import pytest
import torch

from cnnlab.engine import Trainer, load_config
from cnnlab.engine import setup as setup_mod
from cnnlab.engine.config import ConfigError, TrainConfig
from cnnlab.engine.setup import build_run, resolve_channels_last, resolve_precision

FAST = ["train.epochs=1", "train.batch_size=64", "train.threads=1", "model.options.widths=[8,16]", "callbacks.curves=false"]
CPU = torch.device("cpu")


def test_defaults_are_auto_and_auto_spells_none():
    t = TrainConfig()
    assert t.precision == "auto" and t.channels_last is None
    assert TrainConfig(channels_last="auto").channels_last is None
    assert TrainConfig(channels_last=True).channels_last is True
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_config(None, ["train.channels_last=sideways"])


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_and_channels_last_only_where_bf16_is_native(monkeypatch, native):
    monkeypatch.setattr(setup_mod, "cpu_has_native_bf16", lambda: native)
    precision, why = resolve_precision("auto", CPU)
    assert precision == ("bf16" if native else "fp32") and why.startswith("auto")
    assert resolve_channels_last(None, precision, CPU)[0] is native
    assert resolve_channels_last(False, "bf16", CPU) == (False, "set by train.channels_last")
    assert resolve_channels_last(True, "fp32", CPU)[0] is True
    assert resolve_channels_last(None, "bf16", torch.device("cuda"))[0] is False  # not measured there: NCHW


@pytest.mark.parametrize("native", [True, False])
def test_run_uses_and_records_the_choice(monkeypatch, native):
    monkeypatch.setattr(setup_mod, "cpu_has_native_bf16", lambda: native)
    cfg = load_config(None, [*FAST, "train.device=cpu"])
    parts = build_run(cfg)
    conv = next(p for p in parts.model.parameters() if p.ndim == 4 and p.shape[1] > 1)  # a layout the formats do not share
    assert conv.is_contiguous(memory_format=torch.channels_last) is native and conv.is_contiguous() is not native
    x = next(iter(parts.train_loader.epoch(0))).x
    if x.shape[1] > 1:  # one channel: NCHW and NHWC are the same layout
        assert x.is_contiguous(memory_format=torch.channels_last) is native
    assert parts.settings.autocast_dtype == (torch.bfloat16 if native else None)
    result = Trainer(cfg, None, progress=False).fit()
    p = result["precision"]
    assert p["autocast"] == ("bf16" if native else "fp32") and p["channels_last"] is native
    assert p["reason"].startswith("auto:") and p["channels_last_reason"].startswith("auto:")


def test_pinned_fp32_stays_fp32_nchw(monkeypatch):
    monkeypatch.setattr(setup_mod, "cpu_has_native_bf16", lambda: True)
    cfg = load_config(None, [*FAST, "train.device=cpu", "train.precision=fp32"])
    parts = build_run(cfg)
    assert parts.settings.autocast_dtype is None and parts.channels_last is False
