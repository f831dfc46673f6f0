"""``actstore steering`` and ``actstore steer`` through the CLI's ``main``: the CLI's vectors are the
Python API's, the exports are written, and ``steer`` prints the baseline (plain greedy
generation) and the steered generations."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from actstore import open as open_store
from actstore.analysis.groups import resolve
from actstore.analysis.steering import SteeringVectors, steering_vectors
from actstore.cli import main
from helpers.repr_store import write_repr_store
from helpers.steer_models import make_llama


@pytest.fixture
def _cli(capsys):
    def run(*argv):
        code = main(list(argv))
        got = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=got.out, stderr=got.err)

    return run


def test_cli_steering_matches_api(tmp_path, _cli):
    write_repr_store(tmp_path / "s")
    r = _cli(
        "steering", "--store", str(tmp_path / "s"), "--hooks", "a,b", "--out", str(tmp_path / "o"), "--pca",
        "--positions", "last", "--top-k", "4", "--json", "--export-steering-vectors", str(tmp_path / "v.pt"),
        "--export-repeng", str(tmp_path / "v.gguf"), "--layers", "a=2,b=4",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    s = open_store(tmp_path / "s")
    ref = steering_vectors(s, "a,b", resolve(s, sources=True, positions="last"), "pos", "neg", pca=True, top_k=4)
    got = SteeringVectors.load(tmp_path / "o")
    assert torch.equal(got.vectors["a"], ref.vectors["a"]) and torch.equal(got.pca["b"], ref.pca["b"])
    assert summary["rows"] == [ref.count_pos, ref.count_neg] == [20, 20]  # one row per document
    assert summary["hooks"]["a"]["auroc"] == ref.auroc[0]
    assert set(torch.load(tmp_path / "v.pt", weights_only=True)["layer_activations"]) == {2, 4}
    import gguf

    names = {t.name for t in gguf.GGUFReader(tmp_path / "v.gguf").tensors}
    assert names == {"direction.2", "direction.4"}
    r = _cli("steering", "--store", str(tmp_path / "s"), "--hooks", "a", "--out", str(tmp_path / "p"), "--labels",
             str(tmp_path / "missing.csv"))  # fmt: skip
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_cli_steer_prints_baseline_and_steered(tmp_path, _cli):
    model, tok = make_llama()
    v = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 8
    one = np.zeros(32)
    SteeringVectors(
        ["model.layers.1"], {"model.layers.1": v}, {"model.layers.1": one}, {"model.layers.1": one}, 1, 1,
        np.ones(1), np.ones(1), np.ones((1, 1)),
    ).save(tmp_path / "vec")  # fmt: skip
    model_arg = ["--model", "python:helpers.steer_models:make_llama", "--vectors", str(tmp_path / "vec")]
    r = _cli("steer", *model_arg, "--scales=-3,3", "--prompt", "w1 w2 w3", "--prompt", "w9 w8", "--max-new-tokens", "5",
             "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [list(x["generations"]) for x in rows] == [["0.0", "-3.0", "3.0"]] * 2
    for x in rows:
        ids = tok(x["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                   pad_token_id=0)  # fmt: skip
        assert x["generations"]["0.0"] == tok.decode(plain[0, ids.shape[1] :], skip_special_tokens=True)
    assert any(x["generations"]["3.0"] != x["generations"]["0.0"] for x in rows)
    r = _cli(
        "steer",
        "--model",
        "python:helpers.steer_models:make_llama",
        "--vectors",
        str(tmp_path / "vec"),
        "--prompt",
        "w1",
    )
    assert r.returncode == 0 and "--- baseline:" in r.stdout and "--- scale +4:" in r.stdout
