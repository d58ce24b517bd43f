"""``llm-proxy logs export --format openai-chat|sharegpt``: the trail as a training or evaluation set.

One example per exchange, or per turn (``--per turn``: the last round of each
turn, whose request holds the whole conversation with every tool call and
result before it). Failed exchanges and 499s are left out unless
``--include-errors``; rows that make no example (embeddings, a body stored
as metadata only, a body cut short) are counted and named on stderr.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import IO

import orjson

from ..audit import datasets, query

FORMATS = tuple(datasets.FORMATS)


@dataclasses.dataclass
class Written:
    """How many examples were written, and why the other rows were not."""

    examples: int = 0
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)

    def summary(self) -> str:
        text = f"exported {self.examples} examples"
        if self.skipped:
            reasons = "; ".join(f"{n} {why}" for why, n in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())} exchanges: {reasons}"
        return text


def write(
    reader: query.Reader,
    f: query.Filters,
    fmt: str,
    out: IO[str],
    per: str = "exchange",
    include_errors: bool = False,
    limit: int | None = None,
) -> Written:
    """Write the examples of the matching rows, oldest first, one JSON object per line."""
    if not include_errors:
        f = dataclasses.replace(f, succeeded=True)
    convert = datasets.FORMATS[fmt]
    ends = reader.turn_ends(f) if per == "turn" else None
    done = Written()
    for row in reader.rows(f, oldest_first=True):
        if ends is not None and row["id"] not in ends:
            continue
        try:
            example = convert(row)
        except datasets.Skip as why:
            done.skipped[str(why)] += 1
            continue
        out.write(orjson.dumps(example).decode() + "\n")
        done.examples += 1
        if limit and done.examples >= limit:
            break
    return done
