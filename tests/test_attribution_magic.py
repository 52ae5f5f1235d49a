"""MAGIC metagradients against independent references: finite differences of retraining in float64, the
Trainer's own run (bitwise), and each other across checkpointing strategies and VJP paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.attribution import compute_magic, get_measurement, parse_targets
from cnnlab.attribution.checkpointing import SqrtCheckpoints, TreeCheckpoints
from cnnlab.attribution.magic import chaos_warnings, check_determinism, prepare_config
from cnnlab.attribution.replay import RecordReplayStates, Replay
from cnnlab.data import load_dataset
from cnnlab.engine.config import ConfigError, build_config
from cnnlab.engine.setup import build_run
from cnnlab.engine.step import TrainState, train_step
from cnnlab.engine.trainer import Trainer, model_from_state


def tiny_raw(**optim):
    return {
        "seed": 3,
        "model": {"name": "tiny_cnn", "options": {"widths": [4, 8], "activation": "gelu", "pool": "avg"}},
        "data": {"name": "digits", "subset": 64},
        "optim": optim or {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle", "pct_start": 0.3},
        "train": {"epochs": 2, "batch_size": 16, "label_smoothing": 0.1, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def reference_phi(config, weights64, targets, dataset, measure):
    """phi after weighted training, computed without the replay: a plain float64 loop over the loader's
    epochs (as the Trainer runs it), then the model's own eval-mode forward (native BatchNorm)."""
    parts = build_run(prepare_config(config), dataset=dataset)
    model = parts.model.double()
    parts.train_loader.dtype = torch.float64
    state = TrainState.from_model(model, parts.settings.optimizer)
    step = 0
    for epoch in range(config.train.epochs):
        for b in parts.train_loader.epoch(epoch):
            state, _ = train_step(model, state, b.x, b.y, weights64[b.index], parts.schedule.lr(step), parts.settings)
            step += 1
    trained = model_from_state(model, state.params, state.buffers)
    idx = torch.as_tensor(targets)
    x = parts.eval_images(dataset.test.images[idx], 0, len(idx), dtype=torch.float64)
    with torch.no_grad():
        return get_measurement(measure)(trained(x), dataset.test.labels[idx])


@pytest.mark.parametrize("optim,measure", [
    ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, "loss"),
    ({"name": "adamw", "lr": 0.01, "weight_decay": 0.05}, "margin"),
])
def test_scores_match_central_finite_differences_in_float64(digits, optim, measure):
    check_finite_differences(build_config(tiny_raw(**optim)), digits, measure)


def test_finite_differences_with_accumulation_param_groups_and_cosine_warmup(digits):
    raw = tiny_raw(name="sgd", lr=0.08, momentum=0.8, weight_decay=1e-3, bias_lr_scale=2.0)
    raw["schedule"] = {"name": "cosine", "warmup_epochs": 0.5}
    raw["train"]["accumulation"] = 2
    check_finite_differences(build_config(raw), digits, "loss")


def test_finite_differences_through_gradient_clipping(digits):
    # The engine computes the clipping norm in float32 even in a float64 run, so phi carries ~1e-7
    # relative rounding noise: a wide step and a looser tolerance (ignoring the clip factor's own
    # derivative is off by far more than this).
    raw = tiny_raw()
    raw["train"]["grad_clip"] = 0.05  # below every gradient norm of this run: always clipping
    check_finite_differences(build_config(raw), digits, "loss", eps=1e-2, rtol=2e-3, rows=(0, 21))


def check_finite_differences(config, digits, measure, eps=1e-4, rtol=1e-6, rows=(0, 21, 50)):
    targets = [0, 7]
    result = compute_magic(config, targets=targets, measure=measure, dtype=torch.float64, dataset=digits)
    assert result.scores.dtype == torch.float64 and result.scores.shape == (64, 2)
    n = len(digits.train)
    for row in rows:
        i = int(result.train_indices[row])
        plus, minus = torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        plus[i] += eps
        minus[i] -= eps
        fd = (reference_phi(config, plus, targets, digits, measure) - reference_phi(config, minus, targets, digits, measure)) / (2 * eps)
        assert torch.allclose(result.scores[row], fd, rtol=rtol, atol=1e-12), (row, result.scores[row], fd)
        assert fd.abs().min() > 1e-6  # a real signal, not two zeros agreeing


def test_replay_forward_is_bitwise_the_trainers_run(digits):
    config = prepare_config(build_config(tiny_raw()))
    trainer = Trainer(config, None, dataset=digits, progress=False)
    trainer.fit()
    replayed = Replay(build_run(config, dataset=digits)).forward()
    for name, p in trainer.state.params.items():
        assert torch.equal(p, replayed.params[name]), name
    for name, b in trainer.state.buffers.items():
        assert torch.equal(b, replayed.buffers[name]), name
    for name, s in trainer.state.opt_state.items():
        assert torch.equal(s["momentum_buffer"], replayed.opt_state[name]["momentum_buffer"])


def test_checkpointing_strategies_give_identical_scores(digits):
    raw = tiny_raw()
    raw["train"]["batch_size"] = 8  # 16 steps: a tree of depth > 1
    config = build_config(raw)
    runs = {name: compute_magic(config, targets=[1, 2, 3], checkpointing=strat, dataset=digits)
            for name, strat in [("all", "all"), ("sqrt", SqrtCheckpoints()), ("log", TreeCheckpoints(k=2))]}
    ref = runs["all"].scores
    assert ref.abs().max() > 0
    for name, r in runs.items():
        assert torch.equal(r.scores, ref), name
        assert r.stats.reverse_steps == 16 and r.stats.vjp_path == "looped"
    s_all, s_sqrt, s_log = runs["all"].stats, runs["sqrt"].stats, runs["log"].stats
    assert (s_all.peak_stored_states, s_all.recomputed_steps) == (16, 0)
    assert s_sqrt.peak_stored_states < 16 and s_sqrt.recomputed_steps > 0
    assert s_log.peak_stored_states < 16 and s_log.recomputed_steps > s_sqrt.recomputed_steps
    assert s_all.peak_stored_bytes == 16 * s_all.state_bytes


@pytest.mark.parametrize("strategy", ["all", "log"])
def test_states_recorded_while_training_replace_the_first_pass(digits, strategy):
    """The Trainer's recorded states seed the replay: identical scores, no first forward pass."""
    raw = tiny_raw()
    raw["train"]["batch_size"] = 8  # 16 steps
    config = prepare_config(build_config(raw))
    record = RecordReplayStates(strategy, tree_k=2)
    trainer = Trainer(config, None, dataset=digits, progress=False, callbacks=[record])
    trainer.fit()
    own = compute_magic(config, targets=[1, 2], checkpointing=strategy, tree_k=2, dataset=digits)
    seeded = compute_magic(config, targets=[1, 2], checkpointing=strategy, tree_k=2, dataset=digits,
                           states=record.states)
    assert torch.equal(seeded.scores, own.scores) and torch.equal(seeded.phi, own.phi)
    first = 16 if strategy == "all" else 2  # all: every state; log(k=2): 2 chunk starts at the top level
    assert sorted(record.states) == sorted({*(range(16) if strategy == "all" else [0, 8]), 16})
    assert seeded.stats.reused_states == first + 1 and own.stats.reused_states == 0
    assert seeded.stats.forward_steps == own.stats.forward_steps - 16  # the first pass (16 steps) is skipped
    assert seeded.stats.recomputed_steps == own.stats.recomputed_steps
    partial = {k: v for k, v in record.states.items() if k != 16}  # the final state missing: own first pass
    fallback = compute_magic(config, targets=[1, 2], checkpointing=strategy, tree_k=2, dataset=digits, states=partial)
    assert fallback.stats.reused_states == 0 and torch.equal(fallback.scores, own.scores)


def test_looped_vjps_agree_with_batched_and_single_target(digits):
    config = build_config(tiny_raw())
    batched = compute_magic(config, targets=[4, 5], dataset=digits, checkpointing="all", vjp="batched")
    looped = compute_magic(config, targets=[4, 5], dataset=digits, checkpointing="all")  # auto: looped on CPU
    single = compute_magic(config, targets=[5], dataset=digits, checkpointing="all")
    assert looped.stats.vjp_path == "looped" and single.stats.vjp_path == "single"
    torch.testing.assert_close(looped.scores, batched.scores, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(single.scores[:, 0], batched.scores[:, 1], rtol=1e-5, atol=1e-9)
    # phi at the full run is the measurement of the trained model
    assert torch.allclose(batched.phi, F.cross_entropy(
        _logits(config, digits, [4, 5]), digits.test.labels[[4, 5]], reduction="none"), rtol=1e-5)


@pytest.mark.slow
def test_compiled_replay_matches_the_eager_replay(digits):
    """AdamW (its step counter enters the compiled graph as a tensor); 3 targets in chunks of 2 and 1 (two
    graphs, one of them sharing the recomputed step between two cotangents)."""
    config = build_config(tiny_raw(name="adamw", lr=0.01, weight_decay=0.05))
    eager = compute_magic(config, targets=[4, 5, 6], dataset=digits, checkpointing="all")
    compiled = compute_magic(config, targets=[4, 5, 6], dataset=digits, checkpointing="all", compile=True,
                             compile_chunk=2)
    assert compiled.stats.vjp_path == "compiled (2 per call)", compiled.stats.vjp_path
    assert compiled.stats.compile_s > 0 and compiled.settings["compile"] is True
    torch.testing.assert_close(compiled.scores, eager.scores, rtol=1e-4, atol=1e-7 * eager.scores.abs().max().item())
    assert torch.equal(compiled.phi, eager.phi)


def test_compiled_replay_falls_back_to_the_eager_vjp_when_compiling_fails(digits, monkeypatch):
    from cnnlab.attribution import compiled as compiled_mod

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler\nsecond line")
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    config = build_config(tiny_raw())
    eager = compute_magic(config, targets=[1, 2], dataset=digits, checkpointing="all")
    fallback = compute_magic(config, targets=[1, 2], dataset=digits, checkpointing="all", compile=True)
    assert torch.equal(fallback.scores, eager.scores)
    assert fallback.stats.vjp_path == "looped (compiling failed: RuntimeError: no C++ compiler)"


def _logits(config, dataset, targets):
    config = prepare_config(config)
    trainer = Trainer(config, None, dataset=dataset, progress=False)
    trainer.fit()
    model = trainer.trained_model()
    x = trainer.parts.eval_images(dataset.test.images[targets], 0, len(targets))
    with torch.no_grad():
        return model(x)


def test_custom_measurement_callable(digits):
    config = build_config(tiny_raw())
    calls = []
    loss = compute_magic(config, targets=[0, 1], dataset=digits, checkpointing="all",
                         progress=lambda done, total: calls.append((done, total)))
    assert calls == [(t, 8) for t in range(1, 9)]
    doubled = compute_magic(config, targets=[0, 1], dataset=digits, checkpointing="all",
                            measure=lambda logits, y: 2 * F.cross_entropy(logits, y, reduction="none"))
    assert doubled.measurement.startswith("custom:")
    torch.testing.assert_close(doubled.scores, 2 * loss.scores)


@pytest.mark.parametrize("key,value,needle", [
    ("train.precision", "bf16", "train.precision"),
    ("train.compile", True, "train.compile"),
    ("schedule.name", "plateau", "schedule.name"),
])
def test_refuses_what_cannot_be_differentiated_exactly(key, value, needle):
    raw = tiny_raw()
    section, field = key.split(".")
    raw[section][field] = value
    with pytest.raises(ConfigError, match=needle):
        prepare_config(build_config(raw))


def test_refuses_ema_early_stopping_dropout_and_nondeterministic_cuda(digits, monkeypatch):
    raw = tiny_raw()
    raw["train"]["ema"] = {"decay": 0.9}
    with pytest.raises(ConfigError, match="train.ema"):
        prepare_config(build_config(raw))
    raw = tiny_raw()
    raw["callbacks"] = {"early_stopping": {"patience": 1}}
    with pytest.raises(ConfigError, match="callbacks.early_stopping"):
        prepare_config(build_config(raw))
    raw = tiny_raw()
    raw["model"]["options"]["dropout"] = 0.2
    with pytest.raises(ConfigError, match="model.options.dropout"):
        compute_magic(build_config(raw), targets=[0], dataset=digits)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="data-parallel"):
        prepare_config(build_config(tiny_raw()))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    with pytest.raises(ConfigError, match="train.deterministic"):
        check_determinism(torch.device("cuda"))


def test_bn_stats_forced_explicit():
    raw = tiny_raw()
    raw["train"]["bn_stats"] = "native"
    assert prepare_config(build_config(raw)).train.bn_stats == "explicit"


def test_warns_about_chaotic_settings(digits):
    smooth = prepare_config(build_config(tiny_raw()))
    assert chaos_warnings(smooth, build_run(smooth, dataset=digits)) == []
    raw = tiny_raw(name="sgd", lr=0.3, momentum=0.9)
    raw["model"]["options"].update(activation="relu", pool="max", batchnorm=False)
    bad = prepare_config(build_config(raw))
    text = " ".join(chaos_warnings(bad, build_run(bad, dataset=digits)))
    assert "ReLU + max pooling" in text and "no BatchNorm" in text and "high learning rate" in text


@pytest.mark.parametrize("name", ["magic_mnist.yaml", "magic_resnet9_cifar10.yaml"])
def test_shipped_magic_configs_are_replayable(name):
    from pathlib import Path

    from cnnlab.engine.config import load_config
    from cnnlab.engine.setup import validate_names

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / name)
    validate_names(config)
    assert prepare_config(config).to_dict() == config.to_dict()  # already explicit BN, fp32, no EMA


def test_parse_targets():
    assert parse_targets("0-3,7,2", 10) == [0, 1, 2, 3, 7]
    assert parse_targets(None, 30) == list(range(30))
    with pytest.raises(ValueError, match=r"targets \(test split\): .5-12. is outside \[0, 10\)"):
        parse_targets("5-12", 10)
    with pytest.raises(ValueError, match="not an index"):
        parse_targets("a-b", 10)


def test_trained_run_keeps_no_autograd_history_in_buffers(digits):
    from cnnlab.attribution.pipeline import CutBufferHistory

    config = prepare_config(build_config(tiny_raw()))
    trainer = Trainer(config, None, dataset=digits, progress=False, callbacks=[CutBufferHistory()])
    trainer.fit()
    assert all(b.grad_fn is None for b in trainer.state.buffers.values())
    replayed = Replay(build_run(config, dataset=digits)).forward()  # and the numbers are unchanged
    assert all(torch.equal(b, replayed.buffers[n]) for n, b in trainer.state.buffers.items())


def test_result_helpers_rank_proponents_and_predict_removals(digits):
    r = compute_magic(build_config(tiny_raw()), targets=[0, 1], dataset=digits, checkpointing="all")
    idx, sc = r.proponents(0, k=3)  # loss: the most negative scores help
    assert torch.equal(sc, r.scores[:, 0].sort().values[:3])
    assert idx.tolist() == [int(r.train_indices[i]) for i in r.scores[:, 0].argsort()[:3]]
    idx, sc = r.opponents(0, k=2)
    assert torch.equal(sc, r.scores[:, 0].sort(descending=True).values[:2])
    torch.testing.assert_close(r.predicted_change(torch.tensor([0, 5])), -(r.scores[0] + r.scores[5]))


def test_recorded_states_are_copies_of_native_bn_buffers_and_skipped_on_resume(digits, tmp_path):
    raw = tiny_raw()
    raw["train"]["bn_stats"] = "native"  # BatchNorm updates its running statistics in place
    config = build_config(raw)
    record = RecordReplayStates("all")
    trainer = Trainer(config, tmp_path / "run", dataset=digits, progress=False, callbacks=[record])
    trainer.fit()
    mean = "features.1.running_mean"
    assert torch.equal(record.states[0].buffers[mean], torch.zeros_like(record.states[0].buffers[mean]))
    assert torch.equal(record.states[max(record.states)].buffers[mean], trainer.state.buffers[mean])
    assert not torch.equal(record.states[1].buffers[mean], record.states[2].buffers[mean])
    resumed = RecordReplayStates("all")
    Trainer(config, tmp_path / "run", dataset=digits, progress=False, callbacks=[resumed]).fit(resume=True)
    assert resumed.states == {}  # a resumed run lacks the early states: it records none


def test_replay_refuses_states_of_another_run(digits):
    config = prepare_config(build_config(tiny_raw()))
    record = RecordReplayStates("all")
    Trainer(config, None, dataset=digits, progress=False, callbacks=[record]).fit()
    parts = build_run(config, dataset=digits)
    measure = lambda s: torch.zeros(1, requires_grad=True)  # noqa: E731 - never reached
    shifted = {p + 1: s for p, s in record.states.items()} | {0: record.states[0]}
    with pytest.raises(ValueError, match="is the state after step"):
        Replay(parts).metagradient(measure, 1, shifted)
    other = prepare_config(build_config({**tiny_raw(), "model": {"name": "tiny_cnn", "options": {"widths": [4, 6]}}}))
    with pytest.raises(ValueError, match="does not belong to this run"):
        Replay(build_run(other, dataset=digits)).metagradient(measure, 1, record.states)
    with pytest.raises(ValueError, match="does not belong to this run"):
        Replay(build_run(config, dataset=digits), dtype=torch.float64).metagradient(measure, 1, record.states)
