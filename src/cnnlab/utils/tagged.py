"""Loading a cnnlab torch file: every file cnnlab writes is a dict with a ``"format"`` tag naming what it is
(a checkpoint, a scores file, a population state), read back safely (``weights_only=True``) and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TaggedFileError(ValueError):
    """A file that cannot be read, or that is not the cnnlab format asked for."""


def load_tagged(path: str | Path, fmt: str | tuple[str, ...], *, what: str = "file",
                map_location: Any = "cpu") -> dict[str, Any]:
    """Load ``path`` with ``torch.load(weights_only=True)`` and check that it is a dict tagged ``fmt``.

    Args:
        path (str | Path): The file.
        fmt (str | tuple of str): The accepted ``"format"`` tag(s), e.g. ``"cnnlab-checkpoint-v1"``.
        what (str, optional): What the file is, for error messages ("checkpoint", "scores file").
            Default: "file".
        map_location (optional): Passed to ``torch.load``. Default: "cpu".

    Raises:
        TaggedFileError: the file is missing, truncated, not a torch file, or carries another tag.
    """
    import torch

    path = Path(path)
    accepted = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if not path.is_file():
        raise TaggedFileError(f"{what} {path} does not exist")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, foreign or pickled-code file
        raise TaggedFileError(f"cannot read {what} {path}: {e}") from None
    tag = blob.get("format") if isinstance(blob, dict) else None
    if tag not in accepted:
        found = f"its format tag is {tag!r}" if tag is not None else "it has no cnnlab format tag"
        raise TaggedFileError(f"{path} is not a {' or '.join(accepted)} {what}: {found}")
    return blob
