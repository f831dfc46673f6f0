"""The ``crosscoder`` analysis job (actstore/analysis/crosscoder_diff.py): a crosscoder with
hand-set decoder norms (latents only in block A, only in B, shared, between, a zero decoder
and one that never fires) gives exactly those classes, histogram counts and most specific
latents; the explained variance per block equals brute force over the rows, for K hooks of
one store and for one hook of two stores; three blocks give each block its share and class; a
killed pass resumes to the same arrays; the report section renders (and in headless
chromium); a ``--sae`` that is no crosscoder and the other wrong combinations are one line;
and end to end, a two-model crosscoder trained by ``actstore.sae.train`` on ``build_pair``
stores, analysed by ``actstore analyze``, whose explained variance on the held-out documents
is the trainer's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import actstore.analysis as an
import actstore.sae
from actstore.analysis import AnalysisError
from actstore.analysis.output import read_attrs
from actstore.analysis.report import render
from actstore.analysis.report.represent import render_repr
from actstore.cli import main
from actstore.sae import SAEConfig, TopKSAE, build, save
from helpers import zygote
from helpers.layer_store import D, build_pair, source, target
from helpers.layer_store import build as build_store

ROWS, BLOCK, M = 480, 128, 32  # 480 rows: four blocks, the last one short
HOOKS = [target(0), target(1)]
PAIR = [f"base:{target(1)}", f"chat:{target(1)}"]
# Per latent the decoder norm in block A and in block B (r = B / (A + B)):
NORMS = {
    **{i: (1.0, 0.0) for i in range(10)},  # A only: r = 0
    **{i: (0.0, 1.0) for i in range(10, 20)},  # B only: r = 1
    **{i: (0.475, 0.525) for i in range(20, 28)},  # shared: r = 0.525
    28: (0.725, 0.275),  # between, not shared: r = 0.275
    29: (0.0, 0.0),  # no decoder: dead
    30: (0.275, 0.725),  # never fires: dead (r = 0.725)
    31: (0.03, 0.97),  # B only: r = 0.97
}
NEVER = 30


def handset(sources, seed=0):
    """A ReLU crosscoder over two blocks of width D with the decoder norms of NORMS; every
    latent fires on every row but NEVER."""
    sae = build(SAEConfig("crosscoder", 2 * D, M, activation="relu", sources=sources), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        u = torch.randn(M, 2, D, generator=g)
        u /= u.norm(dim=-1, keepdim=True)
        scale = torch.tensor([NORMS[i] for i in range(M)])[:, :, None]
        sae.W_dec.copy_((u * scale).flatten(1))
        sae.W_enc.copy_(torch.randn(M, 2 * D, generator=g) * 0.05)
        sae.b_enc.fill_(2.0)
        sae.b_enc[NEVER] = -1e4
        sae.b_dec.copy_(torch.randn(2 * D, generator=g) * 0.1)
    return sae


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc")
    a, b = build_pair(root, layers=2, rows=ROWS)
    save(handset(HOOKS), root / "layers")
    save(handset(PAIR), root / "models")
    save(TopKSAE(SAEConfig("topk", D, 8, k=2, hook=target(1)), seed=1), root / "plain")
    return root, a, b


def brute_fvu(sae, x: torch.Tensor) -> np.ndarray:
    """FVU of each of the two blocks over every row of ``x [n, 2D]``, from one forward."""
    with torch.no_grad():
        err = (sae(x).double() - x.double()).pow(2).sum(0).numpy()
    var = ((x.double() - x.double().mean(0)) ** 2).sum(0).numpy()
    return np.array([err[:D].sum() / var[:D].sum(), err[D:].sum() / var[D:].sum()])


def test_hand_set_norms_give_the_classes_histograms_and_most_specific_latents(world):
    root, a, _ = world
    res = an.crosscoder_diff(root / "layers", a, block_rows=BLOCK)
    arr = res.arrays
    want = np.array([0] * 10 + [1] * 10 + [2] * 9 + [-1, -1, 1], np.int8)
    assert arr["classes"].tolist() == want.tolist()
    r = np.array([b / (a_ + b) if a_ + b else np.nan for a_, b in (NORMS[i] for i in range(M))])
    np.testing.assert_allclose(arr["relative"], r, rtol=1e-6)
    assert arr["dead"].nonzero()[0].tolist() == [29, NEVER] and arr["count"][NEVER] == 0
    assert (arr["count"][arr["classes"] >= 0] == ROWS).all()  # every other latent fires on every row
    hist = np.zeros(20, np.int64)
    hist[[0, 19, 10, 5]] = [10, 11, 8, 1]  # r = 0, 1 and 0.97, 0.525, 0.275
    assert arr["hist"][1].tolist() == hist.tolist()
    assert arr["hist"][0].tolist() == hist[::-1].tolist()  # A's share is 1 - r
    hist[14] += 1  # the latent that never fires still has a decoder: r = 0.725
    assert arr["hist_all"][1].tolist() == hist.tolist()
    m = res.meta
    assert m["classes"] == {"latents": 30, "specific": dict(zip(HOOKS, [10, 11])), "between": 9, "shared": 8}
    assert m["classes_all"] == {"latents": 31, "specific": dict(zip(HOOKS, [10, 11])), "between": 10, "shared": 8}
    assert (m["dead"], m["zero_decoder"]) == (2, 1)
    # Most specific to A: the ten at share 1, then 0.725, the eight shared at 0.475 (in the order
    # of their float32 norms), 0.03; to B: the ten at 1, 0.97, the shared at 0.525, 0.275.
    top_a, top_b = arr["top_latents"].tolist()
    assert top_a[:11] == [*range(10), 28] and sorted(top_a[11:19]) == [*range(20, 28)] and top_a[19] == 31
    assert top_b[:11] == [*range(10, 20), 31] and sorted(top_b[11:19]) == [*range(20, 28)] and top_b[19] == 28
    assert (np.diff(arr["top_share"], axis=1) <= 0).all()
    # The norms and cosines are the decoder's own.
    w = handset(HOOKS).W_dec.detach().double().reshape(M, 2, D)
    np.testing.assert_allclose(arr["norms"], w.norm(dim=-1).numpy(), rtol=1e-6)
    both = [i for i in range(M) if min(NORMS[i]) > 0]
    cos = (w[both, 0] * w[both, 1]).sum(-1) / (w[both, 0].norm(dim=-1) * w[both, 1].norm(dim=-1))
    np.testing.assert_allclose(arr["cosine"][both, 0], cos.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isnan(arr["cosine"][[0, 10, 29], 0]).all()


def test_explained_variance_per_block_is_brute_force(world):
    root, a, b = world
    for sae, stores in ((handset(HOOKS), [(a, target(0)), (a, target(1))]), (handset(PAIR), [(a, target(1)),
                        (b, target(1))])):  # fmt: skip
        paired = b if stores[1][0] is b else None
        res = an.crosscoder_diff(sae, a, paired_store=paired, block_rows=BLOCK)
        x = torch.cat([s.read(h, slice(0, ROWS)) for s, h in stores], dim=1)
        np.testing.assert_allclose(res.arrays["fvu"], brute_fvu(sae, x), rtol=1e-5)
        assert res.count == ROWS and list(res.ev) == sae.cfg.sources


def test_three_blocks_give_each_block_its_share(world, tmp_path):
    root, a, _ = world
    hooks = [target(0), source(1), target(1)]
    sae = build(SAEConfig("crosscoder", 3 * D, 8, activation="relu", sources=hooks), seed=0)
    norms = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 1, 1], [0.95, 0.03, 0.02], [0, 0.5, 0.5], [0, 1, 0],
                          [0.2, 0.7, 0.1], [0, 0, 0]])  # fmt: skip
    with torch.no_grad():
        u = torch.randn(8, 3, D, generator=torch.Generator().manual_seed(5))
        sae.W_dec.copy_((u / u.norm(dim=-1, keepdim=True) * norms[:, :, None]).flatten(1))
        sae.W_enc.mul_(0.05)
        sae.b_enc.fill_(2.0)
    res = an.crosscoder_diff(sae, a, block_rows=BLOCK)
    arr = res.arrays
    assert arr["classes"].tolist() == [0, 2, 3, 0, 3, 1, 3, -1] and "relative" not in arr
    np.testing.assert_allclose(arr["share"][:7], (norms / norms.sum(1, keepdim=True))[:7].numpy(), rtol=1e-6)
    assert arr["hist"].shape == (3, 20) and arr["hist"].sum(1).tolist() == [7, 7, 7]
    assert arr["top_latents"][:, 0].tolist() == [0, 5, 1] and arr["cosine"].shape == (8, 2)
    assert res.meta["classes"] == {"latents": 7, "specific": dict(zip(hooks, [2, 1, 1])), "between": 3}
    x = torch.cat([a.read(h, slice(0, ROWS)) for h in hooks], dim=1)
    with torch.no_grad():
        err = (sae(x).double() - x.double()).pow(2).sum(0).reshape(3, D).sum(1)
    var = ((x.double() - x.double().mean(0)) ** 2).sum(0).reshape(3, D).sum(1)
    np.testing.assert_allclose(arr["fvu"], (err / var).numpy(), rtol=1e-5)
    res.save(tmp_path / "o")
    page = render_repr(tmp_path / "o").read_text(encoding="utf-8")
    assert page.count('class="bar"') == 3 * 20 and "only model.layers.1.mlp:input (share &gt; 0.9)" in page


def test_a_killed_pass_resumes_to_the_same_arrays(world, tmp_path):
    root, a, b = world

    class Stop(Exception):
        pass

    def stop(name, seq, rows):
        if seq == 2:
            raise Stop

    kw = dict(paired_store=b, block_rows=BLOCK, state_dir=tmp_path / "st", commit_rows=1)
    with pytest.raises(Stop):
        an.crosscoder_diff(root / "models", a, **kw, on_commit=stop)
    seen = []
    got = an.crosscoder_diff(root / "models", a, **kw, on_commit=lambda n, s, r: seen.append(s))
    ref = an.crosscoder_diff(root / "models", a, paired_store=b, block_rows=BLOCK)
    assert min(seen) == 3  # continued after the second commit
    for k, v in ref.arrays.items():
        np.testing.assert_array_equal(got.arrays[k], v, err_msg=k)


def test_job_writes_the_result_and_the_report_section(world, tmp_path):
    root, a, b = world
    out = an.run_all(a, {"crosscoder": {"bins": 10, "top": 5}}, tmp_path / "o", sae=root / "models",
                     paired_store=b, block_rows=BLOCK)  # fmt: skip
    attrs = read_attrs(out / "crosscoder")
    assert attrs["kind"] == "crosscoder" and attrs["blocks"] == PAIR and attrs["paired_store"]["path"] == str(b.path)
    assert read_attrs(out)["represent"]["inputs"]["crosscoder"]["paired_store"]["rows"] == ROWS
    g = zarr.open_group(str(out / "crosscoder"), mode="r")
    assert g["crosscoder/hist"].shape == (2, 10) and g["crosscoder/top_latents"].shape == (2, 5)
    ref = an.crosscoder_diff(root / "models", a, paired_store=b, bins=10, top=5, block_rows=BLOCK)
    for k, v in ref.arrays.items():
        np.testing.assert_array_equal(g[f"crosscoder/{k}"][...], v, err_msg=k)
    page = render(out).read_text(encoding="utf-8")
    assert 'id="job-crosscoder"' in page and "relative decoder norm" in page
    assert "explained variance per block" in page and "latents most specific to chat:" in page
    sec = page[page.index('id="job-crosscoder"') :]
    assert sec.count('class="bar"') == 10 + 20  # the r histogram and the cosine histogram
    assert '<td>A-only (r &lt; 0.1)</td><td class="n">10</td><td class="n">10</td>' in sec
    assert '<td>B-only (r &gt; 0.9)</td><td class="n">11</td><td class="n">11</td>' in sec
    for ev in attrs["ev"].values():
        assert f"{100 * ev:.2f}%" in sec


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_section_in_a_headless_browser(world, tmp_path):
    root, a, _ = world
    out = an.run_all(a, "crosscoder", tmp_path / "o", sae=root / "layers", block_rows=BLOCK)
    index = render(out, tmp_path / "r")
    run = zygote.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                      "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    sec = dom[dom.index('id="job-crosscoder"') :]
    assert sec.count("<svg") == 1 + 1 and sec.count('class="bar"') == 40  # r and cosine histograms
    rows = re.findall(r"<tr>(.*?)</tr>", sec, re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in rows]
    ev = [c for c in cells if c and c[0] in HOOKS and c[3].endswith("%")]
    assert [c[0] for c in ev] == HOOKS
    top_a = [c for c in cells if len(c) == 6 and c[0].isdigit()][:20]
    assert [int(c[0]) for c in top_a[:11]] == [*range(10), 28] and int(top_a[19][0]) == 31
    console = [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]
    assert not [ln for ln in console if "Uncaught" in ln or "Error" in ln], console


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sae", "{plain}", "--jobs", "crosscoder"], "the crosscoder job reads a crosscoder, and --sae is a topk"),
        (["--jobs", "crosscoder"], "missing --sae"),
        (["--sae", "{models}", "--jobs", "crosscoder"], "pass the second model's store with --paired-store"),
        (["--sae", "{layers}", "--jobs", "crosscoder", "--paired-store", "{b}"], "leave out --paired-store"),
        (["--sae", "{models}", "--jobs", "pca", "--paired-store", "{b}"], "add crosscoder to --jobs"),
        (["--sae", "{layers}", "--jobs", "stats"], "run the crosscoder job (--jobs crosscoder)"),
        (["--sae", "{models}", "--jobs", "crosscoder", "--paired-store", "{short}"], "holds 240 rows"),
        (["--sae", "{models}", "--jobs", "crosscoder", "--option", "crosscoder.bins=0"], "crosscoder.bins=0"),
    ],
)
def test_wrong_combinations_are_one_line(world, tmp_path, capsys, args, words):
    root, a, b = world
    if "{short}" in args and not (root / "short").exists():
        build_store(root / "short", layers=2, rows=240, model_seed=1)
    sub = {"plain": root / "plain", "layers": root / "layers", "models": root / "models", "b": b.path,
           "short": root / "short"}  # fmt: skip
    code = main(["analyze", "--store", str(a.path), "--out", str(tmp_path / "o"), "--no-progress",
                 *[x.format(**sub) for x in args]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("actstore: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o").exists()


def test_swapped_stores_are_refused(world):
    root, a, b = world
    with pytest.raises(AnalysisError, match="swap them"):
        an.crosscoder_diff(root / "models", b, paired_store=a)


@pytest.mark.slow  # trains a crosscoder (~6 s on 2 busy cores), then the CLI and the report
def test_end_to_end_train_then_analyze(world, tmp_path, capsys):
    _, a, b = world
    run = tmp_path / "run"
    summary = actstore.sae.train(
        store=str(a.path), paired_store=str(b.path), arch="crosscoder", hooks=target(1), out=str(run),
        tokens=128 * 30, latents=64, k=4, batch_size=128, eval_docs=3, progress=False, device="cpu",
    )  # fmt: skip
    code = main(["analyze", "--store", str(a.path), "--paired-store", str(b.path), "--sae", str(run), "--jobs",
                 "crosscoder", "--out", str(tmp_path / "o"), "--html", "--json", "--no-progress"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["represent"] == {"crosscoder": str(tmp_path / "o" / "crosscoder")}
    attrs = read_attrs(tmp_path / "o" / "crosscoder")
    names = summary["eval"]["block_fvu"]
    assert attrs["blocks"] == list(names) == PAIR
    assert all(0.2 < v < 1 for v in attrs["ev"].values()) and attrs["classes"]["latents"] > 0
    assert 'id="job-crosscoder"' in Path(doc["report"]).read_text(encoding="utf-8")
    # Over the held-out documents, the explained variance per block is the trainer's held-out FVU.
    docs = np.unique(a.tokens()["doc"].numpy())[-3:]
    held = an.row_groups(a, docs={"held": docs.tolist()})
    res = an.crosscoder_diff(run, a, held, paired_store=b, block_rows=BLOCK)
    assert res.count == summary["eval"]["rows"]
    np.testing.assert_allclose(res.arrays["fvu"], [names[k] for k in PAIR], rtol=1e-4)
