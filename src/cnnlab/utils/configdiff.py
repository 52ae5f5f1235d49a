"""Comparing two resolved configs, and the one message every 'cannot resume / cannot reuse' refusal prints."""

from __future__ import annotations

from typing import Any, Iterable


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists and scalars are leaves."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "", *,
                ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two nested config dicts differ, by key (a key
    one side lacks reads as None); keys in ``ignore``, and the keys below them, are skipped."""
    skip = tuple(ignore)
    out: list[tuple[str, Any, Any]] = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if any(key == s or key.startswith(s + ".") for s in skip):
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{key}.", ignore=skip)
        elif a != b:
            out.append((key, a, b))
    return out


def mismatch_message(action: str, where: Any, diff: list[tuple[str, Any, Any]], *, limit: int = 6,
                     hint: str = "") -> str:
    """``"cannot resume runs/x: its config differs at train.lr (0.1 -> 0.2), ..."`` plus ``hint``."""
    shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in diff[:limit])
    more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
    return f"cannot {action} {where}: its config differs from this one at {shown}{more}" + (f". {hint}" if hint else "")
