"""Row groups (actstore/analysis/groups.py) on the planted store: sources, label tables
(CSV, JSON, Parquet), document lists; the three position policies against brute force; the
one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actstore import open as open_store
from actstore.analysis._pass import AnalysisError
from actstore.analysis.groups import resolve
from helpers.repr_store import MARKER, write_repr_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("repr") / "s"
    cols = write_repr_store(path)
    return open_store(path), cols


def _cols(c):
    return {"doc": c["doc"], "pos": c["pos"], "flags": c["flags"], "token": c["token"]}


def test_sources_all_positions(planted):
    s, c = planted
    rg = resolve(s, sources=True, block_rows=50)
    g = rg.assign(_cols(c))
    want = np.where(c["flags"] == 1, -1, np.where(c["doc"] < c["half"], 0, 1))
    assert rg.names == ("pos", "neg")
    assert np.array_equal(g, want)
    assert rg.rows.tolist() == [int((want == 0).sum()), int((want == 1).sum())]


def test_last_and_after_prompt(planted):
    s, c = planted
    g = resolve(s, sources=["neg", "pos"], positions="last", block_rows=64).assign(_cols(c))
    last = np.r_[c["doc"][1:] != c["doc"][:-1], True]  # the last row of each document
    assert np.array_equal(np.flatnonzero(g >= 0), np.flatnonzero(last))
    assert np.array_equal(g[last], np.where(c["doc"][last] < c["half"], 1, 0))  # neg named first: group 0
    g = resolve(s, sources=True, positions="after_prompt", marker=list(MARKER), block_rows=64).assign(_cols(c))
    want = c["has_marker"][c["doc"]] & (c["pos"] > 3)
    assert np.array_equal(g >= 0, want)


def test_label_tables_and_doc_lists(planted, tmp_path):
    s, c = planted
    lab = {d: ("odd" if d % 2 else "even") for d in range(0, 40, 3)}
    want = resolve(s, labels=lab).assign(_cols(c))
    rows = [{"doc": d, "label": v} for d, v in lab.items()]
    (tmp_path / "l.csv").write_text("doc,label\n" + "".join(f"{d},{v}\n" for d, v in lab.items()))
    (tmp_path / "l.json").write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "l.parquet")
    for f in ("l.csv", "l.json", "l.parquet"):
        rg = resolve(s, labels=tmp_path / f)
        assert rg.names == ("even", "odd")
        assert np.array_equal(rg.assign(_cols(c)), want)
    in_lab = np.isin(c["doc"], list(lab)) & (c["flags"] == 0)
    assert np.array_equal(want >= 0, in_lab)
    rg = resolve(s, docs={"x": [1, 2], "y": [5]})
    g = rg.assign(_cols(c))
    assert np.array_equal(g >= 0, np.isin(c["doc"], [1, 2, 5]) & (c["flags"] == 0))
    assert set(g[c["doc"] == 5]) <= {1, -1}


def test_errors(planted, tmp_path):
    s, _ = planted
    with pytest.raises(AnalysisError, match="lacks") as e:
        resolve(s, labels={3: "a", 400: "b"})
    assert "\n" not in str(e.value)
    with pytest.raises(AnalysisError, match="unknown source"):
        resolve(s, sources=["pos", "nope"])
    with pytest.raises(AnalysisError, match="select no rows"):
        resolve(s, docs={"x": [1], "y": [2]}, positions="after_prompt", marker=[99, 98])
    with pytest.raises(AnalysisError, match="one of"):
        resolve(s, sources=True, docs={"x": [1]})
    write_repr_store(tmp_path / "bare", sources=False)
    with pytest.raises(AnalysisError, match="records no sources"):
        resolve(open_store(tmp_path / "bare"), sources=True)
    assert open_store(tmp_path / "bare").sources == []
