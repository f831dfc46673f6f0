"""The measuring dispatch on the CPU, with an injected clock: it picks the fastest median,
caches it per (op, device, shape class) in its JSON file, reuses it without timing again
(also in a new process), obeys ACTSTORE_<OP>, and names a damaged cache in one line. Then
the same for the sparse decode (triton / embedding_bag / dense) and the encoder backward
(triton / dense / reference), their real candidates run on CPU tensors (the Triton ones in
the interpreter) while the injected clock decides."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from actstore.ops import _autotune, csr_decode, topk_encode
from actstore.ops.csr_decode import decode_choice
from actstore.ops.encoder_grads import grads_choice
from actstore.reference.topk_sae import csr_decode_reference
from helpers.tolerances import assert_values_close


@pytest.fixture
def cache(tmp_path, monkeypatch):
    p = tmp_path / "dispatch.json"
    monkeypatch.setenv("ACTSTORE_DISPATCH_CACHE", str(p))
    for var in ("ACTSTORE_TOY_OP", "ACTSTORE_SPARSE_DECODE", "ACTSTORE_ENCODER_GRADS", "ACTSTORE_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    _autotune._memo.clear()
    yield p
    _autotune._memo.clear()


class Clock:
    """Each candidate advances the clock by its own cost when it runs."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, costs, {k: 0 for k in costs}

    def __call__(self):
        return self.now

    def cands(self):
        def run(name):
            def f():
                self.calls[name] += 1
                self.now += self.costs[name]

            return f

        return {name: run(name) for name in self.costs}


def test_picks_the_fastest_and_caches_it(cache):
    clock = Clock({"fused": 3.0, "chunked": 1.0, "eager": 2.0})
    key = _autotune.shape_class(n=4000, d=4096, m=100000, k=32)
    assert key == "d=4096,k=32,m=131072,n=4096"
    assert _autotune.choose("toy_op", "cpu", key, clock.cands(), repeats=3, timer=clock) == "chunked"
    assert clock.calls == {"fused": 4, "chunked": 4, "eager": 4}  # one warm-up + 3 timed, each
    doc = json.loads(cache.read_text())
    entry = doc[f"toy_op|cpu|{key}"]
    assert entry["choice"] == "chunked" and entry["median_s"] == {"fused": 3.0, "chunked": 1.0, "eager": 2.0}
    # Known now: no more timing, in this process or a new one.
    assert _autotune.choose("toy_op", "cpu", key, clock.cands(), timer=clock) == "chunked"
    assert clock.calls["chunked"] == 4
    code = (
        "from actstore.ops import _autotune as a; "
        "print(a.choose('toy_op', 'cpu', %r, {'fused': lambda: 1/0, 'chunked': lambda: 1/0}))" % key
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "chunked", out.stderr
    # Another shape class or device is measured on its own.
    clock2 = Clock({"fused": 1.0, "chunked": 5.0})
    assert _autotune.choose("toy_op", "NVIDIA H200", key, clock2.cands(), timer=clock2) == "fused"
    assert {r["device"] for r in _autotune.table()} == {"cpu", "NVIDIA H200"}


def test_environment_forces_a_candidate(cache, monkeypatch):
    clock = Clock({"fused": 3.0, "chunked": 1.0})
    monkeypatch.setenv("ACTSTORE_TOY_OP", "fused")
    assert _autotune.choose("toy_op", "cpu", "k", clock.cands(), timer=clock) == "fused"
    assert clock.calls == {"fused": 0, "chunked": 0} and not cache.exists()
    monkeypatch.setenv("ACTSTORE_TOY_OP", "nope")
    with pytest.raises(_autotune.DispatchError, match="ACTSTORE_TOY_OP='nope' is not a candidate here"):
        _autotune.choose("toy_op", "cpu", "k", clock.cands(), timer=clock)


def test_damaged_cache_is_one_line(cache):
    cache.write_text("{not json")
    clock = Clock({"a": 1.0, "b": 2.0})
    with pytest.raises(_autotune.DispatchError, match="is damaged") as e:
        _autotune.choose("toy_op", "cpu", "k", clock.cands(), timer=clock)
    assert "\n" not in str(e.value) and "delete it" in str(e.value)


class PairClock:
    """For ops whose candidates the test cannot wrap: the dispatch reads the clock just before
    and just after each timed run, round-robin over the candidates in their order, so the
    j-th pair of readings spans candidate ``j % len(costs)`` (``costs`` in that order)."""

    def __init__(self, costs):
        self.order, self.costs, self.reads, self.now = list(costs), costs, 0, 0.0

    def __call__(self):
        if self.reads % 2:
            self.now += self.costs[self.order[(self.reads // 2) % len(self.order)]]
        self.reads += 1
        return self.now


def _csr(n=6, m=40, d=12, per_row=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    row_ptr = torch.arange(n + 1) * per_row
    cols = torch.randint(0, m, (n * per_row,), generator=g)
    vals = torch.randn(n * per_row, generator=g)
    return row_ptr, cols, vals, torch.randn(m, d, generator=g), torch.randn(d, generator=g)


def test_decode_dispatch_times_caches_and_obeys_the_environment(cache, monkeypatch):
    row_ptr, cols, vals, W, b = _csr()
    W.requires_grad_()
    clock = PairClock({"triton": 3.0, "embedding_bag": 1.0, "dense": 2.0})  # csr_decode.TIMED order
    assert decode_choice(row_ptr, cols, vals, W, b, measure=True, timer=clock) == "embedding_bag"
    assert clock.reads == 2 * 3 * 3  # 3 repeats x 3 candidates, a reading before and after each
    (key,) = json.loads(cache.read_text())
    assert key.startswith("sparse_decode|cpu|torch.float32|torch.float32|fwd+bwd|")
    entry = json.loads(cache.read_text())[key]
    assert entry["choice"] == "embedding_bag" and entry["median_s"]["dense"] == 2.0
    assert decode_choice(row_ptr, cols, vals, W, b, measure=True, timer=clock) == "embedding_bag"
    assert clock.reads == 18  # cached: not timed again
    # Without a gradient wanted it is another entry, timed on its own.
    clock2 = PairClock({"triton": 1.0, "embedding_bag": 4.0, "dense": 2.0})
    with torch.no_grad():
        assert decode_choice(row_ptr, cols, vals, W, b, measure=True, timer=clock2) == "triton"
    assert {r["key"].split("|")[2] for r in _autotune.table() if r["op"] == "sparse_decode"} == {"fwd", "fwd+bwd"}
    # Forced: used by csr_decode with backend=None, whatever the cache says.
    monkeypatch.setenv("ACTSTORE_SPARSE_DECODE", "dense")
    assert decode_choice(row_ptr, cols, vals, W, b, measure=True, timer=clock) == "dense"
    assert_values_close(csr_decode(row_ptr, cols, vals, W, b), csr_decode_reference(row_ptr, cols, vals, W, b))
    monkeypatch.setenv("ACTSTORE_SPARSE_DECODE", "sparse")
    with pytest.raises(_autotune.DispatchError, match="ACTSTORE_SPARSE_DECODE='sparse' is not a candidate") as e:
        csr_decode(row_ptr, cols, vals, W, b)
    assert "\n" not in str(e.value) and "embedding_bag" in str(e.value)


def test_decode_without_timing_cuts_by_density(cache):
    sparse = _csr(n=8, m=400, per_row=2)  # 0.5% of the [n, m] entries
    dense = _csr(n=8, m=40, per_row=10)  # 25%
    assert decode_choice(*sparse) == "reference"  # the CPU default backend
    assert decode_choice(*dense) == "dense"
    assert not cache.exists()  # nothing was timed
    for row_ptr, cols, vals, W, b in (sparse, dense):
        assert_values_close(csr_decode(row_ptr, cols, vals, W, b), csr_decode_reference(row_ptr, cols, vals, W, b))
    with pytest.raises(ValueError, match="unknown backend 'gemm'"):
        csr_decode(*sparse, backend="gemm")


def _grads_args():
    n, d, m, k = 6, 16, 48, 4
    g = torch.Generator().manual_seed(3)
    x, W = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    pb = torch.randn(d, generator=g)
    row_ptr = torch.arange(n + 1) * k
    rows = torch.arange(n).repeat_interleave(k)
    cols = torch.randint(0, m, (n * k,), generator=g)
    return (True, True, True, True), x, W, pb, row_ptr, rows, cols, torch.randn(n * k, generator=g)


def test_encoder_grads_dispatch_times_caches_and_obeys_the_environment(cache, monkeypatch):
    args = _grads_args()
    clock = PairClock({"triton": 2.0, "dense": 1.0, "reference": 3.0})  # encoder_grads.CANDIDATES order
    assert grads_choice(*args, "triton", "sorted", measure=True, timer=clock) == "dense"
    assert clock.reads == 18
    assert grads_choice(*args, "triton", "sorted", measure=True, timer=clock) == "dense" and clock.reads == 18
    (row,) = _autotune.table()
    assert row["op"] == "encoder_grads" and row["choice"] == "dense" and "needs=1111" in row["key"]
    assert row["median_s"] == {"triton": 2.0, "dense": 1.0, "reference": 3.0}
    # Not timing (the CPU default): the forward's backend as given.
    assert grads_choice(*args, "reference", "sorted") == "reference"
    monkeypatch.setenv("ACTSTORE_ENCODER_GRADS", "reference")
    assert grads_choice(*args, "triton", "sorted", measure=True, timer=clock) == "reference"
    monkeypatch.setenv("ACTSTORE_ENCODER_GRADS", "fused")
    with pytest.raises(_autotune.DispatchError, match="ACTSTORE_ENCODER_GRADS='fused' is not a candidate") as e:
        grads_choice(*args, "triton", "sorted")
    assert "\n" not in str(e.value)


def test_forced_dense_encoder_grads_give_topk_encode_the_reference_gradients(cache, monkeypatch):
    g = torch.Generator().manual_seed(9)
    x, W, b = torch.randn(10, 16, generator=g), torch.randn(40, 16, generator=g), torch.randn(40, generator=g)
    grads = {}
    for forced in ("reference", "dense"):
        monkeypatch.setenv("ACTSTORE_ENCODER_GRADS", forced)
        leaves = [t.clone().requires_grad_() for t in (x, W, b)]
        v, _ = topk_encode(*leaves, 4, backend="reference")
        (v * torch.arange(4.0)).sum().backward()
        grads[forced] = [t.grad for t in leaves]
    for name, a, r in zip(("x", "W_enc", "b_enc"), grads["dense"], grads["reference"], strict=True):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5, msg=name)
