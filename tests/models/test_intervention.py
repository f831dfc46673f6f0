"""actstore.models.Intervention on tiny models: the positions asked change and no others, the
downstream output is what the same edit computed by hand gives, and hooks never outlive it."""

from __future__ import annotations

import pytest
import torch

from actstore.errors import ModelError
from actstore.models import HookRecorder, Intervention, resolve_hooks
from helpers.capture_models import TinyLM, token_array

B, S, D = 3, 10, 32


@pytest.fixture
def model():
    return TinyLM(d=D)


@pytest.fixture
def ids():
    return torch.from_numpy(token_array(B, seed=1, length=S))


def _by_hand(m: TinyLM, ids, layer: int, edit):
    """TinyLM's forward written out, with ``edit(h)`` applied to layer ``layer``'s output."""
    h = m.embed(ids)
    for i, block in enumerate(m.layers):
        h = block(h)
        if i == layer:
            h = edit(h.clone())
    return m.head(h)


def _record(m, ids, spec):
    with HookRecorder(m, resolve_hooks(m, spec), stop_early=False) as rec:
        return rec.run(lambda: m(ids))[spec]


@torch.no_grad()
def test_add_changes_exactly_the_positions_asked_and_the_output_as_by_hand(model, ids):
    v = torch.randn(D, generator=torch.Generator().manual_seed(0))
    plain = _record(model, ids, "layers.1")
    with Intervention(model, {"layers.1": v}, positions=[2, 5]):
        out = model(ids)
        edited = _record(model, ids, "layers.1")  # registered after: sees the edited tensor
    diff = edited - plain
    assert torch.allclose(diff[:, [2, 5]], v.expand(B, 2, D), atol=1e-6)
    keep = [i for i in range(S) if i not in (2, 5)]
    assert torch.equal(edited[:, keep], plain[:, keep])  # bit for bit elsewhere

    def edit(h):
        h[:, [2, 5]] += v
        return h

    assert torch.equal(out, _by_hand(model, ids, 1, edit))
    assert not torch.equal(out, model(ids))  # and the edit is gone after the block


@torch.no_grad()
def test_position_forms(model, ids):
    v = torch.ones(D)
    plain = _record(model, ids, "layers.0")
    after = torch.tensor([0, 4, 8])  # one index per row: positions strictly after it change
    at = torch.arange(S).expand(B, S)
    mask = torch.rand(B, S, generator=torch.Generator().manual_seed(1)) > 0.5
    cases = [
        (None, torch.ones(B, S, dtype=torch.bool)),
        ("all", torch.ones(B, S, dtype=torch.bool)),
        (3, at == 3),
        (-1, at == S - 1),
        (slice(6, None), at >= 6),
        ([1, 9], (at == 1) | (at == 9)),
        (torch.tensor([1, 9]), (at == 1) | (at == 9)),
        (mask, mask),
        (mask[0], mask[0].expand(B, S)),
        (("after", after), at > after[:, None]),
        (("after", 7), at > 7),
    ]
    for pos, want in cases:
        with Intervention(model, {"layers.0": v}, positions=pos):
            got = _record(model, ids, "layers.0")
        changed = (got != plain).any(-1)
        assert torch.equal(changed, want), pos


@torch.no_grad()
def test_replace_with_tensor_and_function_and_at_an_input(model, ids):
    patch = torch.randn(B, S, D, generator=torch.Generator().manual_seed(2))
    with Intervention(model, {"layers.2": patch}, mode="replace", positions=("after", 4)):
        out = model(ids)

    def edit(h):
        h[:, 5:] = patch[:, 5:]
        return h

    assert torch.equal(out, _by_hand(model, ids, 2, edit))
    # Zero ablation of every layer's output through a wildcard and a function of the activation.
    with Intervention(model, {"layers.*": lambda a: torch.zeros_like(a)}, mode="replace"):
        assert torch.equal(model(ids), model.head(torch.zeros(B, S, D)).expand(B, S, 8))
    # ':input' edits the module's first argument: adding v to layers.3's input = adding it to layers.2's output.
    v = torch.randn(D, generator=torch.Generator().manual_seed(3))
    with Intervention(model, {"layers.3:input": v}, positions=slice(0, 3)):
        a = model(ids)
    with Intervention(model, {"layers.2": v}, positions=slice(0, 3)):
        b = model(ids)
    assert torch.equal(a, b)


@torch.no_grad()
def test_hf_block_outputs(ids):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    m = GPT2Model(GPT2Config(n_layer=2, n_embd=D, n_head=2, vocab_size=97, n_positions=S)).eval()
    plain = m(ids, output_hidden_states=True)
    v = torch.randn(D)
    with Intervention(m, {"h.0": v}, positions=("after", 6)):
        # The next block's input is the edited output. (transformers' own hidden_states hooks,
        # installed on the first forward, run before ours: they keep reporting the unedited one.)
        with HookRecorder(m, resolve_hooks(m, "h.0, h.1:input"), stop_early=False) as rec:
            got = rec.run(lambda: m(ids))
        out = m(ids).last_hidden_state
    for h in ("h.0", "h.1:input"):
        assert torch.allclose(got[h][:, 7:], plain.hidden_states[1][:, 7:] + v, atol=1e-6), h
        assert torch.equal(got[h][:, :7], plain.hidden_states[1][:, :7]), h
    # Causal attention: positions up to 6 never see the edit downstream either; the later ones do.
    assert torch.allclose(out[:, :7], plain.last_hidden_state[:, :7], atol=1e-6)
    assert not torch.allclose(out[:, 7:], plain.last_hidden_state[:, 7:], atol=1e-3)


def test_hooks_removed_on_exit_even_on_exception(model, ids):
    with torch.no_grad():
        before = model(ids)
    with pytest.raises(RuntimeError, match="boom"):
        with Intervention(model, {"layers.*": torch.ones(D), "layers.1:input": torch.ones(D)}):
            raise RuntimeError("boom")
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    # A bad spec or value registers nothing, or takes off what it registered.
    with pytest.raises(ModelError, match="unknown hook 'layers.9'"):
        Intervention(model, {"layers.0": torch.ones(D), "layers.9": torch.ones(D)})
    with pytest.raises(ModelError, match="does not broadcast"):
        with Intervention(model, {"layers.0": torch.ones(D + 1)}), torch.no_grad():
            model(ids)
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())


def test_bad_options_are_one_line_errors(model):
    for kw, msg in [
        (dict(mode="scale"), "mode 'scale'"),
        (dict(positions="last"), "positions 'last'"),
        (dict(positions=("before", 3)), "only named selection"),
    ]:
        with pytest.raises(ModelError, match=msg) as e:
            Intervention(model, {"layers.0": 1.0}, **kw)
        assert "\n" not in str(e.value)
    with Intervention(model, {"layers.0": 1.0}, positions=[40]), pytest.raises(ModelError, match="out of range"):
        model(torch.zeros(1, 4, dtype=torch.long))
