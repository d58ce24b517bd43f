"""The shape of the package, read from its source: no import circles, no stdlib names, small files.

The import graph counts every import in a file, wherever it stands: at the top,
under ``if TYPE_CHECKING:``, inside a function. A circle that only type
checking or a late import keeps from failing at run time still ties two
modules together: neither can be read, tested or moved without the other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llm_proxy"
MAX_LINES = 600

Graph = dict[str, set[str]]


def modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name, for its ``__init__``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, relative imports resolved."""
    # The package a relative import starts from: a package's own, or the module's parent.
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(_within(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            for alias in node.names:
                # `from . import x` names a module x when there is one, else a name in the package.
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else _within(base, known))
    targets.discard("")
    targets.discard(name)
    return targets


def _within(dotted: str, known: set[str]) -> str:
    """The longest prefix of ``dotted`` that is one of ``known`` ("" for another package)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return ""


def graph(package: Path) -> Graph:
    """Module → the package's modules it imports."""
    found = modules(package)
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycle(edges: Graph) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when there is none (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done and (found := visit(start)):
            return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    found = cycle(graph(PACKAGE))
    assert found is None, "import circle: " + " → ".join(found or [])


def test_no_module_is_named_like_a_stdlib_module() -> None:
    shadowing = [
        name
        for name in modules(PACKAGE)
        if (last := name.rpartition(".")[2]) in sys.stdlib_module_names and not last.startswith("__")
    ]
    assert not shadowing, f"modules named like the standard library's: {shadowing}"


def test_no_module_passes_600_lines() -> None:
    too_long = {}
    for path in modules(PACKAGE).values():
        where = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long[where] = lines
    assert not too_long, f"modules over {MAX_LINES} lines (each holds two concepts): {too_long}"


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A circle made of a TYPE_CHECKING import, a function's import and a relative one is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import thing\n")
    (pkg / "c.py").write_text("import pkg.a\nimport os\n")
    edges = graph(pkg)
    assert edges == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg.a"}}  # fmt: skip
    assert cycle(edges) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import os\n")
    assert cycle(graph(pkg)) is None
