"""``actstore analyze``, run for real as a subprocess on the planted store and a saved SAE:
the output equals the library's, a killed run resumes, bad input is one line and exit 1."""

from __future__ import annotations

import json
import sys

import pytest

import actstore.analysis as an
from actstore.sae import save
from helpers import zygote
from helpers.analysis_store import BLOCK, relu_sae
from helpers.paths import ROOT

JOBS = "stats,top,bins,contexts,top_tokens"
OPTS = ["--option", "top.k=5", "--option", "contexts.window=3", "--option", "bins.samples=3"]
SPEC = {"stats": {}, "top": {"k": 5}, "bins": {"samples": 3}, "contexts": {"window": 3}, "top_tokens": {}}


def _cli(*args):
    return zygote.run(
        [sys.executable, "-m", "actstore.cli", "analyze", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("sae")
    save(relu_sae(), d / "run" / "sae")  # laid out like `actstore train --out run`
    return d / "run"


def test_analyze_equals_the_library_and_reruns(planted, saved, tmp_path):
    path, _ = planted
    out = tmp_path / "o"
    common = ["--store", path, "--sae", saved, "--jobs", JOBS, "--block-rows", BLOCK, *OPTS]
    r = _cli(*common, "--out", out, "--json", "--rows", "10:", "--drop", "bos")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out) and doc["m"] == 24 and doc["hook"] == "h"
    assert doc["jobs"] == JOBS.split(",") and doc["summary"]["stats"]["rows"] == doc["rows_seen"] > 0
    assert "row/s" in r.stderr or "rows/s" in r.stderr  # the progress bar
    ref = an.run(path, relu_sae(), SPEC, tmp_path / "ref", block_rows=BLOCK, rows=slice(10, None), drop_flags="bos")
    assert files(out) == files(ref)
    attrs = an.open(out).attrs
    assert attrs["selection"]["rows"][0] == 10 and attrs["selection"]["drop_flags"] == 1
    again = _cli(*common, "--out", out, "--rows", "10:", "--drop", "bos", "--no-progress")
    assert again.returncode == 0 and "analysed" in again.stdout and again.stderr == ""
    assert files(out) == files(ref)


def test_analyze_resumes_a_killed_run(planted, saved, tmp_path):
    path, _ = planted
    out = tmp_path / "o"

    class Killed(Exception):
        pass

    def die(seq, rows):
        if seq == 2:
            raise Killed

    with pytest.raises(Killed):  # stands in for a crash right after commit 2
        an.run(path, relu_sae(), SPEC, out, block_rows=BLOCK, commit_rows=1, on_commit=die)
    assert (out / "_state").exists() and not (out / "zarr.json").exists()
    r = _cli("--store", path, "--sae", saved, "--jobs", JOBS, "--block-rows", BLOCK, "--commit-rows", 1, *OPTS,
             "--out", out, "--json", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = an.run(path, relu_sae(), SPEC, tmp_path / "ref", block_rows=BLOCK, commit_rows=1)
    assert files(out) == files(ref)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--hook", "nope"], "unknown hook 'nope'"),
        (["--jobs", "stats,lens2"], "lens2"),
        (["--rows", "5"], "is not A:B"),
        (["--rows", "0:100000"], "not inside the store"),
        (["--drop", "bos,oops"], "unknown flag 'oops'"),
        (["--option", "top.k"], "JOB.KEY=VALUE"),
        (["--option", "lens.t=3"], "not in --jobs"),
        (["--option", "top.kk=3"], "bad job option"),
    ],
)
def test_analyze_errors_are_one_line(planted, saved, tmp_path, args, words):
    path, _ = planted
    r = _cli("--store", path, "--sae", saved, "--out", tmp_path / "o", "--jobs", "stats,top", *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actstore: ") and words in lines[0], r.stderr
    assert not (tmp_path / "o" / "zarr.json").exists()


def test_analyze_missing_required_and_foreign_folder(planted, saved, tmp_path):
    path, _ = planted
    r = _cli("--store", path, "--out", tmp_path / "o")
    assert r.returncode == 1 and r.stderr.strip() == "actstore: missing --sae"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    r = _cli("--store", path, "--sae", saved, "--out", tmp_path / "x")
    assert r.returncode == 1 and "holds no actstore analysis" in r.stderr
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # over ~15 s on 2 busy cores (subprocesses or compiles): scheduled first
def test_analyze_with_a_model_folder(planted, saved, tmp_path):
    from test_lens import gpt2, llama  # the tiny HF models of the lens tests

    path, _ = planted
    llama().save_pretrained(tmp_path / "llama")
    small = gpt2(vocab=40)
    small.config.bos_token_id = small.config.eos_token_id = 0  # in its vocabulary: no transformers warning
    small.save_pretrained(tmp_path / "small")
    common = ["--store", path, "--sae", saved, "--jobs", "stats,lens", "--option", "lens.t=3", "--no-progress"]
    r = _cli(*common, "--model", tmp_path / "llama", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    a = an.open(tmp_path / "o")
    assert a.array("lens/top_ids").shape == (24, 3) and a.attrs["model"]["name"] == str(tmp_path / "llama")
    r = _cli(*common, "--model", tmp_path / "small", "--out", tmp_path / "p")
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("actstore")]  # transformers draws a loading bar
    assert r.returncode == 1 and len(ours) == 1 and r.stderr.strip().endswith(ours[0]), r.stderr
    assert "vocabulary has 40 tokens but the store holds token id 49" in ours[0]
    assert not (tmp_path / "p").exists()
    r = _cli(*common, "--out", tmp_path / "q")
    assert r.returncode == 1 and "pass model= (--model)" in r.stderr
