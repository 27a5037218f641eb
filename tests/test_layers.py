"""The floors of ``docs/architecture.md`` ("## Floors"), held to the code: an import (at module top or
inside a function) only goes down a floor or stays on its own, no two files import each other round a
circle, and the store is storage only. Pure ``ast`` parsing: nothing is imported, well under a second."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "clefctl"
DOC = ROOT / "docs" / "architecture.md"

#: (importing unit, imported unit) -> why it may go up a floor. Empty: every upward import was fixed.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

#: What the store (storage only) may import besides itself: the ground floor and the landmark names.
STORE_MAY_IMPORT = ("clefctl.errors", "clefctl.paths", "clefctl.ui", "clefctl.cpu", "clefctl.data.landmarks")


def floors() -> dict[str, int]:
    """``unit -> floor`` from the table under "## Floors" in docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    out = {}
    for floor, names in re.findall(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", section, flags=re.M):
        for name in re.findall(r"`([^`]+)`", names):
            assert name not in out, f"{name} is on two floors of docs/architecture.md"
            out[name] = int(floor)
    assert out, "docs/architecture.md has no floors table"
    return out


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every file of the package (a package is its ``__init__``)."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def unit(module: str) -> str:
    """The floor-table name of a module: its top-level module or package under clefctl."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> the clefctl modules it imports (at any depth of the file), with their line."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t == "clefctl" or t.startswith("clefctl."):
                    r = resolve(t)
                    if r is not None and r != name:
                        found.append((r, node.lineno))
        out[name] = found
    return out


MODS = modules()
IMPORTS = imports(MODS)


def test_every_module_has_one_floor():
    table = floors()
    units = {unit(m) for m in MODS}
    assert sorted(units - set(table)) == [], "modules missing from the floors table of docs/architecture.md"
    assert sorted(set(table) - units) == [], "floors table names modules that do not exist"


def test_no_import_goes_up_a_floor():
    table = floors()
    upward = []
    for name, found in IMPORTS.items():
        for target, line in found:
            a, b = unit(name), unit(target)
            if table[b] > table[a] and (a, b) not in KNOWN_EXCEPTIONS:
                upward.append(f"{MODS[name].relative_to(ROOT)}:{line}: {name} (floor {table[a]}) imports "
                              f"{target} (floor {table[b]})")
    assert upward == [], "imports that go up a floor:\n" + "\n".join(upward)


def test_the_known_exceptions_are_still_needed():
    used = {(unit(n), unit(t)) for n, found in IMPORTS.items() for t, _ in found}
    assert sorted(set(KNOWN_EXCEPTIONS) - used) == []


def test_the_store_is_storage_only():
    wrong = [f"{MODS[name].relative_to(ROOT)}:{line}: {target}"
             for name, found in IMPORTS.items() if name == "clefctl.store" or name.startswith("clefctl.store.")
             for target, line in found
             if not (target.startswith("clefctl.store") or target in STORE_MAY_IMPORT)]
    assert wrong == [], "the store imports beyond storage (the embed job is clefctl.embed):\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = {name: sorted({t for t, _ in found}) for name, found in IMPORTS.items()}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:           # Tarjan's strongly connected components, iterative
        work = [(v, iter(graph[v]))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        while work:
            node, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == [], "import circles (imports inside functions count):\n" + "\n".join(map(", ".join, circles))
