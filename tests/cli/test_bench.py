"""``actstore bench``: each subcommand at a tiny size prints its table (or JSON with the
metadata first), and a device that is not there is a one-line error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

import actstore
from actstore.cli import main as cli
from helpers.small_store import two_hook_store

TINY = {
    "store": ["--rows", "2048", "--d", "32"],
    "loader": ["--rows", "2048", "--d", "32", "--batch-size", "128"],
    "kernels": ["--n", "64", "--d", "32", "--m", "256", "--k", "4"],
    "capture": ["--layers", "2", "--d", "64", "--seqs", "4", "--context", "16", "--batch-size", "2"],
}


@pytest.mark.parametrize("suite", list(TINY))
def test_each_subcommand_prints_a_table_with_machine_and_ratios(suite, capsys):
    assert cli(["bench", suite, "--device", "cpu", "--repeats", "2", *TINY[suite]]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("machine: ") and "versions: actstore" in out and "x (per round" in out
    assert f"bench {'kernels encode' if suite == 'kernels' else suite}: checking that" in err and "round 3/3" in err


def test_kernels_prints_the_dispatch_table(tmp_path, monkeypatch, capsys):
    from actstore.ops import _autotune

    monkeypatch.setenv("ACTSTORE_DISPATCH_CACHE", str(tmp_path / "dispatch.json"))
    _autotune.choose("sparse_decode", "NVIDIA H200", "torch.bfloat16|k=32", {"triton": lambda: 0, "dense": lambda: 0})
    assert cli(["bench", "kernels", "--device", "cpu", "--repeats", "1", "--quiet", *TINY["kernels"]]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("dispatch: ") :]
    assert "times its candidates on CUDA only" in tail and str(tmp_path / "dispatch.json") in tail
    row = [line for line in tail.splitlines() if line.startswith("sparse_decode")]
    assert len(row) == 1 and "NVIDIA H200" in row[0] and "torch.bfloat16|k=32" in row[0]
    assert "triton" in row[0] and "dense" in row[0]  # the median of each candidate, in ms
    monkeypatch.setenv("ACTSTORE_DISPATCH_CACHE", str(tmp_path / "none.json"))
    assert cli(["bench", "kernels", "--device", "cpu", "--repeats", "1", "--quiet", *TINY["kernels"]]) == 0
    assert capsys.readouterr().out.rstrip().endswith("none")


@pytest.mark.slow
def test_all_as_json_takes_the_metadata_first(capsys):
    args = ["bench", "all", "--device", "cpu", "--repeats", "1", "--quiet"]
    args += ["--rows", "2048", "--d", "32", "--batch-size", "2", "--n", "64", "--m", "256", "--k", "4"]
    args += ["--layers", "2", "--seqs", "4", "--context", "16"]
    assert cli([*args, "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert list(doc) == ["meta", "results", "dispatch"] and err == ""
    assert [r["suite"] for r in doc["results"]] == [
        "capture",
        "store",
        "loader",
        "kernels encode",
        "kernels decode",
        "kernels step",
    ]


def test_a_device_that_is_not_there_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert cli(["bench", "store", "--device", "cuda", *TINY["store"]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("actstore: device 'cuda' is not there") and err.count("\n") == 1


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """tempfile's folder for this test only: what the suites leave there is visible."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.mark.parametrize(
    "suite, args, flag",
    [
        ("loader", ["--rows", "-5"], "--rows"),
        ("loader", ["--rows", "0"], "--rows"),
        ("loader", ["--rows", "64", "--d", "8", "--batch-size", "0"], "--batch-size"),
        ("store", ["--rows", "-5"], "--rows"),
        ("store", ["--rows", "0"], "--rows"),
        ("store", ["--rows", "64", "--d", "0"], "--d"),
        ("kernels", ["--k", "0"], "--k"),
        ("loader", ["--rows", "64", "--d", "8", "--repeats", "0"], "--repeats"),
    ],
)
def test_a_size_that_is_not_positive_is_one_line_and_leaves_nothing(suite, args, flag, temp_dir, capsys):
    assert cli(["bench", suite, "--device", "cpu", "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"actstore: bench {suite}: {flag} must be a positive integer") and err.count("\n") == 1
    assert list(temp_dir.iterdir()) == []  # no actstore-bench-* folder left behind


def test_a_failing_suite_removes_its_temporary_store(temp_dir, monkeypatch):
    from actstore.bench import loader

    def broken(*a, **k):  # fails after the temporary store is written
        raise RuntimeError("planted")

    monkeypatch.setattr(loader, "ActivationLoader", broken)
    with pytest.raises(RuntimeError, match="planted"):
        loader.run(rows=256, d=8, batch_size=32, repeats=1)
    assert list(temp_dir.iterdir()) == []


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("suite", ["loader", "store"])
def test_store_option_benches_the_users_rows_and_leaves_the_store_alone(suite, tmp_path, temp_dir, capsys):
    user = tmp_path / "user"
    acts = two_hook_store(user, n=1500)
    before = _tree(user)
    args = ["bench", suite, "--device", "cpu", "--repeats", "1", "--quiet", "--json", "--store", str(user)]
    args += ["--hook", "encoder.layer.5", "--rows", "1200"] + (["--batch-size", "100"] if suite == "loader" else [])
    assert cli(args) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["params"]["rows"] == 1200 and res["params"]["d"] == 64 and res["params"]["hook"] == "encoder.layer.5"
    assert all(e == 0.0 for e in res["check"]["rel_err"].values())
    assert _tree(user) == before  # read only, never written or removed
    assert list(temp_dir.iterdir()) == []
    with actstore.open(user) as st:
        assert st.rows == 1500 and torch.equal(st.read("encoder.layer.5"), acts["encoder.layer.5"].bfloat16().float())


@pytest.mark.parametrize("suite", ["loader", "store"])
def test_store_option_feeds_the_users_rows_to_the_variants(suite, tmp_path, monkeypatch):
    # What the suite checks and times is the user's data: the reference output of its check
    # is the first rows of the chosen hook (as bf16 for the store suite, which writes bf16).
    from actstore.bench import loader, store

    mod = {"loader": loader, "store": store}[suite]
    acts = two_hook_store(tmp_path / "user", n=700)
    seen = {}
    real = mod.compare

    def spy(name, variants, **kw):
        seen["ref"] = next(iter(kw["outputs"].values()))()
        return real(name, variants, **kw)

    monkeypatch.setattr(mod, "compare", spy)
    opts = {"batch_size": 64} if suite == "loader" else {}
    mod.run(rows=None, d=None, repeats=1, store=str(tmp_path / "user"), hook="encoder.layer.3", **opts)
    want = acts["encoder.layer.3"].to(torch.bfloat16)  # the helper's store holds bf16
    if suite == "store":
        assert torch.equal(torch.from_numpy(seen["ref"]).view(torch.bfloat16), want)
    else:
        assert torch.equal(seen["ref"], want.float())


def test_store_option_errors_are_one_line(tmp_path, capsys):
    two_hook_store(tmp_path / "user", n=300)
    cases = [
        (["--store", str(tmp_path / "user")], "has hooks encoder.layer.3, encoder.layer.5: pick one with --hook"),
        (["--store", str(tmp_path / "user"), "--hook", "encoder.layer.3", "--rows", "301"], "more than the 300 rows"),
        (["--store", str(tmp_path / "user"), "--hook", "encoder.layer.3", "--d", "32"], "leave --d out"),
        (["--store", str(tmp_path / "none")], "no store at"),
        (["--hook", "encoder.layer.3"], "give --store too"),
    ]
    for extra, msg in cases:
        assert cli(["bench", "loader", "--device", "cpu", "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert (tmp_path / "user" / "zarr.json").exists()
