"""``cnnlab data list | info | download`` (downloads only from the in-process loopback server)."""

import json

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app

from data_fakes import LoopbackServer, fake_cifar100, fake_mnist, md5

runner = CliRunner()


@pytest.fixture
def mnist_server():
    files, arrays = fake_mnist()
    s = LoopbackServer()
    for name, data in files.items():
        s.serve("mnist", name, data)
    yield s, files, arrays
    s.close()


def _text(res) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_list_json(tmp_path):
    rows = _json(runner.invoke(app, ["data", "list", "--data-root", str(tmp_path), "--json"]))
    by_name = {r["name"]: r for r in rows}
    assert {"mnist", "fashion_mnist", "emnist", "cifar10", "cifar100", "synthetic", "image_folder", "tensor_file",
            "digits"} <= set(by_name)
    assert by_name["mnist"]["kind"] == "download" and by_name["mnist"]["status"] == "not downloaded"
    assert by_name["synthetic"]["kind"] == "procedural"


def test_info_procedural_with_options(tmp_path):
    out = _json(runner.invoke(app, ["data", "info", "synthetic", "--data-root", str(tmp_path), "--set", "n_train=30",
                                    "--set", "size=8", "--set", "num_classes=3", "--json"]))
    assert out["train_size"] == 30 and out["shape"] == [3, 8, 8] and out["num_classes"] == 3
    assert out["options"]["n_test"] == 500 and out["options"]["size"] == 8


def test_download_info_and_verification(tmp_path, mnist_server):
    server, files, arrays = mnist_server
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({name: md5(data) for name, data in files.items()}))
    root = tmp_path / "data"
    out = _json(runner.invoke(app, ["data", "download", "mnist", "--data-root", str(root), "--mirror", f"{server.url}/mnist/",
                                    "--checksums", str(sums), "--json"]))
    assert out["train_size"] == 12 and out["test_size"] == 6 and out["shape"] == [1, 28, 28]
    info = _json(runner.invoke(app, ["data", "info", "mnist", "--data-root", str(root), "--checksums", str(sums), "--json"]))
    assert info["status"] == "cached" and info["cache"]["present"] and info["train_size"] == 12
    assert all(f["present"] and f["verifies"] for f in info["files"])
    # a damaged file is reported as not verifying (against the official checksum table too)
    (root / "raw" / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    info = _json(runner.invoke(app, ["data", "info", "mnist", "--data-root", str(root), "--checksums", str(sums), "--json"]))
    bad = {f["file"]: f["verifies"] for f in info["files"]}
    assert bad["t10k-labels-idx1-ubyte.gz"] is False and bad["t10k-images-idx3-ubyte.gz"] is True
    official = _json(runner.invoke(app, ["data", "info", "mnist", "--data-root", str(root), "--json"]))
    assert official["status"] == "not downloaded" and not any(f["verifies"] for f in official["files"])
    res = runner.invoke(app, ["data", "info", "mnist", "--data-root", str(root)])
    assert res.exit_code == 0 and "source files" in _text(res)


def test_download_checksum_mismatch_is_a_clear_error(tmp_path, mnist_server):
    server, _, _ = mnist_server
    res = runner.invoke(app, ["data", "download", "mnist", "--data-root", str(tmp_path), "--mirror", f"{server.url}/mnist"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "train-images-idx3-ubyte.gz" in _text(res) and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in _text(res)


def test_info_of_missing_dataset_and_bad_usage(tmp_path):
    out = _json(runner.invoke(app, ["data", "info", "cifar10", "--data-root", str(tmp_path), "--json"]))
    assert out["status"] == "not downloaded" and out["files"][0]["present"] is False and "train_size" not in out
    for name, kind in (("synthetic", "procedural"), ("digits", "embedded")):  # a no-op success, like pip's
        out = _json(runner.invoke(app, ["data", "download", name, "--data-root", str(tmp_path), "--json"]))
        assert out["downloaded"] is False and out["kind"] == kind and "nothing to download" in out["reason"]
        assert out["train_size"] > 0
    res = runner.invoke(app, ["data", "download", "digits"])
    assert res.exit_code == 0 and "ships with cnnlab: nothing to download" in _text(res)
    res = runner.invoke(app, ["data", "info", "synthetic", "--set", "size"])
    assert res.exit_code == 2 and "key=value" in _text(res)
    res = runner.invoke(app, ["data", "info", "synthetc"])
    assert res.exit_code == 2 and "Did you mean 'synthetic'" in _text(res)
    res = runner.invoke(app, ["data", "info", "synthetic", "--set", "bogus=1"])
    assert res.exit_code == 2 and "unknown option(s) bogus" in _text(res)
    bad = tmp_path / "sums.json"
    bad.write_text("[1, 2]")
    res = runner.invoke(app, ["data", "download", "mnist", "--checksums", str(bad)])
    assert res.exit_code == 2 and "must map file names to checksums" in _text(res)


def test_info_reports_cache_state_with_default_options(tmp_path):
    data, _ = fake_cifar100()
    folder = tmp_path / "raw" / "cifar100"
    folder.mkdir(parents=True)
    (folder / "cifar-100-python.tar.gz").write_bytes(data)
    sums = tmp_path / "sums.yaml"
    sums.write_text(f"cifar-100-python.tar.gz: '{md5(data)}'\n")
    args = ["data", "info", "cifar100", "--data-root", str(tmp_path), "--checksums", str(sums), "--json"]
    first = _json(runner.invoke(app, args))  # decodes from the verified file placed by hand, then caches
    assert first["files"][0]["verifies"] is True and first["num_classes"] == 100 and first["status"] == "downloaded"
    again = _json(runner.invoke(app, args))
    assert again["status"] == "cached" and again["cache"]["present"]
    coarse = _json(runner.invoke(app, args + ["--set", "labels=coarse"]))
    assert coarse["status"] == "downloaded" and coarse["num_classes"] == 20
