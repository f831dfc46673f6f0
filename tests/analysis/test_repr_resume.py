"""Resume of the representation analyses (actstore/analysis/_checkpoint.py): a child process
(tests/helpers/repr_kill_job.py) runs an analysis with a state folder, stops itself after a
known commit of a known pass and is SIGKILLed; the rerun continues from that commit and
returns the uninterrupted run's arrays. A state folder of another analysis, of another world
size, or with a damaged file is a one-line error; the CLI keeps its state in OUT/_state only
until the output is written."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch

from actstore.analysis import AnalysisError
from actstore.cli import main
from actstore.errors import ActstoreError
from helpers import zygote
from helpers.paths import HELPERS, ROOT
from helpers.repr_kill_job import run
from helpers.repr_store import write_repr_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "s"
    write_repr_store(path)
    return path


def arrays(res) -> dict[str, np.ndarray]:
    """Every array and number of a result dataclass, flattened to ``{field/key: array}``."""
    out = {}

    def walk(name, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{name}/{k}", x)
        elif torch.is_tensor(v):
            out[name] = v.numpy()
        elif isinstance(v, (np.ndarray, int, float)):
            out[name] = np.asarray(v)

    for f in dataclasses.fields(res):
        walk(f.name, getattr(res, f.name))
    return out


def assert_same(got, ref) -> None:
    a, b = arrays(got), arrays(ref)
    assert sorted(a) == sorted(b) and len(a) >= 5
    bad = [k for k in a if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")]
    assert bad == []
    assert got.meta == ref.meta


def kill_at(kind: str, store, state, pass_: str, stop: int) -> None:
    """Run ``kind`` in a child until commit ``stop`` of ``pass_``, then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS)])}
    argv = [sys.executable, str(HELPERS / "repr_kill_job.py"), kind, str(store), str(state), pass_, str(stop)]
    child = zygote.Popen(argv, cwd=ROOT, env=env)
    try:
        stopped = zygote.wait_stopped(child)  # returns once the child has stopped itself
        assert stopped, f"the child ended (status {child.returncode}) before commit {stop} of {pass_}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


CASES = [
    ("steering", "steering.sums", 3),
    ("steering", "steering.proj", 4),
    ("pca", "pca.moments", 2),
    ("probes", "probes.sgd.1", 3),
    ("diff", "layer_diff.norms", 3),
    ("scan", "scan.hist", 2),
]


@pytest.fixture(scope="module")
def reference(store):
    """The uninterrupted run of each kind, without a state folder (computed once per kind)."""
    got = {}
    return lambda kind: got[kind] if kind in got else got.setdefault(kind, run(kind, store))


@pytest.mark.slow
@pytest.mark.parametrize("kind,pass_,stop", CASES, ids=[f"{k}-{p}" for k, p, _ in CASES])
def test_sigkill_then_rerun_gives_the_uninterrupted_arrays(store, reference, tmp_path, kind, pass_, stop):
    state = tmp_path / "state"
    kill_at(kind, store, state, pass_, stop)
    held = json.loads((state / pass_ / "0-of-1" / "state.json").read_text())
    assert (held["seq"], held["done"]) == (stop, False)
    commits = []
    got = run(kind, store, state_dir=state, commit_rows=1, on_commit=lambda n, s, r: commits.append((n, s)))
    assert commits[0] == (pass_, stop + 1)  # it went on from the killed pass's last commit
    assert_same(got, reference(kind))


class Interrupt(Exception):
    pass


INTERRUPTS = [("between", "steering.proj_b", 2), ("probes", "probes.eval", 3), ("steering", "steering.sums", 4)]


@pytest.mark.slow
@pytest.mark.parametrize("kind,pass_,stop", INTERRUPTS, ids=[k for k, _, _ in INTERRUPTS])
def test_an_interrupted_pass_with_appended_parts_resumes(store, reference, tmp_path, kind, pass_, stop):
    """Passes whose buffers grow by rows (projections, test scores, per-document sums) append a
    part file per commit; stopped by an exception after commit ``stop``, the rerun reads the
    parts back. Between two stores covers its four passes."""

    def interrupt(name, seq, rows):
        if (name, seq) == (pass_, stop):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(kind, store, state_dir=tmp_path / "st", commit_rows=1, on_commit=interrupt)
    held = json.loads((tmp_path / "st" / pass_ / "0-of-1" / "state.json").read_text())
    assert len(held["parts"]) == stop and all((tmp_path / "st" / pass_ / "0-of-1" / p).exists() for p in held["parts"])
    commits = []
    got = run(kind, store, state_dir=tmp_path / "st", commit_rows=1, on_commit=lambda *a: commits.append(a[:2]))
    assert commits[0] == (pass_, stop + 1)
    assert_same(got, reference(kind))


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and isinstance(exc_info.value, ActstoreError)
    return msg


def test_finished_passes_are_skipped_and_give_the_same_result(store, reference, tmp_path):
    first = run("diff", store, state_dir=tmp_path / "st", commit_rows=200)
    commits = []
    again = run("diff", store, state_dir=tmp_path / "st", on_commit=lambda *a: commits.append(a))
    assert commits == []  # both passes were done: nothing read, nothing committed
    assert_same(again, first)
    assert_same(first, reference("diff"))


def test_a_state_folder_of_another_analysis_is_refused(store, tmp_path):
    run("pca", store, state_dir=tmp_path / "st", commit_rows=64)
    with pytest.raises(AnalysisError) as e:
        run("steering", store, state_dir=tmp_path / "st")
    assert "different analysis in progress (pca)" in one_line(e) and "delete it" in str(e.value)
    with pytest.raises(AnalysisError) as e:  # the same analysis with another world size
        run("pca", store, state_dir=tmp_path / "st", rank=0, world_size=2)
    assert "over 1 ranks" in one_line(e)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(AnalysisError) as e:
        run("scan", store, state_dir=tmp_path / "other")
    assert "holds something else" in one_line(e)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_state_file_names_it_and_says_delete_the_state_folder(store, tmp_path, damage):
    state = tmp_path / "st"
    run("pca", store, state_dir=state, commit_rows=64)
    npz = next((state / "pca.moments" / "0-of-1").glob("state-*.npz"))
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    else:
        npz.unlink()
    with pytest.raises(AnalysisError) as e:
        run("pca", store, state_dir=state)
    msg = one_line(e)
    assert str(npz) in msg and f"delete the state folder {state}" in msg
    (state / "pca.moments" / "0-of-1" / "state.json").write_text("{not json")
    with pytest.raises(AnalysisError) as e:
        run("pca", store, state_dir=state)
    assert "state.json is damaged" in one_line(e) and "delete the state folder" in str(e.value)


@pytest.mark.slow
def test_cli_keeps_its_state_in_out_until_the_output_is_written(store, tmp_path, capsys):
    from actstore import open as open_store
    from actstore.analysis import scan
    from actstore.cli import build_parser
    from actstore.cli._groups import groups_from_args

    np.save(tmp_path / "v.npy", np.random.default_rng(2).standard_normal((2, 16)))
    base = ["scan", "--store", store, "--hook", "a", "--vectors", tmp_path / "v.npy", "--k", "4", "--bins", "8",
            "--block-rows", "128", "--commit-rows", "128"]  # fmt: skip

    def cli(out):
        code = main([str(a) for a in base + ["--out", out]])
        return code, capsys.readouterr().err

    assert cli(tmp_path / "ref") == (0, "")
    assert (tmp_path / "ref" / "zarr.json").exists() and not (tmp_path / "ref" / "_state").exists()

    # The state the CLI's own call commits (same groups, options, block_rows), left in OUT/_state
    # with a damaged file: the CLI reads it (its identity matches) and names the file.
    s = open_store(store)
    args = build_parser().parse_args([str(a) for a in base + ["--out", tmp_path / "x"]])
    kw = dict(k=4, bins=8, window=8, block_rows=128, commit_rows=128)
    scan(
        s, "a", np.load(tmp_path / "v.npy"), groups_from_args(s, args), state_dir=tmp_path / "damaged" / "_state", **kw
    )
    npz = next((tmp_path / "damaged" / "_state" / "scan.hist" / "0-of-1").glob("state-*.npz"))
    npz.write_bytes(b"PK\x03\x04 cut short")
    code, err = cli(tmp_path / "damaged")  # the CLI read OUT/_state: it names the damaged file
    assert code == 1 and err.count("\n") == 1 and str(npz) in err and "delete the state folder" in err

    # A state folder of another analysis (a PCA) is refused in one line and left in place.
    run("pca", store, state_dir=tmp_path / "o3" / "_state", commit_rows=128)
    code, err = cli(tmp_path / "o3")
    assert code == 1 and err.count("\n") == 1 and "different analysis in progress (pca)" in err
    assert (tmp_path / "o3" / "_state" / "identity.json").exists()
