"""Named capture sources (``{name: data}``, ``--data pos=a --data neg=b``): the store's
provenance records each source's document range, and stores without it stay readable."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import actstore
from actstore.capture.data import parse_sources
from actstore.store.errors import CaptureError
from helpers import zygote
from helpers.capture_models import TinyLM, token_array, token_docs
from helpers.paths import HELPERS


def test_named_sources_record_document_ranges(tmp_path):
    pos, neg = token_docs(7, seed=1), token_docs(5, seed=2)
    neg.insert(2, np.zeros(0, np.int64))  # an empty document still takes a number
    actstore.capture(TinyLM(), "layers.0", {"pos": pos, "neg": neg}, tmp_path / "s", context=16, progress=False)
    s = actstore.open(tmp_path / "s")
    assert [(x["name"], x["docs"]) for x in s.sources] == [("pos", [0, 7]), ("neg", [7, 13])]
    # Every stored row's document lies in one source's range, and both sources have rows.
    doc = s.tokens()["doc"].numpy()
    doc = doc[doc >= 0]
    assert set(np.unique(doc)) == set(range(13)) - {9}
    # The same token stream as the unnamed list of both: only the record differs.
    actstore.capture(TinyLM(), "layers.0", pos + neg, tmp_path / "t", context=16, progress=False)
    t = actstore.open(tmp_path / "t")
    assert t.sources == []
    assert np.array_equal(s.tokens()["token"].numpy(), t.tokens()["token"].numpy())


def test_parse_sources():
    assert parse_sources(["a.npy"]) == "a.npy"
    assert parse_sources(["pos=a.jsonl", "neg=b.jsonl"]) == {"pos": "a.jsonl", "neg": "b.jsonl"}
    assert list(parse_sources(["pos=a", "neg=b"])) == ["pos", "neg"]  # order kept
    with pytest.raises(CaptureError, match="name them all"):
        parse_sources(["pos=a.jsonl", "b.jsonl"])
    with pytest.raises(CaptureError, match="twice"):
        parse_sources(["pos=a", "pos=b"])


def test_cli_named_sources(tmp_path):
    np.save(tmp_path / "p.npy", token_array(4, seed=3, length=20))
    np.save(tmp_path / "n.npy", token_array(6, seed=4, length=20))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "actstore.cli", "capture", "--model", "python:capture_models:make_tiny"]
    cmd += ["--hooks", "layers.0", "--data", f"pos={tmp_path / 'p.npy'}", "--data", f"neg={tmp_path / 'n.npy'}"]
    cmd += ["--out", str(tmp_path / "s"), "--context", "16", "--no-progress", "--json"]
    r = zygote.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["committed_rows"] > 0
    src = actstore.open(tmp_path / "s").sources
    assert [(x["name"], x["docs"], x["data"]) for x in src] == [
        ("pos", [0, 4], str(tmp_path / "p.npy")),
        ("neg", [4, 10], str(tmp_path / "n.npy")),
    ]
