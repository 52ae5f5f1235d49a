"""tools/install-torch.sh (what `make setup` runs): which torch build each kind of machine gets, and that it says so."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "install-torch.sh"


def _run(tmp_path: Path, *, cuda: bool, index_answers: bool, index: str = "https://cpu.example/whl"):
    tmp_path.mkdir()
    log = tmp_path / "calls.log"
    py = tmp_path / "py"  # stands in for the venv's python: `-c` probes the index, `-m pip` is logged
    py.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then exit {0 if index_answers else 1}; fi\necho \"$@\" >> {log}\n")
    py.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if cuda:
        (bindir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake'\n")
        (bindir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PY": str(py), "TORCH_INDEX": index}
    out = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, cwd=SCRIPT.parent.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout, log.read_text().split()


@pytest.mark.skipif(os.name != "posix", reason="a POSIX shell script")
def test_each_machine_gets_the_build_it_should(tmp_path):
    said, pip = _run(tmp_path / "cpu", cuda=False, index_answers=True)
    assert "(CPU build) from https://cpu.example/whl" in said and pip[pip.index("--index-url") + 1] == "https://cpu.example/whl"
    calls = [pip]
    said, pip = _run(tmp_path / "offline", cuda=False, index_answers=False)
    assert "not reachable" in said and "--index-url" not in pip and "torch" in pip
    calls.append(pip)
    said, pip = _run(tmp_path / "gpu", cuda=True, index_answers=True)
    assert "CUDA device found" in said and "--index-url" not in pip
    calls.append(pip)
    for call in calls:
        assert call[:3] == ["-m", "pip", "install"] and "constraints.txt" in call  # always the pinned version
