"""The package boundaries of docs/architecture.md, checked over the import graph.

Every ``import`` of an ``autombw_cli`` module counts, wherever it is written: at module top,
inside a function or under ``if TYPE_CHECKING:``. A package is the first name below
``autombw_cli`` (``search``, ``app``, ``errors``...).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import autombw_cli

ROOT = Path(autombw_cli.__file__).parent

# the search core: ask/tell, campaign, scheduler, journal. It may use the block layouts, the
# error family and the scorer seam it batches images into, nothing of the application.
SEARCH_MAY_IMPORT = {
    "autombw_cli.blocks",
    "autombw_cli.errors",
    "autombw_cli.exit_codes",  # through errors.py, which the bridge extension copies too
    "autombw_cli.scoring.protocol",
}
# who may compose the application (app/) and who may use the test helpers (testing/); the root
# package re-exports `optimize` (app/optimize.py) lazily, as the public Python entry point
APP_USERS = {"cli", "__main__", "autombw_cli"}
TESTING_USERS: set[str] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """The ``autombw_cli`` modules ``path`` imports (``from autombw_cli import x`` is
    ``autombw_cli.x`` when x is a module, else the package itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("autombw_cli"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "autombw_cli":
                for a in node.names:
                    sub = ROOT / a.name
                    is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                    found.add(f"autombw_cli.{a.name}" if is_module else "autombw_cli")
            elif node.module.startswith("autombw_cli."):
                found.add(node.module)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "autombw_cli"


def _module_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, imported in _module_graph().items():
        src = _package(module)
        for target in imported:
            dst = _package(target)
            if dst not in (src, "autombw_cli"):  # the root: __version__, optimize
                graph[src].add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_imports_inside_functions_and_type_checking_blocks() -> None:
    graph = _module_graph()
    # app/instances.py imports the simulator inside a function and under TYPE_CHECKING
    assert "autombw_cli.sim.server" in graph["autombw_cli.app.instances"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_package_cycles() -> None:
    assert _cycle(_package_graph()) is None


def test_the_search_core_imports_nothing_of_the_application() -> None:
    outside = {
        f"{module} imports {target}"
        for module, imported in _module_graph().items()
        if _package(module) == "search"
        for target in imported
        if _package(target) != "search" and target not in SEARCH_MAY_IMPORT
    }
    assert not outside, sorted(outside)


def test_only_the_cli_composes_the_application() -> None:
    users = {src for src, dsts in _package_graph().items() if "app" in dsts}
    assert users <= APP_USERS, sorted(users - APP_USERS)


def test_the_product_does_not_use_the_test_helpers() -> None:
    users = {src for src, dsts in _package_graph().items() if "testing" in dsts}
    assert users <= TESTING_USERS, sorted(users)
