"""One CLI grammar: every option documented, a flag name means one thing in every command, settings are
`--set key=value` everywhere, and the old spellings still work for a release with a deprecation line."""

import json

import typer
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.cli.common import RENAMED_FLAGS

runner = CliRunner()

# Every flag used by more than one command, and a word its help must contain in each: one meaning per name.
MEANINGS = {
    "--json": "json", "--out": "", "--set": "=value", "--root": "run-store", "--data-root": "data folder",
    "--device": "cpu", "--force": "", "--progress": "progress", "--no-progress": "progress", "--resume": "continue",
    "--retry-failed": "failed", "--threads": "threads", "--workers": "worker", "--indices": "e.g. 1-8",
    "--mlflow": "mlflow", "--images": "indices", "--methods": "method", "--target": "pred", "--seed": "seed",
    "--batch-size": "", "--num-classes": "classes", "--in-channels": "channels", "--checksums": "checksum",
    "--all": "", "--address": "ray", "--dry-run": "job script", "--executor": "slurm", "--index": "1-based",
    "--max-concurrent": "at once", "--rerun-stale": "stored config", "--metrics": "infidelity", "--no-metrics": "infidelity", "--perturb-samples": "perturbations",
}


def _commands(cmd=None, path=()):
    cmd = cmd or typer.main.get_command(app)
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield " ".join(path), cmd


def _options():
    for path, cmd in _commands():
        for p in cmd.params:
            if p.param_type_name == "option" and not getattr(p, "hidden", False):
                yield path, p


def test_every_option_has_help():
    missing = [f"{path} {'/'.join(p.opts)}" for path, p in _options() if not (p.help or "").strip()]
    assert missing == []


def test_a_flag_name_means_one_thing():
    uses: dict[str, list[tuple[str, str]]] = {}
    for path, p in _options():
        for flag in p.opts + p.secondary_opts:
            uses.setdefault(flag, []).append((path, (p.help or "").lower()))
    shared = {f: u for f, u in uses.items() if len({path for path, _ in u}) > 1 and f != "--help"}
    unexplained = sorted(set(shared) - set(MEANINGS))
    assert unexplained == [], f"flags shared by several commands need one stated meaning in MEANINGS: {unexplained}"
    for flag, where in shared.items():
        for path, text in where:
            assert MEANINGS[flag] in text, f"`cnnlab {path} {flag}` does not mean {MEANINGS[flag]!r}: {text!r}"
    assert "--models" not in shared  # a pattern in `profile`; `lds` counts with --num-models


def test_no_old_spelling_is_still_a_flag():
    flags = {(path, f) for path, p in _options() for f in p.opts + p.secondary_opts}
    for command, renames in RENAMED_FLAGS.items():
        for old, new in renames.items():
            assert (command, new) in flags, (command, new)
            assert (command, old) not in flags, (command, old)


def test_settings_are_set_everywhere_and_old_spellings_warn(tmp_path):
    for command in ("train", "magic", "population train", "population es", "sweep run", "results", "mi",
                    "data info", "explain maps", "explain compare"):
        assert any(path == command and "--set" in p.opts for path, p in _options()), command
    res = runner.invoke(app, ["data", "info", "synthetic", "--root", str(tmp_path), "-o", "size=8", "--option=n_train=20", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["train_size"] == 20 and info["shape"][-1] == 8
    for old, new in (("--root", "--data-root"), ("-o", "--set"), ("--option", "--set")):
        assert f"`cnnlab data info {old}` is deprecated" in " ".join(res.stderr.split()) and new in res.stderr
    new = runner.invoke(app, ["data", "info", "synthetic", "--data-root", str(tmp_path), "--set", "size=8", "--json"])
    assert new.exit_code == 0 and "deprecated" not in new.stderr


def test_positional_and_set_overrides_are_the_same(tmp_path):
    a = runner.invoke(app, ["train", "train.epochs=1", "data.subset=64", "--out", str(tmp_path / "a"), "--json", "--no-progress"])
    b = runner.invoke(app, ["train", "--set", "train.epochs=1", "--set", "data.subset=64", "--out", str(tmp_path / "b"),
                            "--json", "--no-progress"])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["final"]["test_acc"] == rb["final"]["test_acc"] and ra["epochs_completed"] == 1


def test_an_error_is_one_line_however_long_its_path(tmp_path):
    from typer.testing import CliRunner

    from cnnlab.cli import app

    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6) / "missing.yaml"
    res = CliRunner().invoke(app, ["sweep", "plan", str(deep)])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(deep) in lines[0], res.output
