"""The import contract of DESIGN.md: models never load the engines, no private name crosses a module, no cycle.

Each check reads the source (AST) or a fresh interpreter, so it can fail: a
``from bayeskit.x import _helper`` anywhere in the package, the tests, the
tutorials or the benchmarks, a ``module._helper`` attribute reached from
another module, or an import loop (deferred imports included) names the file
and line.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("bayeskit", "tests", "tutorials", "benchmarks")


def python_files():
    for folder in SCANNED:
        yield from sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module a ``from ... import`` names, with relative imports resolved against ``path``."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        module_aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = absolute(node, path)
                for alias in node.names:
                    if is_private(alias.name) and source.startswith("bayeskit"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {alias.name}")
                    elif source.startswith("bayeskit") and is_module(f"{source}.{alias.name}"):
                        module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("bayeskit"):
                        module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        for node in ast.walk(tree):
            # module._helper on a bayeskit module imported here (bayeskit.x._y spelled out included)
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                base = node.value
                dotted = []
                while isinstance(base, ast.Attribute):
                    dotted.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in module_aliases:
                    owner = ".".join([module_aliases[base.id], *reversed(dotted)])
                    if is_module(owner) and owner != module_name(path):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_importing_the_models_loads_no_engine():
    code = ("import sys, bayeskit.models; "
            "print(','.join(sorted(m for m in sys.modules if m.startswith('bayeskit.inference'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "", f"import bayeskit.models loaded {result.stdout.strip()}"


def test_the_models_source_never_imports_the_engines():
    found = []
    for path in sorted((ROOT / "bayeskit" / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([absolute(node, path)] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                      if name.startswith("bayeskit.inference")]
    assert not found, "models import the engines:\n" + "\n".join(found)


def imports_of(path: Path) -> set[str]:
    """The bayeskit modules ``path`` imports anywhere, in a function body too (a deferred import that breaks
    a loop at load time is still a loop in the design); ``if TYPE_CHECKING:`` blocks are left out."""
    imported = set()
    pending = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending += node.orelse
            continue
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("bayeskit")}
        elif isinstance(node, ast.ImportFrom):
            source = absolute(node, path)
            if source.startswith("bayeskit"):
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    imported.add(submodule if is_module(submodule) else source)
        pending += list(ast.iter_child_nodes(node))
    return imported


def test_no_import_cycle_in_the_package():
    paths = {module_name(p): p for p in sorted((ROOT / "bayeskit").rglob("*.py"))}
    graph = {name: sorted(m for m in imports_of(path) if m in paths and m != name)
             for name, path in paths.items()}
    state, stack, cycles = {}, [], []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for child in graph[name]:
            # a package's __init__ runs before its submodules: an edge into a parent package is not a loop
            if name.startswith(child + "."):
                continue
            if state.get(child) == "open":
                cycles.append(" -> ".join(stack[stack.index(child):] + [child]))
            elif child not in state:
                visit(child)
        stack.pop()
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
