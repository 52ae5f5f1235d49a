"""The download path end to end against a loopback HTTP server: verify, resume, restart, refuse bad files."""

import hashlib

import pytest

from cnnlab.data import load_dataset
from cnnlab.data.checksums import Checksum, OFFICIAL
from cnnlab.data.download import download_file, part_path
from cnnlab.data.errors import ChecksumError, DownloadError, MissingFileError
from cnnlab.data.remote import ensure_files

from data_fakes import LoopbackServer, fake_mnist, md5


@pytest.fixture
def server():
    s = LoopbackServer()
    yield s
    s.close()


@pytest.fixture
def payload():
    return bytes(range(256)) * 400  # 102,400 bytes


def _sum(data: bytes) -> Checksum:
    return Checksum.parse(md5(data))


def test_download_verifies_and_renames(server, payload, tmp_path):
    server.serve("d", "f.bin", payload)
    dest = download_file(f"{server.url}/d/f.bin", tmp_path / "f.bin", _sum(payload), chunk=4096)
    assert dest.read_bytes() == payload and not part_path(dest).exists()
    sha = Checksum.parse("sha256:" + hashlib.sha256(payload).hexdigest())
    assert download_file(f"{server.url}/d/f.bin", tmp_path / "g.bin", sha).read_bytes() == payload


def test_checksum_mismatch_names_file_and_both_checksums_and_keeps_nothing(server, payload, tmp_path):
    server.serve("d", "f.bin", payload[:-1] + b"X")
    want = _sum(payload)
    with pytest.raises(ChecksumError) as err:
        download_file(f"{server.url}/d/f.bin", tmp_path / "f.bin", want)
    msg = str(err.value)
    assert "f.bin" in msg and want.digest in msg and hashlib.md5(payload[:-1] + b"X").hexdigest() in msg
    assert "place it by hand" in msg and str(tmp_path / "f.bin") in msg
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_rejected(server, payload, tmp_path):
    server.serve("d", "f.bin", payload[:5000])  # a complete transfer of a truncated file
    with pytest.raises(ChecksumError, match="truncated, corrupt or a different version"):
        download_file(f"{server.url}/d/f.bin", tmp_path / "f.bin", _sum(payload))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_is_kept_and_resumed(server, payload, tmp_path):
    server.serve("d", "f.bin", payload, cut_first=1)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_file(f"{server.url}/d/f.bin", dest, _sum(payload), retries=0)
    assert not dest.exists() and part_path(dest).stat().st_size == len(payload) // 2
    download_file(f"{server.url}/d/f.bin", dest, _sum(payload), retries=0)
    assert dest.read_bytes() == payload and not part_path(dest).exists()
    assert server.gets("f.bin") == [None, f"bytes={len(payload) // 2}-"]


def test_interruption_is_retried_within_one_call(server, payload, tmp_path):
    server.serve("d", "f.bin", payload, cut_first=2)
    dest = download_file(f"{server.url}/d/f.bin", tmp_path / "f.bin", _sum(payload), retries=3)
    assert dest.read_bytes() == payload
    half, quarter = len(payload) // 2, len(payload) // 2 + (len(payload) - len(payload) // 2) // 2
    assert server.gets("f.bin") == [None, f"bytes={half}-", f"bytes={quarter}-"]


def test_server_ignoring_range_restarts_cleanly(server, payload, tmp_path):
    server.serve("d", "f.bin", payload, ignore_range=True)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"stale bytes from an older attempt")
    download_file(f"{server.url}/d/f.bin", dest, _sum(payload))
    assert dest.read_bytes() == payload


def test_http_error_is_clear(server, payload, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*place it by hand"):
        download_file(f"{server.url}/d/missing.bin", tmp_path / "x.bin", _sum(payload))
    assert list(tmp_path.iterdir()) == []


def test_mnist_download_end_to_end_then_cache_then_offline(server, tmp_path):
    files, arrays = fake_mnist()
    for name, data in files.items():
        server.serve("mnist", name, data)
    sums = {name: md5(data) for name, data in files.items()}
    root = tmp_path / "data"
    ds = load_dataset("mnist", root, download=True, mirror=f"{server.url}/mnist/", checksums=sums)
    assert ds.train.images.shape == (12, 1, 28, 28) and ds.test.images.shape == (6, 1, 28, 28)
    assert (ds.train.images[:, 0].numpy() == arrays["train_images"]).all()
    assert (ds.test.labels.numpy() == arrays["test_labels"]).all()
    assert sorted(p.name for p in (root / "raw" / "mnist").iterdir()) == sorted(files)
    n_requests = len(server.log)
    # second load: from the cache, no network, even with the raw files gone
    for p in (root / "raw" / "mnist").iterdir():
        p.unlink()
    again = load_dataset("mnist", root, checksums=sums)
    assert len(server.log) == n_requests
    assert (again.train.images == ds.train.images).all() and again.meta["cache"].endswith(".pt")


def test_official_checksums_guard_the_cache(server, tmp_path):
    """Without overrides the fake files fail the official MD5s: clear error, nothing cached or kept."""
    files, _ = fake_mnist()
    for name, data in files.items():
        server.serve("mnist", name, data)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as err:
        load_dataset("mnist", root, download=True, mirror=f"{server.url}/mnist")
    assert OFFICIAL["mnist"].files[0].checksum.split(":")[1] in str(err.value)
    assert not (root / "cache").exists()
    assert list((root / "raw" / "mnist").iterdir()) == []


def test_offline_missing_file_error_says_what_to_do(tmp_path):
    with pytest.raises(MissingFileError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert "cnnlab data download cifar10" in msg and str(tmp_path / "raw" / "cifar10") in msg


def test_partial_download_is_mentioned_and_resumed_by_ensure_files(server, tmp_path):
    files, _ = fake_mnist()
    for name, data in files.items():
        server.serve("m", name, data, cut_first=1)
    sums = {name: md5(data) for name, data in files.items()}
    name = "train-images-idx3-ubyte.gz"
    with pytest.raises(DownloadError):
        download_file(f"{server.url}/m/{name}", tmp_path / "raw" / "mnist" / name, Checksum.parse(sums[name]), retries=0)
    with pytest.raises(MissingFileError, match="partial download"):
        ensure_files("mnist", tmp_path, checksums=sums)
    paths = ensure_files("mnist", tmp_path, download=True, mirror=f"{server.url}/m", checksums=sums)
    assert paths[name].read_bytes() == files[name]
    assert server.gets(name)[-1].startswith("bytes=")


def test_bad_mirror_and_override_are_named(tmp_path):
    with pytest.raises(ValueError, match="mirror must be a base URL"):
        load_dataset("mnist", tmp_path, download=True, mirror="not a url")
    with pytest.raises(ValueError, match="unknown file 'nope.gz'"):
        load_dataset("mnist", tmp_path, checksums={"nope.gz": "md5:" + "0" * 32})
    with pytest.raises(ValueError, match="checksum for t10k-images-idx3-ubyte.gz must be"):
        load_dataset("mnist", tmp_path, checksums={"t10k-images-idx3-ubyte.gz": "md5:xyz"})


def test_complete_partial_file_is_verified_and_kept(server, payload, tmp_path):
    """A .part that already holds the whole file (killed before the rename): the server answers 416."""
    server.serve("d", "f.bin", payload)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(payload)
    download_file(f"{server.url}/d/f.bin", dest, _sum(payload))
    assert dest.read_bytes() == payload and server.gets("f.bin") == [f"bytes={len(payload)}-"]
