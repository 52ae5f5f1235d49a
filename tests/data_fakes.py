"""Small archives in the official formats and a loopback HTTP server for the data tests (no real downloads)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field

import numpy as np


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0, 0, dtype 0x08 (uint8), ndim, big-endian sizes, data."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def fake_mnist(n_train: int = 12, n_test: int = 6, seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The four MNIST .gz files (bytes by name) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    files = {
        "train-images-idx3-ubyte.gz": gz(idx_bytes(arrays["train_images"])),
        "train-labels-idx1-ubyte.gz": gz(idx_bytes(arrays["train_labels"])),
        "t10k-images-idx3-ubyte.gz": gz(idx_bytes(arrays["test_images"])),
        "t10k-labels-idx1-ubyte.gz": gz(idx_bytes(arrays["test_labels"])),
    }
    return files, arrays


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the official files are protocol-2 pickles with byte-string keys


def fake_cifar10(per_batch: int = 4, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    members, train_x, train_y = {}, [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        members[f"cifar-10-batches-py/data_batch_{i}"] = _pickle({b"batch_label": b"training batch", b"data": x, b"labels": y})
        train_x.append(x)
        train_y += y
    tx = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    ty = rng.integers(0, 10, per_batch).tolist()
    members["cifar-10-batches-py/test_batch"] = _pickle({b"data": tx, b"labels": ty})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    members["cifar-10-batches-py/batches.meta"] = _pickle({b"label_names": names, b"num_vis": 3072})
    arrays = {"train_images": np.concatenate(train_x).reshape(-1, 3, 32, 32), "train_labels": np.array(train_y),
              "test_images": tx.reshape(-1, 3, 32, 32), "test_labels": np.array(ty)}
    return _tar_gz(members), arrays


def fake_cifar100(n: int = 6, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    members = {}
    for part in ("train", "test"):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        members[f"cifar-100-python/{part}"] = _pickle({b"data": x, b"fine_labels": fine, b"coarse_labels": coarse})
        out[f"{part}_images"], out[f"{part}_fine"], out[f"{part}_coarse"] = x.reshape(-1, 3, 32, 32), np.array(fine), np.array(coarse)
    members["cifar-100-python/meta"] = _pickle({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return _tar_gz(members), out


def fake_emnist_zip(split: str = "letters", n: int = 5, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """gzip.zip with one split; images stored transposed, letters labelled 1..26 (as in the official files)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    out = {}
    hi, lo = (27, 1) if split == "letters" else (47, 0)
    with zipfile.ZipFile(buf, "w") as z:
        for part in ("train", "test"):
            upright = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels = rng.integers(lo, hi, n).astype(np.uint8)
            stored = np.ascontiguousarray(upright.transpose(0, 2, 1))
            z.writestr(f"gzip/emnist-{split}-{part}-images-idx3-ubyte.gz", gz(idx_bytes(stored)))
            z.writestr(f"gzip/emnist-{split}-{part}-labels-idx1-ubyte.gz", gz(idx_bytes(labels)))
            out[f"{part}_images"], out[f"{part}_labels"] = upright, labels
    return buf.getvalue(), out


@dataclass
class Behaviour:
    """How the server answers one file: broken bytes, cut connections, Range support, HTTP status."""

    data: bytes
    cut_first: int = 0          # the first `cut_first` GETs send Content-Length = full size but stop halfway
    ignore_range: bool = False  # answer 200 with the whole file even when a Range is asked for
    status: int = 200


@dataclass
class LoopbackServer:
    """An HTTP server on 127.0.0.1 (in-process thread) serving ``files`` by path; logs (path, Range) per GET."""

    files: dict[str, Behaviour] = field(default_factory=dict)
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                b = server.files.get(path)
                if b is None or b.status != 200:
                    self.send_error(404 if b is None else b.status)
                    return
                data, start = b.data, 0
                if rng and not b.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if b.cut_first > 0:
                    b.cut_first -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, folder: str, name: str, data: bytes, **kw) -> None:
        self.files[f"/{folder}/{name}"] = Behaviour(data, **kw)

    def gets(self, name: str) -> list[str | None]:
        return [r for p, r in self.log if p.endswith("/" + name)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
