"""The routing table: which backends serve a model, in which order. Pure: names in, names out.

A backend with ``serves`` patterns serves the client-side model names they
match (glob patterns as in ``fnmatch``; ``x`` and ``x:latest`` alike), so two
client-side names mapped to one backend model can go to different backends;
one without patterns serves what its own model list shows (discovered, cached
by the router; the lists show client-side names, the backend's names too). A model no
backend is known to serve goes to the backends without patterns, in order,
so a model pulled a moment ago is still found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeVar

from ..translate.catalog import normalize_model_name

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One backend as the table sees it: its name and its ``serves`` patterns."""

    name: str
    patterns: tuple[str, ...] = ()

    def matches(self, names: Iterable[str]) -> bool:
        """True when a pattern matches one of ``names`` (``x`` and ``x:latest`` alike)."""
        for name in names:
            for pattern in self.patterns:
                if fnmatchcase(name, pattern) or fnmatchcase(name.removesuffix(":latest"), pattern):
                    return True
        return False


def model_names(*names: str | None) -> frozenset[str]:
    """The names a request's model goes by (client-side and backend's), normalized."""
    return frozenset(normalize_model_name(n) for n in names if n)


def serving(
    entries: Sequence[Entry], client: str, names: frozenset[str], discovered: Mapping[str, frozenset[str]]
) -> list[str]:
    """The backends known to serve the model a client calls ``client``, in table order.

    ``names`` are all the names the model goes by (:func:`model_names`);
    ``discovered`` holds, for backends without patterns, the names their lists show.
    """
    found = []
    for entry in entries:
        if entry.patterns:
            if entry.matches((client,)):
                found.append(entry.name)
        elif names & discovered.get(entry.name, frozenset()):
            found.append(entry.name)
    return found


def unpatterned(entries: Sequence[Entry]) -> list[str]:
    """The backends that may serve a model nobody is known to serve: those without patterns."""
    return [entry.name for entry in entries if not entry.patterns]


def order(candidates: Sequence[T], is_open: Callable[[T], bool], load: Callable[[T], int] | None) -> list[T]:
    """The order to try ``candidates`` in: closed breakers first, then open ones (a last resort).

    With ``load`` (strategy ``least_busy``), the closed ones go least loaded first,
    ties in table order; open ones stay in table order.
    """
    closed = [c for c in candidates if not is_open(c)]
    opened = [c for c in candidates if is_open(c)]
    if load is not None:
        closed.sort(key=load)  # stable: ties keep table order
    return closed + opened
