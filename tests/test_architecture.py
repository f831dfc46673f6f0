"""The package layering of docs/ARCHITECTURE.md holds in the code: every module imports
only from its own layer or the layers above it (module-level and deferred imports alike),
so there is no import cycle between packages, and no file-level cycle inside one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "actstore"

# Top to bottom, as drawn in docs/ARCHITECTURE.md; a module may import its own layer or any above.
LAYERS = [
    {"errors", "_dist", "_native", "_numerics", "_version", "_C", "_lazy"},
    {"store"},
    {"models"},
    {"reference"},
    {"ops", "kernels"},
    {"capture", "loader", "api"},
    {"sae"},
    {"analysis"},
    {"integrations"},
    {"demo", "bench"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return parts[0]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the actstore modules that ``path`` imports, anywhere in the file."""
    mod = _module(path).split(".")
    package = mod if path.name == "__init__.py" else mod[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "actstore")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "actstore":
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)
    return out


def _files():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer():
    missing = sorted({_top(p) for p in _files()} - RANK.keys() - {"__init__"})
    assert not missing, f"add these to LAYERS (and to docs/ARCHITECTURE.md): {missing}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_up_only(path):
    if path.name == "__init__.py" and path.parent == PKG:
        return  # the package face re-exports everything
    own = RANK[_top(path)]
    upward = sorted(
        n for n in _imports(path) if len(n.split(".")) > 1 and n.split(".")[1] in RANK and RANK[n.split(".")[1]] > own
    )
    assert not upward, f"{path.relative_to(ROOT)} imports from a lower layer: {upward}"


def test_no_module_cycle():
    files = {_module(p): p for p in _files()}
    graph = {m: {n for n in _imports(p) if n in files and n != m} for m, p in files.items()}
    # Package __init__ files re-export their children: an edge into a package's face from its
    # own child is not a cycle of code, so drop child -> own-package edges.
    for m in graph:
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m) :] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, f"import cycles: {cycles[:3]}"
