"""Imports point one way: no module of the client or the server imports one that imports it back,
even when only a type checker would follow the import (``if TYPE_CHECKING:``), and the layers of
docs/architecture.md hold (the core never imports grpc; the server never imports training)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import rnnserve.client
import rnnserve.server

ROOTS = {
    "rnnserve.client": Path(rnnserve.client.__file__).parent,
    "rnnserve.server": Path(rnnserve.server.__path__[0]),
}
# What the transport-free core may never import (only transport/, app.py and cli.py may).
TRANSPORT_ONLY = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "google.rpc",
    "rnnserve.v1",
    "rnnserve.kserve",
)
WIRING = {"rnnserve.server.app", "rnnserve.server.cli"}


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(ROOTS[package]).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def imported_names(package: str, path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file names (module level, inside
    functions, ``if TYPE_CHECKING:`` blocks); `from a import b` names both a and a.b."""
    name = module_name(package, path)
    anchor_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = anchor_package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    """Every module of `package` -> the modules of the same package it imports."""
    modules = {module_name(package, path): path for path in ROOTS[package].rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        names = imported_names(package, path)
        # `from package import module` names the module, not the package's __init__
        named = {n for n in names if n in modules}
        graph[name] = {n for n in named if not any(m.startswith(n + ".") for m in named)}
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


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_the_import_graph_has_no_cycle(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 10  # the walk found the package's modules
    assert cycles(graph) == []


def test_client_sessions_hold_the_rpc_helper_not_the_client() -> None:
    graph = import_graph("rnnserve.client")
    for side in ("", "aio."):
        assert (
            "rnnserve.client." + side + "_client"
            not in graph["rnnserve.client." + side + "_session"]
        )
        assert "rnnserve.client." + side + "_rpc" in graph["rnnserve.client." + side + "_session"]


def test_the_server_core_never_imports_grpc_and_front_doors_use_the_seam() -> None:
    package = "rnnserve.server"
    for path in ROOTS[package].rglob("*.py"):
        name = module_name(package, path)
        names = imported_names(package, path)
        if name.startswith("rnnserve.server.transport"):
            # a front door programs against InferenceCore, never the concrete engine
            assert "rnnserve.server.engine" not in names, name
        elif name not in WIRING:
            leaks = sorted(
                n
                for n in names
                if n.split(".")[0] in TRANSPORT_ONLY or n.startswith(TRANSPORT_ONLY)
            )
            assert leaks == [], f"{name} imports {leaks}"
        assert not any(n.startswith(("rnnserve.training", "rnnserve.client")) for n in names), name


def test_the_client_never_imports_the_server() -> None:
    for path in ROOTS["rnnserve.client"].rglob("*.py"):
        names = imported_names("rnnserve.client", path)
        assert not any(n.startswith(("rnnserve.server", "rnnserve.training")) for n in names), path
