"""benchmarks/bench_saedashboard.py times like with like: SAEDashboard's time holds its model
forwards and its logit tables, so actstore's holds its capture (the forward into a store) and
the lens job; and a headline of two runs (57.6 s and 15.8 s) is refused: at least 5 repeats.
The script needs SAEDashboard in its own venv, so these checks read its source and its
argument handling; the run itself is not part of the tests."""

from __future__ import annotations

import ast
import inspect
import sys

import pytest

from helpers.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))
import bench_saedashboard as B  # noqa: E402


def _timed_calls(fn) -> list[str]:
    """The calls between the timer's start (``t0 = time.perf_counter()``) and ``wall = ...``."""
    body = ast.parse(inspect.getsource(fn)).body[0].body

    def assigns(st, name):
        return isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name) and st.targets[0].id == name

    start = next(i for i, st in enumerate(body) if assigns(st, "t0"))
    end = next(i for i, st in enumerate(body) if assigns(st, "wall"))
    names = []
    for st in body[start + 1 : end]:
        for node in ast.walk(st):
            if isinstance(node, ast.Call):
                f = node.func
                names.append(
                    f"{f.value.id}.{f.attr}"
                    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    else getattr(f, "id", getattr(f, "attr", ""))
                )
    return names


def test_actstore_side_times_the_capture_and_the_lens():
    timed = _timed_calls(B.child_actstore)
    assert "actstore.capture" in timed and "analysis.run" in timed
    assert timed.index("actstore.capture") < timed.index("analysis.run")
    assert "lens" in B.JOBS
    src = inspect.getsource(B.child_actstore)
    assert "model=model" in src  # the lens reads the model's unembedding


def test_saedashboard_side_times_its_runner():
    assert "run" in [c.split(".")[-1] for c in _timed_calls(B.child_sdash)]


@pytest.mark.parametrize("args", [["--repeats", "2"], ["--repeats", "4"], ["--tools", "actstore,nope"]])
def test_fewer_than_five_repeats_or_an_unknown_tool_is_refused(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        B.main([*args, "--dir", str(tmp_path)])
    assert e.value.code == 2 and list(tmp_path.iterdir()) == []  # refused before any setup
    err = capsys.readouterr().err
    assert "at least 5" in err or "pick from" in err


def test_the_quick_smoke_run_may_take_fewer_repeats():
    assert B.MIN_REPEATS == 5
    src = inspect.getsource(B.main)
    assert "repeats < MIN_REPEATS and not args.quick" in src
