"""Explicit, verified, resumable downloads (never called at import time).

A file is written to ``<dest>.part`` and renamed onto ``<dest>`` only when it is complete and its checksum
verifies. A lost connection keeps the ``.part`` file and the next attempt asks the server for the rest
(HTTP Range); a server that ignores Range gets a clean restart. A checksum mismatch deletes the ``.part``.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from cnnlab.data.checksums import Checksum, file_checksum
from cnnlab.data.errors import ChecksumError, DownloadError

Progress = Callable[[int, "int | None"], None]
USER_AGENT = "cnnlab-data/1"


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def manual_hint(url: str, dest: Path, expected: Checksum) -> str:
    """How to place a file by hand (offline use)."""
    return (f"to place it by hand: fetch {url} (or the same file from any mirror), check that its "
            f"{expected.algorithm} is {expected.digest}, and save it as {dest}")


class _ShortRead(Exception):
    pass


def _transfer(url: str, part: Path, timeout: float, chunk: int, progress: Progress | None) -> None:
    """One HTTP attempt: resume ``part`` if it exists (Range), else write it from the start."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        start = 0
        if have and status == 206:
            content_range = resp.headers.get("Content-Range", "")
            try:
                start = int(content_range.split()[1].split("-")[0])
            except (IndexError, ValueError):
                start = -1
            if start != have:  # the server answered a different range: start over
                resp.close()
                part.unlink(missing_ok=True)
                raise _ShortRead(f"server answered range {content_range!r} for a resume at byte {have}")
        length = resp.headers.get("Content-Length")
        expected_len = int(length) if length is not None and length.isdigit() else None
        total = None if expected_len is None else start + expected_len
        done = 0
        with open(part, "ab" if start else "wb") as f:
            while True:
                block = resp.read(chunk)
                if not block:
                    break
                f.write(block)
                done += len(block)
                if progress:
                    progress(start + done, total)
            f.flush()
            os.fsync(f.fileno())
        if expected_len is not None and done < expected_len:
            raise _ShortRead(f"connection closed after {start + done} of {total} bytes")


def download_file(
    url: str,
    dest: str | os.PathLike,
    expected: Checksum,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and verify it against ``expected``; resume an earlier partial download.

    Raises :class:`DownloadError` (transfer failed; the ``.part`` is kept for resuming) or
    :class:`ChecksumError` (the complete file has the wrong checksum; nothing is kept).
    """
    dest = Path(dest)
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"cannot download {url!r}: only http(s) and file URLs are supported")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    last_error = ""
    for _attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, chunk, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and part.exists():  # nothing left to fetch: the .part may already be complete
                break
            if 400 <= e.code < 500:
                part.unlink(missing_ok=True)
                raise DownloadError(f"downloading {dest.name} from {url} failed: HTTP {e.code} {e.reason}; "
                                    f"{manual_hint(url, dest, expected)}") from None
            last_error = f"HTTP {e.code} {e.reason}"
        except (_ShortRead, urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError,
                TimeoutError) as e:
            last_error = str(getattr(e, "reason", None) or e) or type(e).__name__
    else:
        kept = part.stat().st_size if part.exists() else 0
        resume = (f" {kept:,} bytes are kept in {part}; run the same command again to resume."
                  if kept else "")
        raise DownloadError(f"downloading {dest.name} from {url} failed after {retries + 1} attempt(s): "
                            f"{last_error}.{resume} Or {manual_hint(url, dest, expected)}")
    actual = file_checksum(part, expected.algorithm)
    if actual != expected.digest:
        size = part.stat().st_size
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name} downloaded from {url} ({size:,} bytes) has {expected.algorithm} {actual}, expected "
            f"{expected.digest}: the file is truncated, corrupt or a different version, and was deleted. "
            f"Try again or another --mirror, or {manual_hint(url, dest, expected)}",
            path=str(dest), expected=str(expected), actual=f"{expected.algorithm}:{actual}",
        )
    os.replace(part, dest)
    return dest


__all__ = ["download_file", "manual_hint", "part_path"]
