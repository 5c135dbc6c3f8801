#!/usr/bin/env python3
"""Fail if a module of the package imports one that imports it back (directly or round a loop).

Every import statement counts, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING``), and so do the lazy names of ``pymqueue/__init__.py`` (``_LAZY``) and
the CLI's ``_COMMAND_MODULES``. A module's own parent packages are not counted: Python imports
them first whatever the module does. Prints the import graph's cycles and exits 1 if any.

Usage: scripts/import_cycles.py [PACKAGE_DIR]   (default: pymqueue next to this script)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def string_list(node: ast.AST, names: tuple[str, ...]) -> list[str]:
    """Module names held in ``NAME = [...]`` / ``NAME = {...: "module"}`` assignments."""
    out: list[str] = []
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id in names for t in node.targets
    ):
        values = node.value.values if isinstance(node.value, ast.Dict) else getattr(
            node.value, "elts", []
        )
        out += [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return out


def edges(path: Path, name: str, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from a import b": b may be a submodule
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            targets = string_list(node, ("_LAZY", "_COMMAND_MODULES"))
        for dotted in targets:
            target = dotted
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "pymqueue"
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph = {name: edges(path, name, modules) for name, path in paths.items()}
    found = cycles(graph)
    n_edges = sum(len(v) for v in graph.values())
    if not found:
        print(f"import cycles: none ({len(graph)} modules, {n_edges} imports)")
        return 0
    for comp in found:
        inside = {m: sorted(graph[m] & set(comp)) for m in comp}
        print("import cycle: " + "; ".join(f"{m} -> {', '.join(t)}" for m, t in inside.items()))
    return 1


if __name__ == "__main__":
    sys.exit(main())
