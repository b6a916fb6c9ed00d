"""The client's modules import one way: no module imports one that imports it back, even when
only a type checker would follow the import (``if TYPE_CHECKING:``)."""

from __future__ import annotations

import ast
from pathlib import Path

import rnnserve.client

PACKAGE = "rnnserve.client"
ROOT = Path(rnnserve.client.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def import_graph() -> dict[str, set[str]]:
    """Every client module -> the client modules it names in any import statement, anywhere in
    the file (module level, functions, ``if TYPE_CHECKING:`` blocks)."""
    modules = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                # `from package import module` names the module itself.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name].update(target for target in targets if target in modules)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_client_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}._session" in graph and f"{PACKAGE}.aio._session" in graph
    assert cycles(graph) == []


def test_sessions_hold_the_rpc_helper_not_the_client() -> None:
    graph = import_graph()
    for side in ("", "aio."):
        assert f"{PACKAGE}.{side}_client" not in graph[f"{PACKAGE}.{side}_session"]
        assert f"{PACKAGE}.{side}_rpc" in graph[f"{PACKAGE}.{side}_session"]
