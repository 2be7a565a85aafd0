"""The package's import graph has no cycle, counting imports inside functions too.

A late import (inside a function) that dodges a cycle hides a module on the wrong floor: the
import works until someone moves it to the top, and the two modules cannot be understood, or
tested, apart (ARCHITECTURE.md, "No lazy import to dodge a cycle"). Imports under
`if TYPE_CHECKING:` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ..conftest import REPO_ROOT

SRC = REPO_ROOT / "src"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "opsledger").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, except those under `if TYPE_CHECKING:`."""
    found = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            todo += node.orelse
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        todo += ast.iter_child_nodes(node)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the opsledger modules it imports (a `from pkg import mod` counts as pkg.mod)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph has none (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_graph_sees_late_imports_and_skips_type_checking_ones():
    graph = import_graph()
    assert "opsledger.policy.bundle" in graph["opsledger.policycheck"]
    assert "opsledger.drill" in graph["opsledger.maintenance"]  # inside upgrade_backups
    assert "opsledger.faults.clock" not in graph["opsledger.notify"]  # under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back_through_others():
    cycle = find_cycle(import_graph())
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


def test_the_policy_floor_imports_no_module_that_reads_it():
    """policy/* is read by inspections, drill, faults and the check: it never imports them."""
    graph = import_graph()
    above = {"opsledger.policycheck", "opsledger.inspections", "opsledger.drill"}
    for name, imported in graph.items():
        if name.startswith("opsledger.policy."):
            assert not (imported & above), (name, imported & above)
            assert not any(m.startswith("opsledger.faults") for m in imported), name
