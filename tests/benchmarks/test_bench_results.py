"""benchmarks/stale_results.py: which result files are older than the code they measure.

The checker is tested on a synthetic git repository (fresh, stale by a package module,
stale by its own script, an unrelated change, an unknown commit, no commit, no mapping,
a dirty run). On this repository it runs in CI and prints its listing as a warning: stale
results are not a failure (most need a GPU or minutes to rerun), but a result file that no
``MEASURES`` entry maps is, so that every new benchmark says what it measures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from helpers.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))
import stale_results as S  # noqa: E402

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    return subprocess.run(
        ["git", *env_args, *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def _commit(repo: Path, files: dict[str, str], msg: str) -> str:
    for p, text in files.items():
        (repo / p).parent.mkdir(parents=True, exist_ok=True)
        (repo / p).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", msg)
    return _git(repo, "rev-parse", "HEAD")


def _result(repo: Path, name: str, commit: str | None, dirty: list[str] = ()) -> None:
    meta = {"command": f"python benchmarks/{name}.py"}
    if commit is not None:
        meta["git"] = {"commit": commit, "uncommitted_paths": [f" M {p}" for p in dirty]}
    (repo / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (repo / f"benchmarks/results/{name}.json").write_text(json.dumps({"meta": meta}))


MEASURES = {"bench_a.py": (r"a_\w+", ["pkg/a.py", "lib"]), "bench_b.py": (r"b(_quick)?", ["pkg/b.py"])}


@needs_git
def test_checker_classifies_results_against_the_history(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    _git(repo, "init", "-q")
    first = _commit(
        repo,
        {
            "pkg/a.py": "1",
            "pkg/b.py": "1",
            "lib/x/y.py": "1",
            "benchmarks/bench_a.py": "1",
            "benchmarks/bench_b.py": "1",
            "other.py": "1",
        },
        "start",
    )
    _commit(repo, {"other.py": "2", "pkg/a.pyc": "2"}, "unrelated")  # neither measured: a prefix is not a folder
    _result(repo, "a_cpu", first)  # a: only unrelated commits since -> fresh
    _result(repo, "b", first)  # b: pkg/b.py changes below -> stale
    _result(repo, "b_quick", None)  # no commit recorded
    _result(repo, "a_gpu", "f" * 40, dirty=["pkg/a.py"])  # not in this history; run with a dirty pkg/a.py
    _result(repo, "c", first)  # no MEASURES entry
    second = _commit(repo, {"pkg/b.py": "2"}, "change b")
    st = {s.name: s for s in S.check(repo, MEASURES)}
    assert {n: s.state for n, s in st.items()} == {
        "a_cpu": "fresh",
        "b": "stale",
        "b_quick": "no-commit",
        "a_gpu": "unknown-commit",
        "c": "unmapped",
    }
    assert [(c[0], c[2], c[3]) for c in st["b"].changes] == [(second, "change b", ["pkg/b.py"])]
    assert st["a_gpu"].dirty_paths == ["pkg/a.py"] and st["a_cpu"].dirty_paths == []
    assert st["a_cpu"].script == "bench_a.py" and st["c"].script is None

    # a change under a measured folder, then to the script itself, makes a_cpu stale, newest first
    third = _commit(repo, {"lib/x/y.py": "2"}, "change lib")
    fourth = _commit(repo, {"benchmarks/bench_a.py": "2"}, "change the script")
    st = {s.name: s for s in S.check(repo, MEASURES)}
    assert st["a_cpu"].state == "stale"
    assert [(c[0], c[3]) for c in st["a_cpu"].changes] == [(fourth, ["benchmarks/bench_a.py"]), (third, ["lib/x/y.py"])]
    # a result measured at HEAD is fresh again
    _result(repo, "a_cpu", fourth)
    assert {s.name: s.state for s in S.check(repo, MEASURES)}["a_cpu"] == "fresh"

    text = S.report(S.check(repo, MEASURES), S.missing_paths(repo, {**MEASURES, "bench_z.py": ("z", ["gone"])}))
    assert "stale          b.json" in text and "change b: pkg/b.py" in text and "rerun: python benchmarks/b.py" in text
    assert "unmapped       c.json" in text and "path not in the work tree: benchmarks/bench_z.py" in text
    assert "path not in the work tree: gone" in text


def test_every_result_name_maps_to_exactly_one_script():
    names = {
        "codecs",
        "codecs_quick",
        "store_io",
        "store_io_quick",
        "loader",
        "loader_quick",
        "loader_feed_cpu",
        "loader_feed_cuda",
        "capture_overhead",
        "capture_overhead_gpu_quick",
        "capture_saelens",
        "sae_kernels_cuda",
        "sae_decode_crossover_cpu",
        "sae_pipeline_cuda",
        "sae_train_cpu",
        "gpu_compile",
        "gpu_compile_ci",
        "gpu_model",
        "train_defaults_sweep",
        "mutation",
    }
    for n in names:
        assert S.script_for(n) is not None, n
    assert S.script_for("loader_feed_cpu") == "bench_loader_feed.py" and S.script_for("loader") == "bench_loader.py"
    scripts = [p for kind in ("bench", "gpu", "sweep", "run") for p in (S.REPO / "benchmarks").glob(f"{kind}_*.py")]
    assert {p.name for p in scripts} == set(S.MEASURES)


@needs_git
def test_this_repository_results_are_all_mapped_and_stale_ones_are_listed():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=S.REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: no history to compare the results with")
    statuses = S.check()
    assert statuses, "benchmarks/results/ holds no result files"
    assert [s.name for s in statuses if s.state == "unmapped"] == [], "add these to MEASURES in stale_results.py"
    if any(s.state != "fresh" for s in statuses) or S.missing_paths():
        # A listing, not a failure: rerunning needs a GPU or minutes (python benchmarks/stale_results.py).
        warnings.warn(
            "benchmark results older than the code they measure:\n"
            + S.report(statuses, S.missing_paths(), detail=False),
            stacklevel=1,
        )
