"""The tree shows the floors: no module imports, even inside a function, a module that imports it
back (directly or through others). A cycle hidden behind a function-local import is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("minigpt", "kernels")


def _modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name (a package by its own name)."""
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body. Package ``__init__`` files
    that only gather their children's names are left out as importers: an ``import a.b`` runs
    ``a/__init__`` first by Python's rules, which is not a dependency of ``a.b`` on its siblings."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if path.name == "__init__.py":
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                while t and t not in mods:     # the longest prefix that is a module
                    t = t.rpartition(".")[0]
                if t and t != name and mods[t].name != "__init__.py":
                    deps.add(t)
                    break
                if t and t != name:            # a package: what its __init__ re-exports
                    deps.add(t)
                    break
        graph[name] = deps
    # a package stands for the modules its __init__ imports
    for name, path in mods.items():
        if path.name == "__init__.py":
            init_deps = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(name + "."):
                    init_deps.add(node.module)
            graph[name] = {d for d in init_deps if d in mods}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_catches_a_cycle():
    # negative control: the finder must see a cycle hidden two modules deep
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_function_local_imports():
    # the model must not reach up to the weights floor, not even inside a method
    graph = import_graph()
    assert "minigpt.model" in graph
    assert not any(d.startswith("minigpt.weights") for d in graph["minigpt.model"])
    # and the walker does see imports inside functions (checkpoint loads the model lazily)
    assert "minigpt.model" in graph["minigpt.training.checkpoint"]


def test_floors_are_folders():
    """The architecture is readable from the tree (README's layout section)."""
    for folder in ("tokenizer", "training", "weights", "inference", "cli", "layers"):
        assert (ROOT / "minigpt" / folder / "__init__.py").is_file(), folder
