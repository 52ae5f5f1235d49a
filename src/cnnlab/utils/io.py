"""File writes that never leave a half-written result that looks complete, never follow a link out of the
directory they write in, and create files with the process umask (like ``open``), not mkstemp's 0600."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2's exponent floats: ``1e-3`` is a number, not the string "1e-3"."""


YamlLoader.add_implicit_resolver(  # copies the inherited resolver table before adding to it
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml_text(text: str) -> Any:
    """Parse YAML text the way every cnnlab config, sweep and override is read (:class:`YamlLoader`)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


class PathEscapeError(ValueError):
    """A path inside a run directory resolves (through a symbolic link or '..') to a place outside it."""


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def ensure_contained(root: str | os.PathLike, *names: str | os.PathLike) -> None:
    """Raise PathEscapeError if ``root/name`` (for any name) resolves outside ``root`` (a symlinked
    ``checkpoints/`` or ``metrics.jsonl`` pointing elsewhere, ``..``). Missing paths are fine."""
    base = Path(root).resolve()
    for name in names:
        target = (Path(root) / name).resolve()
        if target != base and base not in target.parents:
            raise PathEscapeError(f"{Path(root) / name} leads outside the run directory {root} (to {target}); "
                                  "cnnlab does not write or delete through it: replace the link with a real folder or file")


def safe_unlink(root: str | os.PathLike, name: str | os.PathLike) -> bool:
    """Delete ``root/name`` if it exists (a link itself, never its target), only when its folder is inside
    ``root``. True if something was removed."""
    path = Path(root) / name
    ensure_contained(root, Path(name).parent)
    try:
        os.unlink(path)  # unlink never follows a final symlink
    except (FileNotFoundError, IsADirectoryError):
        return False
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The rename replaces a symbolic link at ``path`` (it never writes through it); the file gets the
    permissions ``open`` would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    torch = sys.modules.get("torch")  # never imported here: a tensor exists only if torch already is
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_json_default)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, to_json(obj) + "\n")


def write_yaml_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> None:
    """torch.save via a temp file + rename, so a killed process never leaves a truncated checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it (a metrics log that survives a kill up to the last line).

    Opened with O_NOFOLLOW: a symbolic link in place of the log is an error, never appended through."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        if Path(path).is_symlink():
            raise PathEscapeError(f"{path} is a symbolic link; cnnlab does not append through it") from None
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL log, ignoring a final partial line left by a killed writer."""
    records: list[dict] = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
