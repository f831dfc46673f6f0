"""Capture from a real nnsight LanguageModel (tiny GPT-2 from a config) with nnsight-style names;
the stored rows equal what nnsight's own trace saves at those modules."""

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import IntegrationError
from helpers.integration_store import tiny_gpt2, word_tokenizer

nnsight = pytest.importorskip("nnsight")
from actstore.integrations.nnsight import capture, hook_names  # noqa: E402

CTX, BATCH = 16, 4
pytestmark = pytest.mark.filterwarnings("ignore:LanguageModel is deprecated")


@pytest.fixture(scope="module")
def lm():
    return nnsight.LanguageModel(tiny_gpt2(), tokenizer=word_tokenizer())


def _windows(n=12, seed=0):
    return np.random.default_rng(seed).integers(3, 97, size=(n, CTX)).astype(np.int64)


def _run(lm, hooks, out):
    ids = _windows()
    opts = dict(context=CTX, batch_size=BATCH, dtype="fp32", bos="none", eos="none", packing="truncate")
    s = capture(lm, hooks, [list(r) for r in ids], out, progress=False, **opts)
    return ids, s


def test_stored_rows_equal_nnsights_own_trace(lm, tmp_path):
    hooks = [lm.transformer.h[1], "model.transformer.h[2].input", "transformer.h[0].mlp.output[0]"]
    ids, summary = _run(lm, hooks, tmp_path / "s")
    assert summary["hooks"] == ["transformer.h.1", "transformer.h.2:input", "transformer.h.0.mlp"]
    s = actstore.open(tmp_path / "s")
    assert s.rows == ids.size
    for b in range(0, len(ids), BATCH):
        batch = torch.from_numpy(ids[b : b + BATCH])
        with lm.trace(batch):  # nnsight wants the modules in the order they run
            mlp0 = lm.transformer.h[0].mlp.output.save()
            in2 = lm.transformer.h[2].input.save()
        with lm.trace(batch):
            out1 = lm.transformer.h[1].output.save()
        rows = slice(b * CTX, (b + BATCH) * CTX)
        for name, ref in (("transformer.h.0.mlp", mlp0), ("transformer.h.2:input", in2), ("transformer.h.1", out1)):
            ref = (ref[0] if isinstance(ref, tuple) else ref).reshape(-1, 32)
            torch.testing.assert_close(s.read(name, rows), ref, rtol=1e-5, atol=1e-6, msg=name)


def test_wildcards_pairs_and_the_lazy_model(lm, tmp_path):
    assert hook_names(lm, "model.transformer.h[*].output") == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert hook_names(lm, (lm.transformer.h[2].mlp, "input")) == ["transformer.h.2.mlp:input"]
    assert hook_names(lm, "transformer.h.1") == ["transformer.h.1"]  # actstore's own names pass through
    # A LanguageModel loaded from a folder sits on the meta device until dispatched: capture dispatches it.
    folder = tmp_path / "gpt2"
    lm._module.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    lazy = nnsight.LanguageModel(str(folder), tokenizer=word_tokenizer())
    assert getattr(lazy, "dispatched", True) is False
    ids, _ = _run(lazy, ["transformer.h[1].output"], tmp_path / "s")
    with lm.trace(torch.from_numpy(ids[:BATCH])):
        ref = lm.transformer.h[1].output.save()
    got = actstore.open(tmp_path / "s").read("transformer.h.1", slice(0, BATCH * CTX))
    torch.testing.assert_close(got, ref.reshape(-1, 32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("model.transformer.h[7].output", ["model.transformer.h[7]", "closest", "model.transformer.h[0]"]),
        ("transformer.hh[1].mlp.output", ["transformer.hh", "closest: model.transformer.h[1].mlp"]),
        ("transformer.h[1].output[1]", ["first tensor", ".output[0]"]),
    ],
)
def test_a_path_the_model_lacks_is_one_line(lm, spec, words):
    with pytest.raises(IntegrationError) as e:
        hook_names(lm, spec)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
