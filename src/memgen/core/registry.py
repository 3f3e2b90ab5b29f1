"""Name -> strategy registries (tasks, neuron scorers, probes, intervention ops)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from memgen.core.errors import MemgenError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries filled by a decorator.

    >>> scorers: Registry[Callable] = Registry("scorer")
    >>> @scorers.register("pearson")
    ... def pearson(x, y): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MemgenError(
                f"unknown {self.kind} {name!r}{hint} (available: {', '.join(sorted(self))})"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
