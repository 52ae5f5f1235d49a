"""One parser for index lists given on the command line or in a config: ``"0-49"``, ``"3,7,10-12"``."""

from __future__ import annotations


def parse_index_list(spec: str | int | list[int] | tuple[int, ...], size: int | None = None, *,
                     what: str = "indices") -> list[int]:
    """``"0,3,5-7"`` -> ``[0, 3, 5, 6, 7]``: sorted, unique, inclusive ranges.

    Args:
        spec (str | int | sequence of int): Comma-separated indices and inclusive ranges ``lo-hi``, one int,
            or a list of ints.
        size (int, optional): When given, every index must lie in ``[0, size)``; ranges are checked before
            they are expanded, so ``0-2000000000`` fails at once instead of allocating. Default: unchecked.
        what (str, optional): The option or key the spec came from, named in every error. Default: "indices".

    Raises:
        ValueError: a part that is not an index or a range, a reversed range, an index out of range, or no
            index at all.
    """
    if isinstance(spec, bool):
        raise ValueError(f"{what}: expected indices like 0-49 or 3,7,10-12, got {spec!r}")
    if isinstance(spec, int):
        parts: list[str] = [str(spec)]
    elif isinstance(spec, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            raise ValueError(f"{what}: expected a list of integers, got {list(spec)!r}")
        parts = [str(i) for i in spec]
    elif isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        raise ValueError(f"{what}: expected indices like 0-49 or 3,7,10-12, got {type(spec).__name__}")
    out: set[int] = set()
    for part in parts:
        try:
            if "-" in part[1:]:
                a, b = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                bounds = [lo, hi]
            else:
                lo = hi = int(part)
                bounds = [lo]
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not an index or a range like 0-49 (from {spec!r})") from None
        if size is not None and (min(bounds) < 0 or max(bounds) >= size):
            raise ValueError(f"{what}: {part!r} is outside [0, {size})")
        if lo < 0:
            raise ValueError(f"{what}: {part!r} is negative")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError(f"{what}: no index given")
    return sorted(out)
