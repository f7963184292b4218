"""The shape of the code, checked statically: dependencies point one way, backends are named in one place.

Imports are read from the source (module level and inside functions), not by importing anything.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

from launcher.backends.traits import BACKEND_NAMES

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str) -> Dict[str, Path]:
    """Module name -> file for every module of a top-level package of the repository."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str) -> Iterator[Tuple[str, int]]:
    """(module imported, line) for every import statement of the file; `from X import y` yields X.y when
    that is a module of the repository, else X."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                yield (target if _is_module(target) else base), node.lineno


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph(package: str) -> Dict[str, Set[str]]:
    mods = modules(package)
    edges: Dict[str, Set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in imports(path, name):
            if target in mods and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_launcher_modules():
    assert cycles(graph("launcher")) == []


def test_the_workload_never_imports_the_launcher():
    offending = [(name, target, line) for name, path in modules("refinenet").items()
                 for target, line in imports(path, name) if target.split(".")[0] == "launcher"]
    assert offending == []


def _compares_backend_name(node: ast.AST) -> bool:
    if not isinstance(node, ast.Compare):
        return False
    for side in [node.left, *node.comparators]:
        values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        if any(isinstance(v, ast.Constant) and v.value in BACKEND_NAMES for v in values):
            return True
    return False


def test_only_the_backends_decide_by_a_backend_name():
    offending = []
    for name, path in modules("launcher").items():
        if name.startswith("launcher.backends"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offending += [(name, n.lineno) for n in ast.walk(tree) if _compares_backend_name(n)]
    assert offending == []


def test_no_test_module_imports_another_test_module():
    offending = []
    for package in ("tests", "benchmarks"):
        for name, path in modules(package).items():
            for target, line in imports(path, name):
                if any(part.startswith("test_") for part in target.split(".")):
                    offending.append((name, target, line))
    assert offending == []
