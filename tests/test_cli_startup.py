"""`cnnlab --help`, `--version` and every command's `--help` answer without importing torch (fast start)."""

import subprocess
import sys

PROBE = r"""
import sys
import typer
from typer.testing import CliRunner
from cnnlab.cli import app

root = typer.main.get_command(app)

def paths(cmd, prefix=()):
    yield prefix
    if hasattr(cmd, "commands"):  # a group (typer may vendor its own click)
        for name, sub in cmd.commands.items():
            yield from paths(sub, prefix + (name,))

runner = CliRunner()
checked = 0
for path in paths(root):
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, (path, res.output)
    checked += 1
assert runner.invoke(app, ["--version"]).output.startswith("cnnlab ")
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(checked, len(loaded))
"""


def test_help_and_version_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    checked, torch_modules = map(int, out.stdout.split())
    assert checked > 20  # the root, every group and every command
    assert torch_modules == 0
