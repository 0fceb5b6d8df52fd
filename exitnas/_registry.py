"""Name → factory registries (timm's ``register_model`` idea), listed by ``exitnas list``."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from exitnas._errors import UserError

__all__ = ["Registry", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'plain'?)`` for the known name closest to a mistyped ``name``, else ``""``."""
    near = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


class Registry(Generic[T]):
    """A named table of factories; unknown names give a :class:`UserError` listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._docs[name] = doc or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: object, key: str | None = None) -> UserError:
        """The one-line error for a name not registered here, naming the config ``key`` that held it."""
        where = f" for {key}" if key else ""
        return UserError(f"unknown {self.kind} {name!r}{where}{did_you_mean(name, self._items)}; "
                         f"known: {', '.join(sorted(self._items))}")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line description) pairs, sorted by name."""
        return [(n, self._docs[n]) for n in sorted(self._items)]
