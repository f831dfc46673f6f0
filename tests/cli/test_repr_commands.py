"""``actstore pca``, ``diff``, ``probe`` and ``mcs`` through the CLI's ``main`` on the planted
store: each gives the Python API's result, writes its Zarr group (and SVGs), and bad input
is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from actstore import open as open_store
from actstore.analysis.dictionary import mcs
from actstore.analysis.groups import resolve
from actstore.analysis.layer_diff import layer_diff
from actstore.analysis.pca import pca
from actstore.cli import main
from actstore.sae import SAEConfig, TopKSAE, save
from helpers.repr_store import write_repr_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s"
    write_repr_store(path)
    write_repr_store(path.parent / "s2", seed=1)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_pca(store, tmp_path, capsys):
    code, out, err = _run(capsys, "pca", "--store", store, "--hooks", "a,b", "--out", tmp_path / "o", "--k", "3",
                          "--store-b", store.parent / "s2", "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    s = open_store(store)
    ref = pca(s, "a,b", resolve(s, sources=True), k=3)
    assert summary["explained_ratio"]["a"] == ref.explained_ratio["a"].tolist()
    assert set(summary["principal_angles"]) == {"a (A vs B)", "b (A vs B)", "a vs b"}
    g = zarr.open_group(str(tmp_path / "o"), mode="r")
    assert np.array_equal(g["pca/0/components"][...], ref.components["a"])
    assert (tmp_path / "o" / "pca_1.svg").exists() and (tmp_path / "o" / "store_b" / "pca_0.svg").exists()


def test_diff_and_probe(store, tmp_path, capsys):
    code, out, err = _run(capsys, "diff", "--store", store, "--hook-a", "a", "--hook-b", "b", "--out", tmp_path / "d",
                          "--top-k", "3", "--json")  # fmt: skip
    assert code == 0, err
    s = open_store(store)
    ref = layer_diff(s, "a", "b", resolve(s), top_k=3)
    assert json.loads(out)["top_rows"] == ref.top_rows.tolist()
    code, out, err = _run(capsys, "probe", "--store", store, "--hooks", "a,c", "--out", tmp_path / "p", "--epochs", "3",
                          "--positions", "last", "--json")  # fmt: skip
    assert code == 0, err
    got = json.loads(out)
    assert got["counts"]["train_pos"] + got["counts"]["test_pos"] == 20  # one row per positive document
    assert (tmp_path / "p" / "probes.svg").exists()
    code, out, err = _run(capsys, "diff", "--store", store, "--hook-a", "a", "--hook-b", "c", "--out", tmp_path / "x")
    assert code == 1 and err.count("\n") == 1 and "differ in width" in err


def test_mcs(tmp_path, capsys):
    a, b = TopKSAE(SAEConfig("topk", 16, 24, k=4), seed=1), TopKSAE(SAEConfig("topk", 16, 40, k=4), seed=2)
    save(a, tmp_path / "a")
    save(b, tmp_path / "b")
    code, out, err = _run(capsys, "mcs", "--sae-a", tmp_path / "a", "--sae-b", tmp_path / "b", "--out", tmp_path / "o",
                          "--neighbours", "3", "--tile", "7", "--json")  # fmt: skip
    assert code == 0, err
    ref = mcs(a, b)
    assert json.loads(out)["mean_mcs_ab"] == pytest.approx(float(ref.ab.mean()), abs=1e-6)
    g = zarr.open_group(str(tmp_path / "o"), mode="r")
    assert g["dictionary/neighbours_index"].shape == (24, 3)
    assert np.array_equal(g["dictionary/ba_index"][...], ref.ba_index)


def test_scan_on_steering_vectors(store, tmp_path, capsys):
    code, _, err = _run(capsys, "steering", "--store", store, "--hooks", "a,b", "--out", tmp_path / "sv")
    assert code == 0, err
    code, out, err = _run(capsys, "scan", "--store", store, "--hook", "b", "--vectors", tmp_path / "sv", "--out",
                          tmp_path / "o", "--k", "3", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["vectors"] == 1
    g = zarr.open_group(str(tmp_path / "o"), mode="r")
    c = write_repr_store(tmp_path / "again")  # the same planted columns
    assert (c["doc"][g["scan/top_rows"][0]] < c["half"]).all()  # the most positive rows come from pos documents
    np.save(tmp_path / "v.npy", np.ones((2, 8), np.float32))
    code, _, err = _run(capsys, "scan", "--store", store, "--hook", "a", "--vectors", tmp_path / "v.npy", "--out",
                        tmp_path / "p")  # fmt: skip
    assert code == 1 and "do not match hook" in err and err.count("\n") == 1


def test_steering_between_two_stores(store, tmp_path, capsys):
    from actstore.analysis.two_stores import steering_between

    code, out, err = _run(capsys, "steering", "--store", store, "--store-b", store.parent / "s2", "--hooks", "a",
                          "--out", tmp_path / "o", "--json")  # fmt: skip
    assert code == 0, err
    sa, sb = open_store(store), open_store(store.parent / "s2")
    ref = steering_between(sa, sb, "a", resolve(sa), resolve(sb))
    got = json.loads(out)
    assert (got["positive"], got["negative"]) == ("B", "A") and got["rows"] == [ref.count_pos, ref.count_neg]
    g = zarr.open_group(str(tmp_path / "o"), mode="r")
    assert np.array_equal(g["steering/0/vector"][...], ref.vectors["a"].numpy())
