"""The layers run one way: every import of every module of ``src/opzo`` (at the top, inside
functions and under ``TYPE_CHECKING`` alike, read with :mod:`ast`) goes to a module of the same
layer or a lower one of ARCHITECTURE.md's layer table, and no set of modules imports itself
round in a circle.

The table is read from ARCHITECTURE.md itself (its first table under "## Layers", top layer
first; a module is named ``cli.py``, a package ``rules/`` with everything in it, the package
face ``__init__.py``), so the drawing and the code cannot drift apart. The import of a parent
package that Python performs before a submodule's is not an edge here (a package's
``__init__`` imports its own modules; that is not a circle of the code)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "opzo"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], package: Path = PACKAGE) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import statement of ``path``; a
    relative import that climbs out of the package is returned as ``"<outside>:<name>"``."""
    name = module_name(path, package)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names
                      if a.name.split(".")[0] == package.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if (node.module or "").split(".")[0] != package.name:
                    continue
                base = node.module or ""
            else:
                here = name.split(".") if is_package else name.split(".")[:-1]
                if node.level - 1 >= len(here):
                    found.append((f"<outside>:{'.' * node.level}{node.module or ''}",
                                  node.lineno))
                    continue
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            for alias in node.names:  # "from . import native" imports the module opzo.native
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return [(m, line) for m, line in found if m != name]


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, for every module of the package."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(path, set(files), package):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_table(text: str) -> list[tuple[str, list[str]]]:
    """ARCHITECTURE.md's layers, top first: (layer, [module patterns])."""
    lines = text.split("## Layers", 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:  # the table: the lines of "|" up to the first other one
        if not line.startswith("|"):
            break
        rows.append(line)
    table: list[tuple[str, list[str]]] = []
    for row in rows[2:]:  # header and its rule
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 2:
            break
        table.append((cells[0], re.findall(r"`([\w/]+(?:\.py|/))`", cells[1])))
    return table


def layer_ranks(table: list[tuple[str, list[str]]], modules: set[str]) -> dict[str, int]:
    """module -> its layer's rank (0: the lowest); every module in exactly one layer."""
    ranks: dict[str, int] = {}
    for position, (layer, patterns) in enumerate(table):
        rank = len(table) - 1 - position
        for pattern in patterns:
            if pattern == "__init__.py":
                members = {"opzo"}
            elif pattern.endswith("/"):
                stem = "opzo." + pattern.rstrip("/").replace("/", ".")
                members = {m for m in modules if m == stem or m.startswith(stem + ".")}
            else:
                members = {"opzo." + pattern.removesuffix(".py").replace("/", ".")}
            assert members and members <= modules, f"layer {layer!r}: {pattern} is no module"
            for m in members:
                assert ranks.get(m, rank) == rank, f"{m} is in two layers"
                ranks[m] = rank
    return ranks


def violations(graph: dict[str, dict[str, int]], ranks: dict[str, int]) -> list[str]:
    wrong = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            if target.startswith("<outside>"):
                wrong.append(f"{module}:{line} imports {target[10:]}, outside the package")
            elif ranks[target] > ranks[module]:
                wrong.append(f"{module}:{line} imports {target}, a higher layer")
    return wrong


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_no_module_imports_itself_round_a_circle(graph):
    assert cycles(graph) == []


def test_every_import_goes_to_the_same_or_a_lower_layer_of_architecture_md(graph):
    table = layer_table((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert len(table) >= 5, table
    ranks = layer_ranks(table, set(graph))
    assert set(ranks) == set(graph), f"modules in no layer: {sorted(set(graph) - set(ranks))}"
    assert violations(graph, ranks) == []


def test_the_checks_see_what_they_must(tmp_path):
    """On a made-up package: an import inside a function and one under TYPE_CHECKING are
    edges, a circle through them is found, a climb out of the package is reported, and an
    import of a higher layer is a violation."""
    pkg = tmp_path / "opzo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from .high import X\n")
    (pkg / "high.py").write_text("def f():\n    from . import low\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from ...config import C\nfrom ..low import y\n")
    g = import_graph(pkg)
    assert g["opzo.low"] == {"opzo.high": 3} and g["opzo.high"] == {"opzo.low": 2}
    assert cycles(g) == [["opzo.high", "opzo.low"]]
    assert "<outside>:...config" in g["opzo.sub.a"]
    ranks = {"opzo": 2, "opzo.high": 1, "opzo.low": 0, "opzo.sub": 0, "opzo.sub.a": 0}
    assert violations(g, ranks) == ["opzo.low:3 imports opzo.high, a higher layer",
                                    "opzo.sub.a:1 imports ...config, outside the package"]
