"""The layering rule, as a test: each folder of dnsguard/ is one kind of code.

- Cores (config, filter, policy, dns, wireguard, lifecycle) are sans-I/O: no asyncio, socket, ssl,
  aiohttp, pyroute2, ctypes or subprocess, and nothing from the edges or the application.
- Edges (net) import cores but not the application (app) or the lab.
- The application (app) composes cores and edges; only the lab and the CLI's demo command import the lab.
- No import cycles inside dnsguard/ (imports under `if TYPE_CHECKING:` are annotations, not imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dnsguard"
CORES = {"config", "filter", "policy", "dns", "wireguard", "lifecycle"}
IO_MODULES = {"asyncio", "socket", "ssl", "aiohttp", "pyroute2", "ctypes", "subprocess", "uvloop"}
SHARED = {"errors", "__init__"}
"""Top-level modules every layer may import (the exception root, the version)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(child) for child in ast.walk(node))
    return guarded


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules `path` imports anywhere (functions included), resolved to dnsguard modules where they are."""
    tree = ast.parse(path.read_text())
    guarded = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path, set(MODULES)) for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in CORES))
def test_cores_do_no_io_and_import_only_cores(module: str) -> None:
    imported = GRAPH[module]
    io = sorted(name for name in imported if name.split(".")[0] in IO_MODULES)
    assert not io, f"{module} is a core but imports {io}"
    outside = sorted(
        name
        for name in imported
        if name.startswith("dnsguard.") and name in MODULES and layer(name) not in CORES | SHARED
    )
    assert not outside, f"{module} is a core but imports {outside}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "net"))
def test_edges_do_not_import_the_application_or_the_lab(module: str) -> None:
    wrong = sorted(name for name in GRAPH[module] if name in MODULES and layer(name) in ("app", "lab"))
    assert not wrong, f"{module} is an edge but imports {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "app"))
def test_the_application_never_imports_the_lab(module: str) -> None:
    wrong = sorted(name for name in GRAPH[module] if name in MODULES and layer(name) == "lab")
    assert not wrong, f"{module} imports the lab {wrong}"


def test_every_folder_is_a_known_layer() -> None:
    built = {"__pycache__", "_native", "_native.new", "_native.old"}  # dnsguard/native.py's build, not code
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name not in built}
    assert folders == CORES | {"net", "app", "lab"}


def test_there_are_no_import_cycles() -> None:
    edges = {m: {i for i in imports if i in MODULES and i != m} for m, imports in GRAPH.items()}
    # Package __init__ modules that re-export their submodules are not cycles: importing the package
    # runs its __init__, which imports the submodules, which import their siblings directly.
    for module, targets in edges.items():
        edges[module] = {
            t for t in targets if not (MODULES[t].name == "__init__.py" and module.startswith(t + "."))
        }
    cycles = _strongly_connected(edges)
    assert not cycles, f"import cycles: {cycles}"


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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


def test_only_the_lab_and_the_demo_import_the_lab() -> None:
    # The CLI reaches the lab only through `dnsguard demo` (dnsguard.demo, imported by that command).
    importers = sorted(
        module
        for module, imported in GRAPH.items()
        if layer(module) != "lab" and any(name in MODULES and layer(name) == "lab" for name in imported)
    )
    assert importers == ["dnsguard.demo"]
