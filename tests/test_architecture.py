"""The shape of src/opensmtpd (docs/architecture.md), kept by tests:

- no import cycle between modules (any import, nested ones included);
- the products (table-procexec, table-consul, filter-prometheus, opensmtpd-table) import
  from the core only its public modules: no ``_private`` one;
- no module over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "opensmtpd"
PRODUCTS = ("opensmtpd.procexec", "opensmtpd.consul", "opensmtpd.prometheus", "opensmtpd.cli")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The modules of ours ``name`` imports (``from x import y`` counts y if a module)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in MODULES else base)
    ours = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            ours.add(target)
    return ours


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]] = GRAPH) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    assert _cycles() == []


def test_the_cycle_finder_finds_cycles() -> None:
    # the two the issue found (backend <-> runtime, app <-> runtime), and a longer one
    graph = {"backend": {"runtime"}, "runtime": {"backend", "wire"}, "wire": set(),
             "a": {"b"}, "b": {"c"}, "c": {"a"}, "lone": {"lone"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["backend", "runtime"]]
    with_edge_back = {name: set(edges) for name, edges in GRAPH.items()}
    with_edge_back["opensmtpd.table.wire"].add("opensmtpd.table")
    assert any({"opensmtpd.table", "opensmtpd.table.wire"} <= set(c)
               for c in _cycles(with_edge_back))


def _private(name: str) -> bool:
    return any(part.startswith("_") and part != "__main__" for part in name.split("."))


@pytest.mark.parametrize("product", PRODUCTS)
def test_products_import_only_public_core_modules(product: str) -> None:
    wrong = {
        (name, target)
        for name in MODULES if name == product or name.startswith(product + ".")
        for target in GRAPH[name]
        if not (target == product or target.startswith(product + ".")) and _private(target)
    }
    assert wrong == set()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines"


def test_private_means_an_underscore_segment() -> None:
    assert _private("opensmtpd.table._runtime") and _private("opensmtpd.filter._dispatch")
    assert not _private("opensmtpd.table.wire.native") and not _private("opensmtpd.stdio")
    assert not _private("opensmtpd.procexec.__main__")
