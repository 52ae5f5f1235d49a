"""Source files of downloadable datasets: locate, verify, download on request, decode once into the cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from cnnlab.data.cache import cache_path, cached
from cnnlab.data.checksums import Checksum, RemoteDataset, file_checksum, remote_dataset
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.download import Progress, download_file, manual_hint, part_path
from cnnlab.data.errors import ChecksumError, CorruptFileError, DataError, MissingFileError


def raw_dir(root: str | os.PathLike, spec: RemoteDataset) -> Path:
    return Path(root) / "raw" / spec.folder


def file_url(spec: RemoteDataset, name: str, mirror: str | None = None) -> str:
    base = mirror if mirror else spec.base_url
    return base.rstrip("/") + "/" + name


def _check_mirror(mirror: str | None) -> None:
    if mirror is not None and (not isinstance(mirror, str) or "://" not in mirror):
        raise ValueError(f"mirror must be a base URL like 'https://host/path/', got {mirror!r}")


def ensure_files(
    dataset: str,
    root: str | os.PathLike,
    *,
    download: bool = False,
    mirror: str | None = None,
    checksums: Mapping[str, str] | None = None,
    progress: Callable[[str], Progress | None] | None = None,
) -> dict[str, Path]:
    """Paths of ``dataset``'s source files, each verified; missing ones are downloaded only if ``download``.

    A file on disk with the wrong checksum is an error (it is never silently replaced: it may have been
    placed by hand). ``checksums`` overrides expected checksums by file name (mirrors, tests).
    """
    _check_mirror(mirror)
    spec = remote_dataset(dataset)
    expected = spec.expected(checksums)
    folder = raw_dir(root, spec)
    paths: dict[str, Path] = {}
    for name, want in expected.items():
        dest = folder / name
        url = file_url(spec, name, mirror)
        if dest.exists():
            verify_file(dest, want, url=url, dataset=dataset)
        elif download:
            download_file(url, dest, want, progress=progress(name) if progress else None)
        else:
            partial = part_path(dest)
            resume = f" (a partial download {partial.name} is there; the download command resumes it)" if partial.exists() else ""
            raise MissingFileError(
                f"dataset {dataset!r} needs {name} ({want}) in {folder}{resume}. Download it with "
                f"`cnnlab data download {dataset}` (add --mirror URL to use a mirror), or {manual_hint(url, dest, want)}"
            )
        paths[name] = dest
    return paths


def verify_file(path: Path, expected: Checksum, *, url: str, dataset: str) -> None:
    actual = file_checksum(path, expected.algorithm)
    if actual != expected.digest:
        raise ChecksumError(
            f"{path} has {expected.algorithm} {actual}, expected {expected.digest}: it is truncated, corrupt or "
            f"a different version. Delete it and run `cnnlab data download {dataset}`, or {manual_hint(url, path, expected)}",
            path=str(path), expected=str(expected), actual=f"{expected.algorithm}:{actual}",
        )


def file_status(dataset: str, root: str | os.PathLike, *, checksums: Mapping[str, str] | None = None,
                mirror: str | None = None, verify: bool = True) -> list[dict[str, Any]]:
    """One record per source file: path, URL, expected checksum, present, size, verifies (None if not checked)."""
    spec = remote_dataset(dataset)
    out = []
    for name, want in spec.expected(checksums).items():
        path = raw_dir(root, spec) / name
        present = path.exists()
        rec: dict[str, Any] = {"file": name, "path": str(path), "url": file_url(spec, name, mirror),
                               "expected": str(want), "present": present,
                               "size": path.stat().st_size if present else None, "verifies": None}
        if present and verify:
            rec["verifies"] = file_checksum(path, want.algorithm) == want.digest
        partial = part_path(path)
        if partial.exists():
            rec["partial_bytes"] = partial.stat().st_size
        out.append(rec)
    return out


def remote_fingerprint(dataset: str, options: Mapping[str, Any], checksums: Mapping[str, str] | None) -> dict[str, Any]:
    expected = remote_dataset(dataset).expected(checksums)
    return {"files": {k: str(v) for k, v in sorted(expected.items())}, "options": dict(options)}


def remote_cache_path(dataset: str, root: str | os.PathLike, options: Mapping[str, Any],
                      checksums: Mapping[str, str] | None = None) -> Path:
    return cache_path(root, dataset, remote_fingerprint(dataset, options, checksums))


def load_remote(
    dataset: str,
    root: str | os.PathLike,
    download: bool,
    *,
    options: Mapping[str, Any],
    checksums: Mapping[str, str] | None,
    mirror: str | None,
    decode: Callable[[dict[str, Path]], ImageDataset],
) -> ImageDataset:
    """Cache hit -> load; miss -> verify (or download) the files, ``decode`` them, cache the result atomically."""
    _check_mirror(mirror)

    def build() -> ImageDataset:
        paths = ensure_files(dataset, root, download=download, mirror=mirror, checksums=checksums)
        try:
            return decode(paths)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 — report any decoder failure against the files it read
            files = ", ".join(str(p) for p in paths.values())
            raise CorruptFileError(f"cannot decode {dataset!r} from {files}: {type(e).__name__}: {e}. The files "
                                   f"match their expected checksums; if these were overridden, the archive is "
                                   f"not in the official format") from e

    return cached(root, dataset, remote_fingerprint(dataset, options, checksums), build)
