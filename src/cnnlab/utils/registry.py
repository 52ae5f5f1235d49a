"""One registry shape for every extension point (models, data sources, explanation and attribution methods,
executors, search strategies): register by name with a decorator, look up with a did-you-mean error."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by ``@registry.register("name")`` (or ``registry.register("name", obj)``).

    Args:
        kind (str): What the entries are, in the singular ("model", "executor"); used in error messages.
        error (type[Exception], optional): The exception an unknown name raises; ``KeyError`` subclasses and
            ``ValueError`` subclasses both work. Default: ``KeyError``.
        hint (str, optional): A sentence appended to the unknown-name error, e.g. which command lists the
            entries. Default: none.
    """

    def __init__(self, kind: str, *, error: type[Exception] = KeyError, hint: str = "") -> None:
        self.kind = kind
        self.error = error
        self.hint = hint
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Callable[[T], T] | T:
        """Add ``obj`` under ``name``; without ``obj``, return a decorator that adds what it decorates.
        A name already taken is refused (``ValueError``) unless ``replace=True``."""

        def add(value: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is registered twice (pass replace=True to replace it)")
            self._entries[name] = value
            return value

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name raises ``self.error`` naming the closest entries."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        message = f"unknown {self.kind} {name!r}.{hint} Known: {known}." + (f" {self.hint}" if self.hint else "")
        raise self.error(message)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
