"""Fixtures of the analysis tests: the planted store, its ReLU SAE and every job's output over
it (builders and brute force: tests/helpers/analysis_store.py)."""

from __future__ import annotations

import pytest

import actstore.analysis as an
from helpers.analysis_store import BLOCK, JOBS, dense_code, relu_sae, write_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s"
    cols = write_store(path)
    return path, cols


@pytest.fixture(scope="module")
def relu():
    return relu_sae()


@pytest.fixture(scope="module")
def full(planted, relu, tmp_path_factory):
    """Every job over the planted store: (analysis, columns, dense code)."""
    path, cols = planted
    out = an.run(path, relu, JOBS, tmp_path_factory.mktemp("a") / "o", block_rows=BLOCK)
    return an.open(out), cols, dense_code(relu, cols["x"])
