"""Adversarial rows for the TopK encoders, built value by value (``exact_encoder_inputs``: the
kernels see the reference's bits), so every check is exact: indices equal, values equal.

- The split encoder's overflow boundary: rows with exactly ``cap`` and ``cap + 1``
  candidates past the sampled threshold, at the production sample size and capacity,
  where every candidate belongs in the top-k (a redo test off by one loses one).
- The threshold edge: out-of-sample top-k values within 1e-3 above the sample's k-th
  value, at it (a tie the sample wins) and just below it.
- Ties, on every backend (reference, chunked, the fused kernel, the split kernel through its
  candidates and through its dense redo, AuxK included): equal values by lower latent
  first, and at the k-th place the lower latent is kept (``_numerics.topk_indices``),
  against an oracle that is a plain Python sort by ``(-value, latent)``; and the rule's
  own function with NaN and -0.0.

Planted bugs, each failing the test that covers it: a redo test ``cnt > cap + 1``, a threshold
0.02 or 0.001 too high, another tie rule in each backend, no boundary redo in ``topk_indices``.
"""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import topk_indices
from actstore.kernels.topk_encode import topk_encode_fwd
from actstore.kernels.topk_encode_split import capacity, sample_m, topk_encode_split_fwd
from actstore.ops import topk_encode
from actstore.ops.topk_encode_chunked import topk_encode_chunked
from actstore.reference.topk_sae import topk_encode_reference
from helpers.sae_inputs import exact_encoder_inputs

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present

STEP = 2.0**-14  # the value grid of exact_encoder_inputs


def _oracle(pre, k, cols=None):
    """Per row the k latents by (value descending, latent ascending), among ``cols``."""
    cols = range(pre.shape[1]) if cols is None else cols
    return [sorted(cols, key=lambda j: (-row[j], j))[:k] for row in pre.tolist()]


def _assert_exact(v, i, pre, want_i):
    """Indices equal to ``want_i``, values exactly their ReLU'd pre-activations."""
    assert i.cpu().tolist() == want_i
    assert torch.equal(v.cpu(), torch.relu(pre.gather(1, torch.tensor(want_i))))


def _distinct_sample(g, n, ms, top):
    """``[n, ms]`` distinct values, multiples of 1/128 in [-8, 6), each row's ``top``
    largest returned too (descending)."""
    s = torch.stack([torch.randperm(1792, generator=g)[:ms] for _ in range(n)]).float() / 128 - 8
    return s, s.topk(top, dim=1).values


def test_split_rows_with_exactly_cap_and_cap_plus_one_candidates(device):
    """At the production sizes (m=768, k=120: a sample of 640, capacity 112, below k), rows
    with 111, 112 and 113 out-of-sample latents at or above the sampled threshold. All of
    them belong in the top 120 (each lies above the sample's 8th largest), so the row with
    113, whose last append finds its buffer full, is right only if it is redone: exactly
    one row falls back, whatever order the tiles append in."""
    m, k, n = 768, 120, 3
    ms = sample_m(m, k)
    cap = capacity(m, ms, k)
    assert (ms, cap) == (640, 112) and cap < k
    g = torch.Generator().manual_seed(26)
    pre = torch.empty(n, m)
    sample, top = _distinct_sample(g, n, ms, k)
    pre[:, :ms] = sample
    for r, c in enumerate((cap - 1, cap, cap + 1)):
        # c candidates strictly between the sample's 8th and 7th largest (spacing 1/128),
        # the rest of the out-of-sample latents below the threshold (the 120th largest).
        cand = top[r, 7] + STEP * torch.arange(1, c + 1)
        low = top[r, k - 1] - STEP * torch.arange(1, m - ms - c + 1)
        pre[r, ms:] = torch.cat([cand, low])[torch.randperm(m - ms, generator=g)]
        assert int((pre[r, ms:] >= top[r, k - 1]).sum()) == c
    x, W, b = exact_encoder_inputs(pre, seed=1)
    stats = {}
    v, i, _, _ = topk_encode_split_fwd(x.to(device), W.to(device), b.to(device), k, stats=stats)
    want = _oracle(pre, k)
    rv, ri = topk_encode_reference(x, W, b, k)
    assert ri.tolist() == want and torch.equal(rv, torch.relu(pre.gather(1, ri)))
    _assert_exact(v, i, pre, want)
    assert stats["sample_m"] == ms and stats["cap"] == cap
    assert stats["fallback_rows"] == 1  # the cap + 1 row only: not the row that fills its buffer exactly


def test_split_out_of_sample_values_within_1e3_of_the_sampled_threshold(device):
    """m=300, k=8: the sample is the first 128 latents and its 8th largest ``t`` the
    threshold. Out-of-sample latents at ``t + 2^-12 .. 2^-10`` (all within 1e-3) belong in
    the top 8 and must reach the candidates; one at exactly ``t`` ties and loses to the
    sample's (lower) latent; one at ``t - 2^-14`` stays out. A threshold off by even 1e-3
    upwards drops a true top-k latent."""
    m, k, n = 300, 8, 4
    ms = sample_m(m, k)
    assert ms == 128
    g = torch.Generator().manual_seed(27)
    pre = torch.empty(n, m)
    sample, top = _distinct_sample(g, n, ms, k)
    t = top[:, k - 1]
    pre[:, :ms] = sample
    # Below the threshold elsewhere (multiples of 1/128 minus a grid step: no ties with the sample).
    pre[:, ms:] = torch.stack([t[r] - 1 - torch.randperm(512, generator=g)[: m - ms] / 128 - STEP for r in range(n)])
    # Row 0: one latent just above t, in the first out-of-sample column.
    pre[0, ms] = t[0] + 2.0**-12
    # Row 1: the sample's 6th and 7th largest lowered to t + 2^-13 and t + 2^-14, and three
    # out-of-sample latents above those, so all three enter the top 8; one in the last
    # column (under the interpreter, the last tile's last append).
    s1 = sample[1].argsort(descending=True)
    pre[1, s1[5]], pre[1, s1[6]] = t[1] + 2 * STEP, t[1] + STEP
    pre[1, [140, 222, m - 1]] = t[1] + torch.tensor([2.0**-10, 2.0**-11, 3 * 2.0**-12])
    # Row 2: a tie at exactly t (the sample's latent is lower, so it stays) and one just below.
    pre[2, [200, 201]] = torch.stack([t[2], t[2] - STEP])
    # Row 3: t + 2^-10 (9.8e-4 above) in the last column, and a tie at t (latent 150).
    pre[3, m - 1] = t[3] + 16 * STEP
    pre[3, 150] = t[3]
    x, W, b = exact_encoder_inputs(pre, seed=2)
    stats = {}
    v, i, _, _ = topk_encode_split_fwd(x.to(device), W.to(device), b.to(device), k, stats=stats)
    want = _oracle(pre, k)
    assert ms in want[0] and {140, 222, m - 1} <= set(want[1]) and m - 1 in want[3]
    assert not {200, 201} & set(want[2]) and 150 not in want[3]
    rv, ri = topk_encode_reference(x, W, b, k)
    assert ri.tolist() == want and torch.equal(rv, torch.relu(pre.gather(1, ri)))
    _assert_exact(v, i, pre, want)
    assert stats["sample_m"] == ms and stats["fallback_rows"] == 0  # through the candidates, not the redo


def _tied_rows(m, ms):
    """``[6, m]`` rows of few distinct values (multiples of 1/8): ties at the k-th place
    inside the sample, across it, only outside it, within the top k across tiles and
    slices, and at the split encoder's threshold (``ms``: its sample). Out of the sample,
    at most ~30 latents per row reach the threshold (each is one round of the kernel's
    append loop under the interpreter), so at the production capacity no row overflows."""
    g = torch.Generator().manual_seed(m)

    def some(p):  # about a fraction p of the out-of-sample latents
        return torch.rand(m - ms, generator=g) < p

    pre = torch.ones(6, m)
    # Four equal largest, one in the sample, then the lowest latents of the sample's tie
    # at t = 1; the out-of-sample ones at t (a few) lose to them.
    pre[0, ms:] = torch.where(some(0.1), 1.0, 0.5)
    pre[0, [3, ms + 2, 200 % m, m - 1]] = 2.0
    # About a tenth at the top value 1.5, in and out of the sample.
    pre[1] = torch.randint(1, 3, (m,), generator=g) / 2
    pre[1, torch.rand(m, generator=g) < 0.1] = 1.5
    # The sample low but 3 latents; the k-th place among the out-of-sample ties at 1.
    pre[2, :ms] = 0.25
    pre[2, [1, 50, 90]] = 2.0
    pre[2, ms:] = torch.where(some(0.15), 1.0, 0.125)
    # 8 sample latents at t = 1; out of the sample, ties at t and three above it.
    pre[3, :ms] = 0.5
    pre[3, torch.randperm(ms, generator=g)[:8]] = 1.0
    pre[3, ms:] = torch.where(some(0.05), 1.0, 0.75)
    pre[3, [ms + 5, m - 2, m - 1]] = 2.0
    # All negative: ReLU'd to 0, the order still by the pre-activations.
    pre[4] = -torch.randint(1, 3, (m,), generator=g) / 4
    pre[4, ms:] = torch.where(some(0.1), -0.25, -0.75)
    # A tie group every 7th latent, across every tile and slice.
    pre[5, ::7] = 1.5
    return pre


# m=300 (ms=128) and 256 (ms=128): shapes not and shapes a power of two.
@pytest.mark.parametrize("m", [300, 256])
def test_every_backend_breaks_ties_by_the_lower_latent(m, device):
    k, k_aux = 8, 6
    ms = sample_m(m, k)
    pre = _tied_rows(m, ms)
    x, W, b = exact_encoder_inputs(pre, seed=3)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[1::3] = True
    dead_cols = dead.nonzero().flatten().tolist()
    want, want_aux = _oracle(pre, k), _oracle(pre, k_aux, dead_cols)
    want_v = torch.relu(pre.gather(1, torch.tensor(want)))
    want_av = torch.relu(pre.gather(1, torch.tensor(want_aux)))
    xd, Wd, bd, deadd = x.to(device), W.to(device), b.to(device), dead.to(device)
    runs = {
        "reference": topk_encode_reference(x, W, b, k, None, dead, k_aux),
        "chunked/50": topk_encode_chunked(x, W, b, k, None, dead, k_aux, slice_m=50),
        "triton": topk_encode_fwd(xd, Wd, bd, k, None, deadd, k_aux),
    }
    for cap, fallback in ((None, 0), (1, 6)):  # the ties through the candidate buffers; every row redone
        stats = {}
        runs[f"split/cap={cap}"] = topk_encode_split_fwd(xd, Wd, bd, k, None, deadd, k_aux, cap=cap, stats=stats)
        assert stats["fallback_rows"] == fallback
    # Through the op (its own padding and copies); triton and split run the functions above.
    for backend in ("reference", "chunked"):
        runs[f"op/{backend}"] = topk_encode(xd, Wd, bd, k, dead_mask=deadd, k_aux=k_aux, backend=backend)
    for name, (v, i, av, ai) in runs.items():
        assert i.cpu().tolist() == want, name
        assert ai.cpu().tolist() == want_aux, name
        assert torch.equal(v.cpu(), want_v), name
        assert torch.equal(av.cpu(), want_av), name


def test_aux_slots_past_the_dead_latents_are_latent_0_on_every_backend(device):
    """Three dead latents, k_aux = 5: the last two slots hold latent 0, value 0, everywhere."""
    m, k = 200, 4
    pre = _tied_rows(m, sample_m(m, k))
    x, W, b = exact_encoder_inputs(pre, seed=4)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[[7, 90, 199]] = True
    want = [r + [0, 0] for r in _oracle(pre, 3, [7, 90, 199])]
    xd, Wd, bd, deadd = x.to(device), W.to(device), b.to(device), dead.to(device)
    runs = {
        "reference": topk_encode_reference(x, W, b, k, None, dead, 5),
        "chunked/64": topk_encode_chunked(x, W, b, k, None, dead, 5, slice_m=64),
        "triton": topk_encode_fwd(xd, Wd, bd, k, None, deadd, 5),
        "split": topk_encode_split_fwd(xd, Wd, bd, k, None, deadd, 5),
    }
    for name, (_, _, av, ai) in runs.items():
        assert ai.cpu().tolist() == want, name
        assert (av[:, 3:] == 0).all(), name


def test_topk_indices_orders_by_value_then_lower_index_with_nan_and_signed_zero():
    """The rule itself on rows of few values (ties everywhere, at every k), NaN (the
    largest) and -0.0 (equal to 0.0), float32 and float64, against the Python sort."""
    g = torch.Generator().manual_seed(5)
    for trial in range(60):
        n, m = 3, int(torch.randint(1, 40, (1,), generator=g))
        pre = (torch.randint(-2, 3, (n, m), generator=g) / 2).to(torch.float64 if trial % 2 else torch.float32)
        pre[torch.rand(n, m, generator=g) < 0.15] = float("nan") if trial % 3 == 0 else -0.0
        k = int(torch.randint(1, m + 1, (1,), generator=g))
        key = torch.where(pre.isnan(), float("inf"), pre)  # NaN first; -0.0 == 0.0 already
        assert topk_indices(pre, k).tolist() == _oracle(key, k), (pre, k)
