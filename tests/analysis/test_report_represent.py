"""The HTML page of representation-analysis outputs (actstore/analysis/report/represent.py):
every kind renders one self-contained page (no external URL), with its tables, SVGs and the
top rows' contexts; ``actstore report`` dispatches to it."""

from __future__ import annotations

import re

import numpy as np
import pytest

import actstore.analysis as an
from actstore import open as open_store
from actstore.analysis._pass import AnalysisError
from actstore.analysis.report.represent import render_repr
from actstore.cli import main
from actstore.sae import SAEConfig, TopKSAE
from helpers.repr_store import write_repr_store


class Words:
    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    write_repr_store(root / "s")
    s = open_store(root / "s")
    g = an.row_groups(s, sources=True)
    an.steering_vectors(s, "a,b", g, "pos", "neg", top_k=3, window=2).save(root / "steering")
    an.pca(s, "a", g, k=3, sample=20).save(root / "pca")
    an.layer_diff(s, "a", "b", g, top_k=3).save(root / "diff")
    an.probes(s, "a,b", g, "pos", "neg", epochs=1).save(root / "probes")
    an.scan(s, "a", np.eye(16)[:2], g, k=2).save(root / "scan")
    an.mcs(TopKSAE(SAEConfig("topk", 16, 8, k=2), seed=1), TopKSAE(SAEConfig("topk", 16, 12, k=2), seed=2)).save(
        root / "mcs"
    )
    return root


@pytest.mark.parametrize("kind", ["steering", "pca", "diff", "probes", "scan", "mcs"])
def test_every_kind_renders(outputs, kind):
    page = render_repr(outputs / kind, tokenizer=Words()).read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # self-contained
    if kind in ("steering", "diff", "scan"):
        assert page.count('class="ctx"') >= 2 and "w" in page and 'class="t ex"' in page
    if kind in ("pca", "probes"):
        assert "<svg" in page and ("<circle" in page or "<polyline" in page)
    if kind == "steering":
        assert "AUROC" in page and page.count("<tr>") >= 3


def test_cli_report_dispatches(outputs, capsys):
    assert main(["report", str(outputs / "probes"), "--out", str(outputs / "probes_page")]) == 0
    assert (outputs / "probes_page" / "index.html").exists()
    with pytest.raises(AnalysisError, match="not an actstore analysis"):
        render_repr(outputs / "s")
