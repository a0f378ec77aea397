"""The import rules of the package, checked on its real import graph (every ``import`` statement of every
module, those inside functions included, parsed with ``ast``; imports for type checkers only are left out).

* The engine -- the ReLU rules, targets, methods, hooks, attribution, devices, errors -- imports only
  the engine: no pictures, no file reading or writing, no report, no command line.
* No import circles anywhere in the package (a lazy import inside a function counts: it is a circle
  in spirit, and the next refactoring turns it into an ImportError).
* No private (underscore) name is imported from one module into another: what another module needs is a
  door, named as one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping, Set
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "guided_backprop"
NAME = "guided_backprop"
#: The engine: tensors and models in, maps out.
ENGINE = {f"{NAME}.{m}" for m in ("rules", "targets", "methods", "hooks", "attribution", "devices", "errors")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:`` (never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> Iterator[str]:
    """The package's modules that one import statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    for alias in node.names:  # `from . import panels` imports a module; `from .x import y` imports x
        full = f"{target}.{alias.name}"
        yield full if full in MODULES else target


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Each module of the package -> the modules of the package it imports (at any depth of its code)."""
    graph: dict[str, frozenset[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_nodes(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                deps.update(_imported(module, node, path.name == "__init__.py"))
        graph[module] = frozenset(d for d in deps if d in MODULES and d != module)
    return graph


def circles(graph: Mapping[str, Set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_real_modules() -> None:
    graph = import_graph()
    assert ENGINE <= graph.keys()
    assert f"{NAME}.methods" in graph[f"{NAME}.attribution"]  # a plain `from .methods import ...`
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(ENGINE))
def test_the_engine_imports_only_the_engine(module: str) -> None:
    outside = sorted(import_graph()[module] - ENGINE)
    assert not outside, f"{module} imports {outside}: the engine imports no picture, file, report or CLI code"


def test_no_import_circles() -> None:
    found = circles(import_graph())
    assert not found, f"modules that import each other (directly or around a circle): {found}"


@pytest.mark.slow
def test_no_private_name_crosses_a_module() -> None:
    crossing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(NAME)):
                crossing += [f"{module}: {a.name} from {'.' * node.level}{node.module or ''}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert crossing == [], f"private names imported across modules: {crossing}"


def test_dir_lists_every_public_name_and_the_import_stays_light() -> None:
    """Tab completion (``gbp.load_<TAB>``) offers every name of ``__all__``, each of which resolves, while
    ``import guided_backprop`` itself loads no torch (the names load on first use)."""
    code = ("import sys, guided_backprop as gbp\n"
            "light = sorted(m for m in ('torch', 'torchvision', 'timm', 'matplotlib') if m in sys.modules)\n"
            "missing = sorted(set(gbp.__all__) - set(dir(gbp)))\n"
            "unresolved = [n for n in gbp.__all__ if getattr(gbp, n, None) is None]\n"
            "print(light, missing, unresolved)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[0] == "[] [] []", out.stdout + out.stderr
