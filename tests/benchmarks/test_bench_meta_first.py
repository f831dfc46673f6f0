"""Every benchmark takes its metadata (date, machine, load at the start, git commit) before
it measures anything: taken at the end, the load and the commit describe the state after the
run, not the one the figures were measured in (``write_result`` adds the end state beside the
start). Checked statically on every script in benchmarks/: in each function that calls
``metadata()``, no call that measures (a clock, the timing harness, or a function of the same
script that does either) may come before the first ``metadata()`` call."""

from __future__ import annotations

import ast

import pytest

from helpers.paths import BENCHMARKS

# Calls that read a clock or time a variant (by name or attribute name).
CLOCKS = {"perf_counter", "process_time", "monotonic", "time", "wall_time", "interleaved", "do_bench", "compare"}
NOT_BENCHMARKS = {"_common.py", "stale_results.py"}


def _called(node: ast.AST) -> str | None:
    f = node.func if isinstance(node, ast.Call) else None
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def _early_exit(node: ast.AST) -> bool:
    """An ``if`` without ``else`` whose body ends in ``return``: another mode of the script (a
    child process's entry point), which never reaches the measurement of ``main``."""
    return isinstance(node, ast.If) and not node.orelse and isinstance(node.body[-1], ast.Return)


def _calls(fn: ast.AST) -> list[tuple[int, int, str]]:
    """(line, column, name) of every call in ``fn``, in source order, outside nested function
    bodies (a closure defined before ``metadata()`` and called after it measures after it)
    and early-exit branches (:func:`_early_exit`)."""
    out = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _early_exit(child):
                continue
            if isinstance(child, ast.Call) and _called(child):
                out.append((child.lineno, child.col_offset, _called(child)))
            visit(child)

    visit(fn)
    return sorted(out)


def _measuring(tree: ast.Module) -> set[str]:
    """The script's own functions that measure: they call a clock, or one of them, transitively."""
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    direct = {
        name: {c for n in ast.walk(f) if isinstance(n, ast.Call) and (c := _called(n))} for name, f in funcs.items()
    }
    measuring = {name for name, calls in direct.items() if calls & CLOCKS}
    changed = True
    while changed:
        changed = False
        for name, calls in direct.items():
            if name not in measuring and calls & measuring:
                measuring.add(name)
                changed = True
    return measuring


def late_metadata(source: str) -> list[str]:
    """``"func: line L measures before metadata() at line M"`` for each offending function."""
    tree = ast.parse(source)
    measuring = _measuring(tree) | CLOCKS
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        calls = _calls(fn)
        meta = [line for line, _, name in calls if name == "metadata"]
        if not meta:
            continue
        before = [(line, name) for line, _, name in calls if line < meta[0] and name in measuring]
        if before:
            bad.append(
                f"{fn.name}: {before[0][1]}() at line {before[0][0]} measures before metadata() at line {meta[0]}"
            )
    return bad


SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in NOT_BENCHMARKS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_metadata_is_taken_before_anything_is_measured(script):
    assert late_metadata(script.read_text()) == []


def test_the_check_sees_metadata_taken_after_the_timing():
    late = """
def main():
    times = interleaved(variants, 3)
    doc = {"meta": metadata(), "times": times}
"""
    helper = """
def run(shapes):
    t0 = time.perf_counter()
    return {}

def main():
    res = run(shapes)
    meta = metadata()
"""
    first = """
def main():
    def timed():  # defined before metadata(), called after it: fine
        return time.perf_counter()
    meta = C.metadata()
    times = interleaved({"a": timed}, 3)
"""
    assert late_metadata(late) == ["main: interleaved() at line 3 measures before metadata() at line 4"]
    assert late_metadata(helper) == ["main: run() at line 7 measures before metadata() at line 8"]
    assert late_metadata(first) == []
    child_mode = """
def main(argv=None):
    if args.memory_child:
        memory_child(args.memory_child)  # measures, in a child process that writes no result
        return
    meta = C.metadata()
"""
    assert late_metadata("def memory_child(s):\n    t = time.perf_counter()\n" + child_mode) == []
