"""The import graph of `src/image_search`: no module imports itself round a circle, and the
lower floors never reach up. Imports inside functions count (they run too, only later);
imports under `if TYPE_CHECKING:` do not: they never run, so they cannot make a circle.

A package's `__init__` is the package. Importing `a.b.c` from outside `a.b` runs `a.b`
first, so it is an edge to the package `a.b` as well."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import image_search

ROOT = "image_search"
SOURCE = Path(image_search.__file__).parent

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def run_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *run_time_nodes(child)])
            continue
        yield node
        yield from run_time_nodes(node)


def imported_names(path: Path, modules: set[str]) -> set[str]:
    """The image_search modules `path` imports, anywhere in it."""
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return {m for m in found if m in modules}


def with_packages(importer: str, target: str) -> set[str]:
    """`target` and the packages above it that importing it runs first (not the importer's
    own: those are already running)."""
    parts = target.split(".")
    above = {".".join(parts[:i]) for i in range(1, len(parts))}
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return {target} | (above - own)


def import_graph() -> Graph:
    paths = sorted(SOURCE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph: Graph = {}
    for path in paths:
        importer = module_name(path)
        targets = imported_names(path, modules)
        graph[importer] = {
            m for t in targets for m in with_packages(importer, t) if m != importer
        }
    return graph


def circles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def one_circle(graph: Graph, component: list[str]) -> list[str]:
    """A path round the component from its first module back to it, for the message."""
    start, members = component[0], set(component)
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & members):
            if nxt == start:
                return [*path, start]
            if nxt not in path:
                paths.append([*path, nxt])
    raise AssertionError(f"no circle through {start}")


def reachable(graph: Graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.fast
def test_the_graph_sees_imports_inside_functions_and_skips_type_checking_ones() -> None:
    graph = import_graph()
    assert "image_search.watch" in graph["image_search.cli"]  # imported inside a function
    assert "image_search.store.connection" in graph["image_search.store.schema"]
    assert with_packages("image_search.search", "image_search.models.base") == {
        "image_search.models.base",
        "image_search.models",  # its package runs first
    }
    assert with_packages("image_search.models.hub", "image_search.models.base") == {
        "image_search.models.base"  # its own package is already running
    }
    assert "image_search.web" not in graph["image_search.web_layout"]  # TYPE_CHECKING only
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.fast
def test_no_module_imports_itself_round_a_circle() -> None:
    graph = import_graph()
    found = [" -> ".join(one_circle(graph, c)) for c in circles(graph)]
    assert not found, "import circles:\n" + "\n".join(found)


@pytest.mark.fast
def test_the_store_and_the_tensor_images_never_reach_model_code() -> None:
    graph = import_graph()
    models = f"{ROOT}.models"
    lower = [m for m in graph if m.startswith(f"{ROOT}.store") or m == f"{ROOT}.tensor_images"]
    reaching = sorted(
        m
        for m in lower
        if any(r == models or r.startswith(f"{models}.") for r in reachable(graph, m))
    )
    assert not reaching, f"these reach {models}: {reaching}"
