"""Steering vectors (actstore/analysis/steering.py) on the planted store: the plain mean
difference, the planted direction, AUROC against sklearn, top rows and windows against brute
force, the paired PCA against numpy, shares merging bit for bit, save/load, and the
steering-vectors / repeng formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore import open as open_store
from actstore.analysis._pass import AnalysisError
from actstore.analysis.groups import resolve
from actstore.analysis.steering import SteeringVectors, _sums_pass, auroc, merge_sums, steering_vectors
from helpers.peers import need
from helpers.repr_store import write_repr_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("steer") / "s"
    cols = write_repr_store(path)
    s = open_store(path)
    return s, cols, resolve(s, sources=True)


@pytest.fixture(scope="module")
def sv(planted):
    s, _, rg = planted
    return steering_vectors(s, "a,b,c", rg, "pos", "neg", pca=True, top_k=5, window=3, block_rows=37)


def test_mean_difference_and_planted_direction(planted, sv):
    _, c, _ = planted
    keep = c["flags"] == 0
    p, n = keep & (c["doc"] < c["half"]), keep & (c["doc"] >= c["half"])
    for h in "abc":
        x = c[h].astype(np.float64)
        ref = x[p].mean(0) - x[n].mean(0)
        np.testing.assert_allclose(sv.vectors[h].numpy(), ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sv.norms["abc".index(h)], np.linalg.norm(ref), rtol=1e-9)
    assert (sv.count_pos, sv.count_neg) == (int(p.sum()), int(n.sum()))
    u = torch.from_numpy(c["u"]).float()
    assert float(torch.nn.functional.cosine_similarity(sv.vectors["a"], u, dim=0)) > 0.97
    assert sv.cosine[0, 1] > 0.99 and np.isnan(sv.cosine[0, 2])  # c has another width
    assert sv.auroc[0] > 0.95 and 0.3 < sv.auroc[2] < 0.7  # c carries no signal


def test_auroc_against_sklearn(planted, sv):
    from sklearn.metrics import roc_auc_score

    _, c, _ = planted
    keep = c["flags"] == 0
    y = (c["doc"] < c["half"])[keep]
    for j, h in enumerate("abc"):
        v = sv.vectors[h] / sv.vectors[h].norm()
        score = (torch.from_numpy(c[h][keep]) @ v).numpy()
        assert sv.auroc[j] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count one half


def test_top_rows_and_windows(planted, sv):
    _, c, _ = planted
    keep = np.flatnonzero(c["flags"] == 0)
    v = (sv.vectors["a"] / sv.vectors["a"].norm()).numpy()
    score = c["a"] @ v
    order = keep[np.lexsort((keep, -score[keep].astype(np.float64)))][:5]
    t = sv.top["a"]
    assert np.array_equal(t["rows"], order)
    np.testing.assert_allclose(t["values"], score[order], rtol=1e-6)
    for r, win, tok, pr in zip(t["rows"], t["window_rows"], t["tokens"], t["proj"]):
        assert win[3] == r
        ok = win >= 0
        assert (c["doc"][win[ok]] == c["doc"][r]).all()
        np.testing.assert_array_equal(tok[ok], c["token"][win[ok]])
        np.testing.assert_allclose(pr[ok], score[win[ok]], rtol=1e-6)


def test_paired_pca_against_numpy(planted, sv):
    _, c, _ = planted
    keep = c["flags"] == 0
    half, nd = c["half"], c["lens"].size
    for h in "ab":
        means = np.stack([c[h][keep & (c["doc"] == d)].astype(np.float64).mean(0) for d in range(nd)])
        diff = means[:half] - means[half : 2 * half]
        w, vecs = np.linalg.eigh(diff.T @ diff)
        ref = vecs[:, -1] * np.sign((diff @ vecs[:, -1]).sum())
        np.testing.assert_allclose(sv.pca[h].numpy(), ref, atol=1e-5)
        assert float(sv.pca[h] @ (sv.vectors[h] / sv.vectors[h].norm())) > 0.9


def test_shares_merge_bit_identical(planted):
    s, _, rg = planted
    one = _sums_pass(s, ["a", "b"], rg, range(0, 9), 37, True)
    parts = [_sums_pass(s, ["a", "b"], rg, r, 37, True) for r in (range(0, 4), range(4, 7), range(7, 9))]
    got = merge_sums(parts)
    z = {f"s{j}": np.zeros((2, 16)) for j in range(2)}
    a, b = one["tree"].total(z), got["tree"].total(z)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert np.array_equal(one["counts"], got["counts"])


def test_save_load_and_plain_zarr(sv, tmp_path):
    out = sv.save(tmp_path / "o")
    back = SteeringVectors.load(out)
    assert back.hooks == sv.hooks and torch.equal(back.vectors["b"], sv.vectors["b"])
    assert torch.equal(back.pca["a"], sv.pca["a"]) and np.array_equal(back.top["a"]["rows"], sv.top["a"]["rows"])
    import zarr

    g = zarr.open_group(str(out), mode="r")  # plain zarr reads it
    assert g["steering/0/vector"].shape == (16,) and g.attrs["actstore_analysis"]["kind"] == "steering"


def _as_decoder_layers(sv):
    """``sv`` with hooks named as decoder blocks 3 and 5 (the layer indices both formats need)."""
    renamed = SteeringVectors(**{**sv.__dict__, "hooks": ["model.layers.3", "model.layers.5"]})
    renamed.vectors = {"model.layers.3": sv.vectors["a"], "model.layers.5": sv.vectors["b"]}
    renamed.pca = {"model.layers.3": sv.pca["a"], "model.layers.5": sv.pca["b"]}
    return renamed


def test_steering_vectors_reads_the_export(sv, tmp_path):
    """steering-vectors: the package's own class, from the saved fields."""
    sv_pkg = need("steering_vectors")  # this check only: the repeng and layer checks run without it
    renamed = _as_decoder_layers(sv)
    p = renamed.export_steering_vectors(tmp_path / "sv.pt")
    fields = torch.load(p, weights_only=True)
    assert set(fields["layer_activations"]) == {3, 5} and fields["layer_type"] == "decoder_block"
    obj = sv_pkg.SteeringVector(**fields)
    assert torch.equal(obj.layer_activations[5], sv.vectors["b"])
    assert torch.equal(renamed.to_steering_vectors().layer_activations[3], sv.vectors["a"])


def test_repeng_gguf_reads_back_as_repengs_import_gguf_reads_it(sv, tmp_path):
    """repeng: its GGUF layout, read back with the gguf package as repeng's import_gguf reads it."""
    gguf = need("gguf")  # this check only: the steering-vectors and layer checks run without it
    gg = _as_decoder_layers(sv).export_repeng(tmp_path / "cv.gguf", "SmolLM2")
    r = gguf.GGUFReader(gg)
    assert str(bytes(r.get_field("general.architecture").parts[-1]), "utf-8") == "controlvector"
    assert str(bytes(r.get_field("controlvector.model_hint").parts[-1]), "utf-8") == "SmolLM2"
    dirs = {int(t.name.split(".")[1]): np.asarray(t.data) for t in r.tensors if t.name.startswith("direction.")}
    assert set(dirs) == {3, 5}
    np.testing.assert_array_equal(dirs[3], sv.pca["a"].numpy() * np.float32(sv.vectors["a"].norm()))


def test_hooks_that_are_not_decoder_layers_are_refused_by_the_exports(sv):
    with pytest.raises(AnalysisError, match="layers.N"):
        sv.layer_vectors()


def test_errors(planted):
    s, _, rg = planted
    with pytest.raises(AnalysisError, match="unknown hook"):
        steering_vectors(s, "a,zz", rg, "pos", "neg")
    with pytest.raises(AnalysisError, match="no group"):
        steering_vectors(s, "a", rg, "pos", "other")
    with pytest.raises(AnalysisError, match="same group"):
        steering_vectors(s, "a", rg, "pos", "pos")


def test_open_refuses_a_steering_output(sv, tmp_path):
    import actstore.analysis as an

    out = sv.save(tmp_path / "o")
    with pytest.raises(AnalysisError, match="holds a steering result"):
        an.open(out)
