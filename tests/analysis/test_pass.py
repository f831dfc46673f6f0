"""The pass engine: exact share merges, SIGKILL + rerun gives identical bytes, the errors."""

import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import actstore.analysis as an
from actstore.analysis import AnalysisError
from actstore.analysis._tree import BlockTree
from actstore.analysis.report import render
from actstore.errors import ActstoreError
from actstore.sae import ReLUSAE, SAEConfig
from helpers import zygote
from helpers.analysis_store import BLOCK, JOBS, relu_sae, write_store
from helpers.paths import HELPERS, ROOT
from helpers.procs import torchrun


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_block_tree_any_split_is_bit_identical():
    g = np.random.default_rng(0)
    leaves = [{"s": g.standard_normal(5) * 10.0 ** g.integers(-8, 8, 5)} for _ in range(37)]
    whole = BlockTree()
    for b, p in enumerate(leaves):
        whole.push(b + 3, p)
    want = whole.total({"s": np.zeros(5)})["s"]
    seq = np.zeros(5)
    for p in leaves:
        seq = seq + p["s"]
    for _ in range(20):
        cuts = sorted(g.choice(np.arange(1, 37), size=int(g.integers(1, 6)), replace=False).tolist())
        parts, lo = [], 0
        for hi in cuts + [37]:
            t = BlockTree()
            for b in range(lo, hi):
                t.push(b + 3, leaves[b])
            parts.append(t)
            lo = hi
        while len(parts) > 1:  # merge adjacent parts in a random grouping
            i = int(g.integers(len(parts) - 1))
            parts[i].merge(parts.pop(i + 1))
        assert parts[0].total({"s": np.zeros(5)})["s"].tobytes() == want.tobytes()
    assert np.allclose(want, seq)


def test_two_shares_merge_to_the_single_pass(planted, relu, tmp_path):
    path, _ = planted
    one = an.run(path, relu, JOBS, tmp_path / "one", block_rows=BLOCK)
    assert an.run(path, relu, JOBS, tmp_path / "two", block_rows=BLOCK, rank=1, world_size=2) is None
    assert not (tmp_path / "two" / "zarr.json").exists()
    two = an.run(path, relu, JOBS, tmp_path / "two", block_rows=BLOCK, rank=0, world_size=2)
    assert files(two) == files(one)
    assert an.run(path, relu, JOBS, one, block_rows=BLOCK) == one  # finished: nothing to do


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_single_pass(planted, relu, tmp_path):
    path, _ = planted
    one = an.run(path, relu, JOBS, tmp_path / "one", block_rows=BLOCK)
    r = torchrun(HELPERS / "analysis_rank.py", [path, tmp_path / "two"], nproc=2, port_base=27700)
    assert r.returncode == 0, r.stderr[-3000:]
    assert files(tmp_path / "two") == files(one)


@pytest.mark.slow
def test_sigkill_then_rerun_is_byte_identical(planted, tmp_path):
    path, _ = planted
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = an.run(path, relu_sae(), JOBS, tmp_path / "ref", block_rows=BLOCK, commit_rows=1)
    out = tmp_path / "out"
    child = zygote.Popen(
        [sys.executable, str(HELPERS / "analysis_kill_job.py"), str(path), str(out), "3"], cwd=ROOT, env=env
    )
    assert zygote.wait_stopped(child)  # returns once the child has stopped after commit 3
    child.kill()
    assert child.wait() == -signal.SIGKILL
    assert not (out / "zarr.json").exists() and (out / "_state").exists()
    seqs = []
    an.run(path, relu_sae(), JOBS, out, block_rows=BLOCK, commit_rows=1, on_commit=lambda s, r: seqs.append(s))
    assert seqs[0] == 4  # it went on from commit 3
    assert files(out) == files(ref)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and isinstance(exc_info.value, ActstoreError) and isinstance(exc_info.value, ValueError)
    return msg


def test_errors(planted, relu, tmp_path):
    path, _ = planted
    with pytest.raises(AnalysisError) as e:
        an.run(path, ReLUSAE(SAEConfig("relu", 8, 4)), ["stats"], tmp_path / "a", hook="h")
    assert "width 8" in one_line(e) and "width 16" in str(e.value)
    with pytest.raises(AnalysisError) as e:
        an.run(path, relu, ["stats"], tmp_path / "a", hook="nope")
    assert "unknown hook 'nope'" in one_line(e)
    with pytest.raises(AnalysisError) as e:
        an.run(path, relu, ["stats", "lens2"], tmp_path / "a")
    assert "lens2" in one_line(e)
    out = an.run(path, relu, {"top": {"k": 3}}, tmp_path / "b", block_rows=BLOCK)
    with pytest.raises(AnalysisError) as e:
        an.open(out).latent(relu.cfg.m)
    assert "unknown latent 24" in one_line(e)
    with pytest.raises(AnalysisError) as e:
        an.run(path, relu, {"top": {"k": 4}}, out, block_rows=BLOCK)
    assert "different analysis" in one_line(e)
    bare = tmp_path / "bare"
    write_store(bare, tokens=False)
    for job in ("contexts", "top_tokens"):
        with pytest.raises(AnalysisError) as e:
            an.run(bare, relu, ["top", job], tmp_path / "c")
        assert "no token ids" in one_line(e)
    assert not (tmp_path / "c").exists()  # nothing written


def test_a_latent_subset_gives_the_full_run_values_for_those_latents(planted, relu, full, tmp_path):
    a_all, cols, f = full
    pick = [1, 3, 4, 5]
    out = an.run(planted[0], relu, JOBS, tmp_path / "o", block_rows=BLOCK, latents="1,3-5")
    a = an.open(out)
    sel = a.array("latents/selected")
    assert sel.tolist() == [i in pick for i in range(a.m)] and a.attrs["latents"] == pick
    for name in ("latents/count", "latents/max", "top/rows", "top/values", "bins/abs/rows", "contexts/top/acts"):
        assert (a.array(name)[pick] == a_all.array(name)[pick]).all(), name
    others = [i for i in range(a.m) if i not in pick]
    assert (a.array("latents/count")[others] == 0).all() and (a.array("top/rows")[others] == -1).all()
    assert not a.array("latents/dead")[others].any()  # not analysed is not dead
    assert a[3].top == a_all[3].top
    with pytest.raises(AnalysisError, match="latent 2 was not analysed"):
        a[2]
    index = render(out, tmp_path / "r", pages=2)
    html = index.read_text()
    listed = sorted(int(x) for x in re.findall(r'data-latent="(\d+)"', html))
    assert listed == pick
    pages = sorted(int(p.stem) for p in (index.parent / "latents").glob("*.html"))
    assert len(pages) == 2 and set(pages) <= set(pick)
    for bad, msg in (("7-x", "is not an id or a range"), ([a.m], f"unknown latent {a.m}"), ([], "latents is empty")):
        with pytest.raises(AnalysisError, match=msg):
            an.run(planted[0], relu, ["stats"], tmp_path / "bad", block_rows=BLOCK, latents=bad)
