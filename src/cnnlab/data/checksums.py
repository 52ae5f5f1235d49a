"""The one table of official dataset files (URLs + checksums), and checksum parsing/verification."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Mapping

ALGORITHMS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class Checksum:
    """``algorithm`` (md5 or sha256) + lowercase hex digest; ``str()`` gives ``"md5:<hex>"``."""

    algorithm: str
    digest: str

    @classmethod
    def parse(cls, text: str, *, what: str = "checksum") -> "Checksum":
        """Parse ``"md5:<hex>"``, ``"sha256:<hex>"`` or a bare hex digest (its length picks the algorithm)."""
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string like 'md5:<32 hex>' or 'sha256:<64 hex>', got {text!r}")
        raw = text.strip().lower()
        algo, sep, digest = raw.partition(":")
        if not sep:
            digest = raw
            algo = next((a for a, n in ALGORITHMS.items() if n == len(raw)), "")
        if algo not in ALGORITHMS or len(digest) != ALGORITHMS[algo] or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{what} must be 'md5:<32 hex>' or 'sha256:<64 hex>' (or the bare hex digest), got {text!r}")
        return cls(algo, digest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


def file_checksum(path: str | os.PathLike, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    name: str
    checksum: str  # "md5:<hex>" or "sha256:<hex>"


@dataclass(frozen=True)
class RemoteDataset:
    """Files of one downloadable dataset: fetched from ``base_url + name`` into ``<root>/raw/<folder>/``."""

    folder: str
    base_url: str
    files: tuple[RemoteFile, ...]
    homepage: str
    note: str = ""

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"{name!r} is not a file of {self.folder}; files: {', '.join(f.name for f in self.files)}")

    def expected(self, overrides: Mapping[str, str] | None = None) -> dict[str, Checksum]:
        """Expected checksum per file name, with ``overrides`` (file name -> checksum) applied and validated."""
        out = {f.name: Checksum.parse(f.checksum) for f in self.files}
        for name, value in (overrides or {}).items():
            if name not in out:
                raise ValueError(f"checksum override for unknown file {name!r}; {self.folder} has: {', '.join(out)}")
            out[name] = Checksum.parse(value, what=f"checksum for {name}")
        return out


def _md5_files(*pairs: tuple[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, f"md5:{md5}") for name, md5 in pairs)


# The MNIST format's files per split, (images, labels): MNIST and Fashion-MNIST publish the same four names.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _mnist_format(train_images: str, train_labels: str, test_images: str, test_labels: str) -> tuple[RemoteFile, ...]:
    """The four MNIST-format IDX gzip files with their md5 digests."""
    names = IDX_FILES["train"] + IDX_FILES["test"]
    return _md5_files(*zip(names, (train_images, train_labels, test_images, test_labels)))


# Official files. MNIST's origin is yann.lecun.com/exdb/mnist; PyTorch's S3 mirror serves the same bytes
# (same md5) and is the more reliable default. --mirror replaces the base URL for any dataset.
OFFICIAL: dict[str, RemoteDataset] = {
    "mnist": RemoteDataset(
        folder="mnist",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=_mnist_format("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                            "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        homepage="http://yann.lecun.com/exdb/mnist/",
        note="same files as http://yann.lecun.com/exdb/mnist/ (PyTorch mirror)",
    ),
    "fashion_mnist": RemoteDataset(
        folder="fashion_mnist",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=_mnist_format("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "emnist": RemoteDataset(
        folder="emnist",
        base_url="https://biometrics.nist.gov/cs_links/EMNIST/",
        files=_md5_files(("gzip.zip", "58c8d27c78d21e728a6bc7b3cc06412e")),
        homepage="https://www.nist.gov/itl/products-and-services/emnist-dataset",
        note="one ~560 MB archive holding all six splits as IDX gzip files under gzip/",
    ),
    **{f"cifar{n}": RemoteDataset(
        folder=f"cifar{n}",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=_md5_files((f"cifar-{n}-python.tar.gz", md5)),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ) for n, md5 in ((10, "c58f30108f718f92721af3b95e74349a"), (100, "eb9058c3a382ffc7106e4002c42a8d85"))},
}


def remote_dataset(name: str) -> RemoteDataset:
    if name not in OFFICIAL:
        raise KeyError(f"{name!r} has no downloadable files; downloadable datasets: {', '.join(sorted(OFFICIAL))}")
    return OFFICIAL[name]
