"""Compact storage of request bodies: large repeated pieces once, by hash; exact bytes back.

A request body is cut, at JSON value boundaries found by a small scanner, into
pieces: each value of the top-level object, and each element of its
``messages`` array. Pieces of at least :data:`MIN_BLOB` characters become blobs
keyed by their hash; the rest stays literal text. Nothing is re-encoded: the
pieces are slices of the original text, so joining them gives back the client's
bytes exactly (``join(split(t)) == t`` is checked every time, and any body the
scanner does not understand is simply stored whole).

The recipe is a JSON array: ``"text"`` items are literal, ``["hash"]`` items name
a blob. migrations/sqlite/0003_compact_turns.sql explains the tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson

MIN_BLOB = 128  # characters; smaller pieces cost more as a reference than inline
MIN_BODY = 1024  # bodies shorter than this are stored whole
SPLIT_ARRAYS = frozenset({"messages"})  # top-level arrays whose elements are separate pieces

Recipe = list[str | list[str]]


@dataclass(frozen=True, slots=True)
class Packed:
    """A body as a recipe plus the blobs it names."""

    recipe: str  # JSON text of the recipe
    blobs: dict[str, str]  # hash -> text


def digest(text: str) -> str:
    """The content address of a piece of text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def pack(text: str | None) -> Packed | None:
    """The compact form of ``text``, or None when storing it whole is as good."""
    if text is None or len(text) < MIN_BODY:
        return None
    spans = split(text)
    if spans is None:
        return None
    recipe: Recipe = []
    blobs: dict[str, str] = {}
    literal = ""
    for start, end, big in spans:
        piece = text[start:end]
        if big and len(piece) >= MIN_BLOB:
            if literal:
                recipe.append(literal)
                literal = ""
            key = digest(piece)
            blobs[key] = piece
            recipe.append([key])
        else:
            literal += piece
    if literal:
        recipe.append(literal)
    if not blobs:
        return None
    packed = Packed(orjson.dumps(recipe).decode(), blobs)
    if join(packed.recipe, packed.blobs.__getitem__) != text:  # never store what cannot come back
        return None
    return packed


def join(recipe: str, blob: Callable[[str], str] | Mapping[str, str]) -> str:
    """The original text from a recipe and a way to look blobs up."""
    lookup = blob.__getitem__ if isinstance(blob, Mapping) else blob
    out = []
    for item in orjson.loads(recipe):
        out.append(item if isinstance(item, str) else lookup(item[0]))
    return "".join(out)


def blob_names(recipe: str) -> list[str]:
    """The hashes a recipe names."""
    return [item[0] for item in orjson.loads(recipe) if isinstance(item, list)]


# -- the scanner ---------------------------------------------------------------

_WS = " \t\r\n"


def split(text: str) -> list[tuple[int, int, bool]] | None:
    """Consecutive spans covering ``text``; ``True`` marks a piece worth storing apart.

    Returns None when ``text`` is not a JSON object the scanner can walk.
    """
    try:
        return _split_object(text)
    except (IndexError, ValueError):
        return None


def _split_object(text: str) -> list[tuple[int, int, bool]]:
    spans: list[tuple[int, int, bool]] = []
    i = _skip_ws(text, 0)
    if text[i] != "{":
        raise ValueError("not an object")
    mark = 0  # start of the pending literal span
    i = _skip_ws(text, i + 1)
    if text[i] == "}":
        raise ValueError("empty object")
    while True:
        if text[i] != '"':
            raise ValueError("expected a key")
        key_end = _string_end(text, i)
        key = orjson.loads(text[i:key_end])
        i = _skip_ws(text, key_end)
        if text[i] != ":":
            raise ValueError("expected ':'")
        start = _skip_ws(text, i + 1)
        end = _value_end(text, start)
        if key in SPLIT_ARRAYS and text[start] == "[":
            spans.append((mark, start + 1, False))
            mark = _split_array(text, start, end, spans)
        else:
            spans.append((mark, start, False))
            spans.append((start, end, True))
            mark = end
        i = _skip_ws(text, end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i] == "}":
            break
        raise ValueError("expected ',' or '}'")
    if text[i + 1 :].strip(_WS):
        raise ValueError("trailing text")
    spans.append((mark, len(text), False))
    return [s for s in spans if s[0] < s[1]]


def _split_array(text: str, start: int, end: int, spans: list[tuple[int, int, bool]]) -> int:
    """Add a span per element of the array at ``start``; returns where the literal resumes."""
    mark = start + 1
    i = _skip_ws(text, start + 1)
    if text[i] == "]":
        return mark
    while True:
        elem_end = _value_end(text, i)
        spans.append((mark, i, False))
        spans.append((i, elem_end, True))
        mark = elem_end
        i = _skip_ws(text, elem_end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i] == "]" and i == end - 1:
            return mark
        raise ValueError("expected ',' or ']'")


def _skip_ws(text: str, i: int) -> int:
    while text[i] in _WS:
        i += 1
    return i


def _string_end(text: str, i: int) -> int:
    """Index just past the JSON string starting at ``i``."""
    # str.index jumps from quote to quote in C; a quote preceded by an odd
    # number of backslashes is escaped and the search goes on. (The writer runs
    # this on every request body, on the event loop: no per-character loops.)
    j = i + 1
    while True:
        quote = text.index('"', j)
        k = quote - 1
        while text[k] == "\\":
            k -= 1
        if (quote - 1 - k) % 2 == 0:
            return quote + 1
        j = quote + 1


# The stdlib's C scanner finds where an array or object ends (it builds the value
# too, in C): the regex walk over its structure it replaced took 234 us in Python
# for a 4 KB body with twenty tools (Home Assistant's), on the event loop; this 30.
_DECODE = json.JSONDecoder().raw_decode  # its scan_once, with a public name


def _value_end(text: str, i: int) -> int:
    """Index just past the JSON value starting at ``i`` (structure only; orjson validated it)."""
    c = text[i]
    if c == '"':
        return _string_end(text, i)
    if c not in "[{":
        j = i
        while j < len(text) and text[j] not in ",]}" + _WS:
            j += 1
        if j == i:
            raise ValueError("expected a value")
        return j
    try:
        return _DECODE(text, i)[1]  # JSONDecodeError, a ValueError: not a value there
    except RecursionError as exc:  # nested deeper than the C scanner goes
        raise ValueError("nested too deep to walk") from exc
