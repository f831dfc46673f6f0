"""``actstore.steer`` (actstore/analysis/steer.py) on a tiny Llama built from its config:
nothing before the prompt's end changes, every generated position is steered, the result is
the Intervention it is built on, and scale 0 is the identity."""

from __future__ import annotations

import pytest
import torch

import actstore
from actstore.analysis._pass import AnalysisError
from actstore.models import Intervention
from helpers import steer_models

HOOK = "model.layers.1"


@pytest.fixture(scope="module")
def llama():
    return steer_models.llama()  # vocabulary 64, d 32, 3 layers


@pytest.fixture(scope="module")
def vec():
    return {HOOK: torch.randn(32, generator=torch.Generator().manual_seed(3)) * 4}


def test_forward_with_prompt_len(llama, vec):
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = llama(ids).logits
        with actstore.steer(llama, vec, 2.0, prompt_len=6):
            got = llama(ids).logits
        with Intervention(llama, {HOOK: 2.0 * vec[HOOK]}, positions=("after", 5)):
            ref = llama(ids).logits
        with actstore.steer(llama, vec, 2.0):  # a prompt alone: nothing after it
            alone = llama(ids).logits
        with actstore.steer(llama, vec, 2.0, positions="all"):
            every = llama(ids).logits
    assert torch.equal(got[:, :6], base[:, :6]) and not torch.allclose(got[:, 6:], base[:, 6:])
    assert torch.equal(got, ref)
    assert torch.equal(alone, base)
    assert not torch.allclose(every[:, 0], base[:, 0])
    assert torch.equal(llama(ids).logits.detach(), base)  # the hooks are gone


def test_generate_steers_after_the_prompt(llama, vec):
    ids = torch.randint(3, 64, (1, 7), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        base = llama.generate(ids, **kw)
        with actstore.steer(llama, vec, 3.0):
            got = llama.generate(ids, **kw)
        with actstore.steer(llama, vec, 0.0):
            zero = llama.generate(ids, **kw)
        # The same tokens through one forward, steered from the prompt's end on.
        with actstore.steer(llama, vec, 3.0, prompt_len=7):
            full = llama(got.sequences).logits
    assert torch.equal(got.scores[0], base.scores[0])  # made by the prompt forward: not steered
    assert not torch.allclose(got.scores[1], base.scores[1])
    assert torch.equal(zero.sequences, base.sequences)
    for i in range(1, 6):  # with the KV cache, every new position was steered as in one forward
        torch.testing.assert_close(got.scores[i][0], full[0, 6 + i], rtol=1e-4, atol=1e-4)


def test_errors(llama, vec):
    with pytest.raises(AnalysisError, match="after_prompt or all"):
        with actstore.steer(llama, vec, 1.0, positions="before"):
            pass
    with pytest.raises(actstore.ActstoreError, match="does not broadcast"):
        with actstore.steer(llama, {HOOK: torch.ones(5)}, 1.0, positions="all"):
            llama(torch.ones(1, 3, dtype=torch.long))
