"""Capture from a real nnsight TransformersModel and LanguageModel (tiny GPT-2 from a config) with
nnsight-style names; the stored rows equal what nnsight's own trace saves at those modules, and
``.output[0]`` means what it means in nnsight."""

import warnings

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import IntegrationError
from helpers.integration_store import tiny_gpt2, word_tokenizer
from helpers.peers import need

nnsight = need("nnsight")
from actstore.integrations.nnsight import capture, hook_names  # noqa: E402

CTX, BATCH = 16, 4
pytestmark = pytest.mark.filterwarnings("ignore:LanguageModel is deprecated")


CLASSES = ("TransformersModel", "LanguageModel")  # what nnsight 0.8 recommends, and its deprecated alias


def _wrap(cls: str, model):
    if cls == "TransformersModel":
        with warnings.catch_warnings():
            warnings.simplefilter("error", nnsight.NNsightDeprecationWarning)  # the recommended class: no warning
            return nnsight.TransformersModel(model, tokenizer=word_tokenizer(), task="text-generation")
    return nnsight.LanguageModel(model, tokenizer=word_tokenizer())


@pytest.fixture(scope="module", params=CLASSES)
def lm(request):
    return _wrap(request.param, tiny_gpt2())


def _windows(n=12, seed=0):
    return np.random.default_rng(seed).integers(3, 97, size=(n, CTX)).astype(np.int64)


def _run(lm, hooks, out):
    ids = _windows()
    opts = dict(context=CTX, batch_size=BATCH, dtype="fp32", bos="none", eos="none", packing="truncate")
    s = capture(lm, hooks, [list(r) for r in ids], out, progress=False, **opts)
    return ids, s


def test_stored_rows_equal_nnsights_own_trace(lm, tmp_path):
    # attn returns a tuple: nnsight's .output[0] is its first tensor, which actstore stores
    hooks = [lm.transformer.h[1], "model.transformer.h[2].input", "transformer.h[0].attn.output[0]"]
    ids, summary = _run(lm, hooks, tmp_path / "s")
    assert summary["hooks"] == ["transformer.h.1", "transformer.h.2:input", "transformer.h.0.attn"]
    s = actstore.open(tmp_path / "s")
    assert s.rows == ids.size
    for b in range(0, len(ids), BATCH):
        batch = torch.from_numpy(ids[b : b + BATCH])
        with lm.trace(batch):  # nnsight wants the modules in the order they run
            attn0 = lm.transformer.h[0].attn.output[0].save()
            in2 = lm.transformer.h[2].input.save()
        with lm.trace(batch):
            out1 = lm.transformer.h[1].output.save()
        rows = slice(b * CTX, (b + BATCH) * CTX)
        for name, ref in (("transformer.h.0.attn", attn0), ("transformer.h.2:input", in2), ("transformer.h.1", out1)):
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
    lazy = _wrap(type(lm).__name__, str(folder))
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
        ("transformer.h[1].output[1]", ["first tensor", "use .output (or .output[0] where"]),
    ],
)
def test_a_path_the_model_lacks_is_one_line(lm, spec, words):
    with pytest.raises(IntegrationError) as e:
        hook_names(lm, spec)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("spec", ["transformer.h[2].output[0]", "model.transformer.h[*].output[0]"])
def test_output0_of_a_module_returning_a_tensor_is_refused_as_nnsight_reads_it(lm, spec):
    # transformers >= 5: a GPT-2 block returns a tensor, so nnsight's .output[0] is batch element 0
    ids = torch.from_numpy(_windows(3))
    with lm.trace(ids):
        whole = lm.transformer.h[2].output.save()
        elem0 = lm.transformer.h[2].output[0].save()
    assert whole.shape == (3, CTX, 32) and torch.equal(elem0, whole[0])  # nnsight's meaning, on this install
    with pytest.raises(IntegrationError) as e:
        hook_names(lm, spec)
    msg = str(e.value)
    assert "\n" not in msg and "batch element 0" in msg and f"write {spec[: -len('[0]')]!r}" in msg
    assert hook_names(lm, spec[: -len("[0]")])  # what it says to write works
