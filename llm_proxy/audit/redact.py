"""Redaction: secrets and personal data replaced by ``[redacted:KIND]`` before a row is stored.

Pure text in, text out. :class:`Redactor` holds the detectors ``database.redact``
(or an API key's ``redact``) turned on and applies them to each stored copy of
an exchange (audit/store.py calls it before capping and compaction, so the
search index, blobs, exports and every reader see only the redacted text).
What reaches the backend and the client is never touched: the store redacts
its own copy of the row.

The built-in detectors (their patterns and checksums are in :mod:`.detectors`):

- ``api_key``: keys of well-known shapes (OpenAI and Anthropic ``sk-…``,
  GitHub ``ghp_…``/``github_pat_…``, GitLab ``glpat-…``, Slack ``xox?-…``,
  AWS ``AKIA…``, Google ``AIza…``, Hugging Face ``hf_…``, Stripe
  ``sk_live_…``, JSON web tokens such as Home Assistant's long-lived tokens),
  and the value of ``api_key=…``, ``password: …``, ``secret=…``, ``token=…``;
- ``bearer``: the credential after ``Bearer`` or ``Basic``;
- ``email``: e-mail addresses;
- ``phone``: international numbers (``+49 30 1234567``), North American
  (``(555) 123-4567``) and national numbers with a leading 0 and separators;
  7 to 15 digits;
- ``card``: 13 to 19 digits (spaces or dashes between) passing the Luhn check;
- ``iban``: an IBAN of its country's length whose mod-97 checksum holds.

Custom detectors are regular expressions named by their kind
(``database.redact.patterns``); the whole match is replaced.

JSON bodies are redacted value by value (:meth:`Redactor.json_text`): each
string is decoded, redacted and, only when it changed, written back as a JSON
string, so a secret written with escapes (``\\u0040``) is found, the body stays
valid JSON, and everything else keeps its bytes. A card number sent as a bare
JSON number becomes the string ``"[redacted:card]"``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..config.sections import REDACT_DETECTORS as BUILTIN
from ..config.sections import ApiKey, DatabaseConfig
from .detectors import (
    ASSIGNED,
    BEARER,
    CARD,
    DETECTORS,
    EMAIL,
    IBAN_START,
    KEY_SHAPES,
    PHONE,
    SECRET_KEY,
    luhn,
    marker,
    whole,
)

# Cheap tests (substring searches, one simple pattern) that every match of a
# detector passes: a text failing a detector's test is not searched with its
# patterns, which cost a regex pass each. An HA request body of 20 KiB mostly
# passes only the digit test (its system prompt holds dates and times).
_KEY_LITERALS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "AKIA",
                 "ASIA", "AIza", "hf_", "_live_", "_test_", "eyJ")  # fmt: skip
_ASSIGN_WORDS = ("key", "secret", "pass", "pwd", "token")
# Seven digits, at most three separators between each two: every card, phone number and IBAN has such a run.
_DIGITS = re.compile(r"\d(?:[\s().+/-]{0,3}\d){6,}", re.ASCII)
_ESCAPE = re.compile(r'\\(["\\/bfnrt])')
_UNESCAPED = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _assignment(low: str) -> bool:
    """Whether a lower-cased text has a word of :data:`_ASSIGN_WORDS` followed by ':' or '='."""
    for word in _ASSIGN_WORDS:
        i = low.find(word)
        while i >= 0:
            after = low[i + len(word) : i + len(word) + 24].lstrip("_-abcdefghijklmnopqrstuvwxyz\"' \t\n")
            if after[:1] in (":", "="):
                return True
            i = low.find(word, i + 1)
    return False


_NEAR = 40  # characters around a run of digits that a card, phone number or IBAN can take
_DIGIT_KINDS = (("iban", IBAN_START), ("card", CARD), ("phone", PHONE))
_ANCHORS = re.compile(r"(?<!\\)(?:\^|\$|\\A|\\Z)")
_LONG_NUMBER = 10**12  # a bare JSON integer of 13 digits or more may be a card number
SEPARATOR = "\x00"  # between the strings of a JSON body searched at once: no detector crosses it


# -- the engine ----------------------------------------------------------------


@dataclass(frozen=True)
class Redactor:
    """The detectors of one policy, applied in a fixed order."""

    steps: tuple[Callable[[str], str], ...]
    kinds: tuple[str, ...]
    # The custom patterns: where none of them nor a built-in detector matches, nothing is redacted.
    custom: tuple[re.Pattern[str], ...] = ()
    # A custom pattern anchors (^, $): the strings of a body are searched one by one.
    anchored: bool = False

    def text(self, value: str | None) -> str | None:
        """Plain text with every detected value replaced by its marker."""
        if not value or not self._candidate(value):
            return value
        return self._plain(value)

    def _plain(self, value: str) -> str:
        for step in self.steps:
            value = step(value)
        return value

    def _candidate(self, value: str) -> bool:
        return any(True for _ in self._spans(value, first=True))

    def _spans(self, text: str, first: bool = False) -> Iterator[tuple[int, int]]:
        """Where the patterns that could match ``text`` do (``first``: stop at one).

        Each detector's cheap test comes first. The digit detectors (card, phone,
        IBAN) are searched only near a run of digits (:data:`_DIGITS`), which
        one pass finds: their own patterns are slow to try at every character.
        """
        kinds = self.kinds
        patterns = list(self.custom)
        low = ""
        if "api_key" in kinds:
            if any(x in text for x in _KEY_LITERALS):
                patterns.append(KEY_SHAPES)
            low = text.lower()
            if _assignment(low):
                patterns.append(ASSIGNED)
        if "bearer" in kinds:
            low = low or text.lower()
            if "bearer" in low or "basic" in low:
                patterns.append(BEARER)
        if "email" in kinds and "@" in text:
            patterns.append(EMAIL)
        for pattern in patterns:
            for m in pattern.finditer(text):
                yield m.span()
                if first:
                    return
        digit_patterns = [p for kind, p in _DIGIT_KINDS if kind in kinds]
        if not digit_patterns:
            return
        for run in _DIGITS.finditer(text):
            # An IBAN's letters and check digits come before its run of digits.
            left = max(0, run.start() - _NEAR)
            window = text[left : run.end() + _NEAR]
            for pattern in digit_patterns:
                for m in pattern.finditer(window):
                    yield left + m.start(), left + m.end()
                    if first:
                        return

    def json_text(self, value: str | None) -> str | None:
        """JSON text redacted string by string; text that is not JSON is redacted as plain text.

        Most bodies hold nothing to redact. They are decoded (orjson, in C) and
        all their strings searched at once; only a body with a candidate is
        rewritten, token by token, so that what is not redacted keeps its bytes.
        """
        if not value:
            return value
        if value.lstrip()[:1] not in ("{", "["):
            return self.text(value)
        if "\\u" in value:  # an escape can hide what a search of the text would see: decode it
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                return self._rewrite(value)  # a copy cut short: its strings, as far as they go
            strings: list[str] = []
            _collect(data, strings)
            probe = SEPARATOR.join(strings)
        else:
            # The text with its escapes read as JSON reads them: what a decoded string holds, plus
            # the structure, which can only add candidates (bare numbers are where cards would be).
            probe = _ESCAPE.sub(lambda m: _UNESCAPED[m[1]], value) if "\\" in value else value
        if self.anchored:
            try:
                strings = []
                _collect(orjson.loads(value), strings)
            except orjson.JSONDecodeError:
                return self._rewrite(value)
            found = any(self._candidate(t) for t in strings)
        else:
            found = self._candidate(probe)
        if not found:
            return value
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            return self._rewrite(value)
        return self._substitute(value)

    def _substitute(self, value: str) -> str:
        """:meth:`_rewrite` for a whole JSON text, looking only at the strings that need it.

        The tokens are found in one pass; only those a detector's span touches,
        or that hold an escape (decoded first), are looked at, so a body of a
        thousand strings with one e-mail in it costs little more than one without.
        """
        spans = [m.span() for m in _TOKEN.finditer(value)]
        if self.anchored:
            wanted: Iterable[int] = range(len(spans))
        else:
            starts = [start for start, _ in spans]
            chosen = set()
            hits = _merged(self._spans(value))
            for p0, p1 in hits:  # every token a hit overlaps
                i = max(0, bisect.bisect_right(starts, p0) - 1)
                while i < len(spans) and spans[i][0] < p1:
                    if spans[i][1] > p0:
                        chosen.add(i)
                    i += 1
            for point in (m.start() for m in _BACKSLASH.finditer(value)):  # the tokens holding an escape
                i = bisect.bisect_right(starts, point) - 1
                if i >= 0 and spans[i][1] > point:
                    chosen.add(i)
            wanted = sorted(chosen)
        out: list[str] = []
        pos = 0
        cards = "card" in self.kinds
        for i in wanted:
            start, end = spans[i]
            text = value[start:end]
            if text[0] != '"':  # a bare number outside any string
                if not (cards and luhn(text.lstrip("-"))):
                    continue
                clean_text = orjson.dumps(marker("card")).decode()
            else:
                decoded = orjson.loads(text) if "\\" in text else text[1:-1]
                if decoded and self._secret_value(value, spans, i):
                    clean = marker("api_key")
                else:
                    clean = self._plain(decoded) if decoded and self._candidate(decoded) else decoded
                if clean == decoded:
                    continue
                clean_text = orjson.dumps(clean).decode()
            out += [value[pos:start], clean_text]
            pos = end
        if not out:
            return value
        out.append(value[pos:])
        return "".join(out)

    def _secret_value(self, value: str, spans: list[tuple[int, int]], i: int) -> bool:
        """Whether token ``i`` is the string value of a key such as ``"password"`` or ``"api_key"``."""
        if "api_key" not in self.kinds or i == 0:
            return False
        key_start, key_end = spans[i - 1]
        if value[key_end : spans[i][0]].strip() != ":" or value[key_start] != '"':
            return False
        return SECRET_KEY.fullmatch(value[key_start + 1 : key_end - 1]) is not None

    def _rewrite(self, value: str) -> str:
        """Each JSON string that holds something to redact, replaced by its redacted encoding."""
        # Where a detector's pattern matches the raw text. A string without
        # escapes reads the same raw as decoded, so only those these spans touch
        # (and strings with escapes, decoded first) can hold a match. An anchored
        # custom pattern reads differently in the raw text: then every string is looked at.
        hits = None if self.anchored else _merged(self._spans(value))
        out: list[str] = []
        pos = 0
        changed = False
        h = 0
        for m in _JSON_STRING.finditer(value):
            start, end = m.span()
            if start > pos:
                between = value[pos:start]
                # Only where a card number fits can one be written between two strings.
                redacted = self._bare(between) if start - pos >= 13 else between
                changed |= redacted != between
                out.append(redacted)
            pos = end
            token = m.group()
            escaped = "\\" in token
            if hits is not None and not escaped:
                while h < len(hits) and hits[h][1] <= start:
                    h += 1
                if h == len(hits) or hits[h][0] >= end:
                    out.append(token)  # no pattern touches it
                    continue
            if escaped:
                try:
                    decoded = orjson.loads(token)
                except orjson.JSONDecodeError:
                    return self._plain(value)
            else:
                decoded = token[1:-1]
            clean = self.text(decoded) if decoded else decoded
            if clean != decoded:
                out.append(orjson.dumps(clean).decode())
                changed = True
            else:
                out.append(token)
        if pos < len(value):
            tail = value[pos:]
            # A quote left over opens a string cut short (a capped copy): redact it as text.
            redacted = self._plain(tail) if '"' in tail else self._bare(tail)
            changed |= redacted != tail
            out.append(redacted)
        return "".join(out) if changed else value

    def _bare(self, between: str) -> str:
        """JSON outside strings: only a card number can be written there (as a bare number)."""
        if "card" not in self.kinds or CARD.search(between) is None:
            return between
        quoted = orjson.dumps(marker("card")).decode()
        return CARD.sub(
            lambda m: quoted if 13 <= len(m.group()) <= 19 and luhn(m.group()) else m.group(), between
        )

    def value(self, obj: Any) -> Any:
        """A decoded JSON value with every string redacted (keys included)."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, dict):
            return {self.text(k): self.value(v) for k, v in obj.items()}
        return obj


def _merged(found: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans merged where they touch, in order."""
    spans = sorted(found)
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _collect(data: Any, strings: list[str]) -> None:
    """Every string (keys too) of a decoded JSON value, and every long integer as text."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, dict):
            strings.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif type(item) is int and abs(item) >= _LONG_NUMBER:
            strings.append(str(item))


# A JSON string, or a bare integer as long as a card number (a string is matched first
# at each position, so the digits inside one are never taken for a bare number).
_BACKSLASH = re.compile(r"\\")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|(?<![\w.])-?[0-9]{13,19}(?![\w.])', re.S)
# A JSON string token: quotes around anything but quotes and backslashes, or escapes.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def build(detectors: Iterable[str], patterns: Mapping[str, str] | None = None) -> Redactor | None:
    """A redactor for the named built-in detectors (``all`` for every one) and custom regexes.

    None when nothing is to be redacted. Names and patterns are checked when the
    config loads (config/checks.py); here an unknown name is a programming error.
    """
    names = list(detectors)
    if "all" in names:
        names = list(BUILTIN)
    steps: list[Callable[[str], str]] = []
    kinds: list[str] = []
    custom: list[re.Pattern[str]] = []
    anchored = False
    # Custom patterns first: they name what the user knows best (an internal key shape).
    for kind, regex in (patterns or {}).items():
        compiled = re.compile(regex)
        steps.append(whole(compiled, kind))
        kinds.append(kind)
        custom.append(compiled)
        anchored |= _ANCHORS.search(regex) is not None
    for name, detector in DETECTORS.items():
        if name in names:
            steps.append(detector)
            kinds.append(name)
    if not steps:
        return None
    return Redactor(tuple(steps), tuple(kinds), tuple(custom), anchored)


@dataclass(frozen=True)
class Policy:
    """What the stored copy of one exchange keeps: bodies or metadata, and what is redacted."""

    store_bodies: str = "full"
    redactor: Redactor | None = None


def policies(database: DatabaseConfig, keys: Iterable[ApiKey] = ()) -> tuple[Policy, dict[str, Policy]]:
    """The database's policy, and each API key's that differs from it, by key name."""
    settings = database.redact
    default = Policy(database.store_bodies, build(settings.detectors, settings.patterns))
    everything = None
    per_key: dict[str, Policy] = {}
    for key in keys:
        redactor = default.redactor
        if key.redact == "none":
            redactor = None
        elif key.redact == "all":
            everything = everything or build(["all"], settings.patterns)
            redactor = everything
        store = database.store_bodies if key.store_bodies == "default" else key.store_bodies
        if (store, redactor) != (default.store_bodies, default.redactor):
            per_key[key.name] = Policy(store, redactor)
    return default, per_key
