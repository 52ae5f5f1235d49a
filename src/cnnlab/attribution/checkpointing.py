"""Where the replay keeps training states while it walks the run backwards.

Reversing step t needs state t. A strategy says, for a segment [a, b) of steps at recursion depth d,
either "store every state of the segment" (a leaf) or the chunk-start positions to store while running
forward through it; the chunks are then reversed last-first, each recursively.

- ``all``: one leaf: every state of the run is stored (T states, no recompute).
- ``sqrt``: ~sqrt(T) chunk starts, each chunk a leaf (~2 sqrt(T) states, ~T recomputed steps).
- ``log``: lazy k-ary tree (O(k log_k T) states, O(T log_k T) recomputed steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class Checkpointing:
    """Base class: ``split(a, b, depth)`` -> chunk starts (first == a), or None for a leaf."""

    name = ""

    def split(self, a: int, b: int, depth: int) -> list[int] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class StoreAll(Checkpointing):
    name = "all"

    def split(self, a: int, b: int, depth: int) -> list[int] | None:
        return None


class SqrtCheckpoints(Checkpointing):
    name = "sqrt"

    def split(self, a: int, b: int, depth: int) -> list[int] | None:
        n = b - a
        if depth > 0 or n <= 2:
            return None
        size = math.ceil(math.sqrt(n))
        return list(range(a, b, size))


@dataclass
class TreeCheckpoints(Checkpointing):
    """k chunk starts per level until a segment has at most ``leaf`` steps (default k)."""

    k: int = 4
    leaf: int | None = None
    name = "log"

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"the log checkpointing tree needs k >= 2 chunks per level, got {self.k}")

    def split(self, a: int, b: int, depth: int) -> list[int] | None:
        n = b - a
        if n <= (self.leaf or self.k):
            return None
        return sorted({a + (j * n) // self.k for j in range(self.k)})

    def describe(self) -> str:
        return f"log(k={self.k})"


STRATEGIES = {"all": StoreAll, "sqrt": SqrtCheckpoints, "log": TreeCheckpoints}


def make_checkpointing(name: str | Checkpointing, k: int = 4) -> Checkpointing:
    """``all`` | ``sqrt`` | ``log`` (with ``k`` chunks per level), or an instance."""
    if isinstance(name, Checkpointing):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"checkpointing must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return TreeCheckpoints(k) if name == "log" else STRATEGIES[name]()
