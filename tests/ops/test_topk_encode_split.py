"""The split TopK encoder (``kernels/topk_encode_split.py``: dense sample, threshold-append
GEMM epilogue, exact select) against the reference, under TRITON_INTERPRET=1 without a GPU:
k from 1 to 64, float32/float16/bfloat16, rows not a multiple of the tile, exact ties
(duplicate W rows, on both sides of the sample, and ties at the threshold), AuxK with dead
masks (fewer dead latents than k_aux, dead only outside or only inside the sample),
overflowing candidate buffers redone densely (and counted), NaN rows, the int64 keys, and
gradients through ``topk_encode(backend="split")``."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations
from actstore.kernels.topk_encode_split import from_keys, to_keys, topk_encode_split_fwd
from actstore.ops import sparse_decode, topk_encode
from actstore.reference.topk_sae import sparse_decode_reference, topk_encode_reference
from helpers.sae_inputs import encoder_inputs
from helpers.tolerances import assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def _tol_dtype(dtype):
    # bfloat16 products are exact in float32 (and off CUDA the kernel widens them), so the
    # float32 tolerance applies; float16 tiles go to tl.dot as float16.
    return torch.float16 if dtype == torch.float16 else torch.float32


def _check(got_v, got_i, x, W, b, pb, k, dtype, dead=None, k_aux=0):
    """Values within tolerance of the reference's, the chosen latents' own pre-activations
    equal to the values, distinct latents, and index sets equal but for near-ties."""
    pre = pre_activations(x, W, b, pb)
    ref = topk_encode_reference(x, W, b, k, pb)
    rv, ri = ref
    assert got_v.shape == rv.shape and got_i.dtype == torch.int64
    assert_values_close(got_v, rv, _tol_dtype(dtype))
    assert_values_close(torch.relu(pre.gather(1, got_i.cpu())), got_v.cpu(), _tol_dtype(dtype))
    assert all(len(set(r.tolist())) == k for r in got_i.cpu())
    same = sum(set(a.tolist()) == set(c.tolist()) for a, c in zip(got_i.cpu(), ri))
    assert same >= got_i.shape[0] - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d,m,k", [(37, 48, 512, 1), (80, 64, 512, 64), (21, 40, 300, 8), (5, 16, 96, 8)])
def test_split_matches_the_reference(dtype, n, d, m, k, device):
    x, W, b, pb = encoder_inputs(n, d, m, seed=n + d + m + k, dtype=dtype)
    stats = {}
    args = (x.to(device), W.to(device), b.to(device), k, pb.to(device))
    v, i, av, ai = topk_encode_split_fwd(*args, stats=stats)
    _check(v, i, x, W, b, pb, k, dtype)
    assert av.shape == (n, 0) and ai.shape == (n, 0)
    assert stats["fallback_rows"] == 0  # random data: no row needs the dense fallback
    assert (stats["cap"] > 0) == (stats["sample_m"] < m)


def test_ties_prefer_the_lower_latent_across_the_sample_and_at_the_threshold(device):
    """Four equal largest pre-activations (16) at latents 3, 70, 130 and 159, every other
    one 0: the top 8 is those four, then the four lowest zeros, in that order; the
    threshold (0) ties with the ~94 latents outside the sample, so rows overflow to the
    dense fallback with a small buffer and go through the candidates with a large one."""
    x = torch.ones(3, 16)
    W = torch.zeros(160, 16)
    W[[3, 70, 130, 159], :] = 1.0
    want_i = [[3, 70, 130, 159, 0, 1, 2, 4]] * 3
    for cap, fallback in ((8, 3), (96, 0)):
        stats = {}
        v, i, _, _ = topk_encode_split_fwd(
            x.to(device), W.to(device), torch.zeros(160, device=device), 8, sample=64, cap=cap, stats=stats
        )
        assert i.cpu().tolist() == want_i and stats["fallback_rows"] == fallback
        assert v.cpu().tolist() == [[16.0] * 4 + [0.0] * 4] * 3
    v, i = topk_encode(x.to(device), W.to(device), torch.zeros(160, device=device), 2, backend="split")
    assert i.cpu().tolist() == [[3, 70]] * 3


def test_overflowing_rows_are_redone_densely_and_counted(device):
    x, W, b, pb = encoder_inputs(30, 32, 400, seed=11)
    stats = {}
    v, i, _, _ = topk_encode_split_fwd(
        x.to(device), W.to(device), b.to(device), 8, pb.to(device), sample=16, cap=10, stats=stats
    )
    _check(v, i, x, W, b, pb, 8, torch.float32)
    # With the 8th largest of 16 latents as threshold, ~24x8 of the other 384 survive: more than 10.
    assert stats["sample_m"] == 16 and stats["cap"] == 10 and stats["fallback_rows"] == 30


def test_overflowing_rows_with_auxk_are_redone_in_dense_slices(monkeypatch, device):
    """The dense fallback with AuxK, in slices of 128 latents (DENSE_SLICE made small): the top k
    and the top k_aux dead latents of every row merged across the slices."""
    from actstore.kernels import topk_encode_split as S

    monkeypatch.setattr(S, "DENSE_SLICE", 128)
    n, d, m, k, ka = 30, 32, 400, 8, 6
    x, W, b, pb = encoder_inputs(n, d, m, seed=13)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[::3] = True
    stats = {}
    v, i, av, ai = S.topk_encode_split_fwd(
        x.to(device), W.to(device), b.to(device), k, pb.to(device), dead.to(device), ka, sample=16, cap=10,
        stats=stats,
    )  # fmt: skip
    assert stats["fallback_rows"] == n
    _check(v, i, x, W, b, pb, k, torch.float32)
    rv, ri, rav, rai = topk_encode_reference(x, W, b, k, pb, dead_mask=dead, k_aux=ka)
    assert_values_close(av, rav)
    pos = av.cpu() > 0
    assert dead[ai.cpu()[pos]].all()
    same = sum(set(a[p].tolist()) == set(c[q > 0].tolist()) for a, p, c, q in zip(ai.cpu(), pos, rai, rav))
    assert same >= n - 1


def test_rows_whose_aux_buffer_alone_overflows_are_redone(device):
    """Dead latents only outside the sample: the aux threshold is -inf and all 40 of them are
    candidates, over a buffer of 20; the top 2 (about 6 candidates a row) fits. Each row is
    redone for its AuxK alone."""
    n, d, m, k, ka = 23, 40, 512, 2, 5
    x, W, b, pb = encoder_inputs(n, d, m, seed=14)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[300:340] = True
    stats = {}
    v, i, av, ai = topk_encode_split_fwd(
        x.to(device), W.to(device), b.to(device), k, pb.to(device), dead.to(device), ka, sample=128, cap=20,
        stats=stats,
    )  # fmt: skip
    assert stats["aux_cap"] == 20 and stats["fallback_rows"] == n
    _check(v, i, x, W, b, pb, k, torch.float32)
    rav = topk_encode_reference(x, W, b, k, pb, dead_mask=dead, k_aux=ka)[2]
    assert_values_close(av, rav)


def test_relu_false_gives_the_raw_top_k(device):
    x, W, b, pb = encoder_inputs(9, 16, 200, seed=15)
    b = b - 20.0  # every pre-activation negative: ReLU would give zeros
    v, i, _, _ = topk_encode_split_fwd(x.to(device), W.to(device), b.to(device), 4, pb.to(device), relu=False)
    rv, ri = pre_activations(x, W, b, pb).topk(4, dim=1)
    assert (rv < 0).all()
    assert_values_close(v, rv)
    assert all(set(a.tolist()) == set(c.tolist()) for a, c in zip(i.cpu(), ri))


def test_sample_and_capacity_give_the_module_docstrings_sizes():
    from actstore.kernels.topk_encode_split import capacity, sample_m

    # n=8192, m=131072, k=32: ms=4096 (128 MiB of float32 per 8192 rows) and cap=2048
    assert sample_m(131072, 32) == 4096 and capacity(131072, 4096, 32) == 2048
    assert sample_m(1000, 8) == 256  # 2 sqrt(8000) = 178.9, rounded up to 128
    assert sample_m(100, 8) == 100 and sample_m(20000, 1) == 384  # at most m; at least 128
    assert capacity(512, 256, 8) == 80 and capacity(300, 256, 8) == 44  # 2*8*256/256 + 64; at most m - ms


@pytest.mark.parametrize(
    "dead_idx,k_aux,sample",
    [
        ("third", 6, None),  # dead latents everywhere
        ("few", 6, None),  # three dead latents: fewer than k_aux
        ("outside", 5, 128),  # dead latents only outside the sample
        ("inside", 5, 128),  # dead latents only inside the sample
        ("third", 64, 128),  # large k_aux: the aux threshold is -inf, the buffer holds every dead latent
    ],
)
def test_auxk_matches_the_reference(dead_idx, k_aux, sample, device):
    n, d, m, k = 23, 40, 512, 8
    x, W, b, pb = encoder_inputs(n, d, m, seed=k_aux + len(dead_idx))
    dead = torch.zeros(m, dtype=torch.bool)
    sel = {"third": slice(None, None, 3), "few": [4, 200, 401], "outside": slice(300, 340), "inside": slice(10, 50)}
    dead[sel[dead_idx]] = True
    v, i, av, ai = topk_encode_split_fwd(
        x.to(device), W.to(device), b.to(device), k, pb.to(device), dead.to(device), k_aux, sample=sample
    )
    rv, ri, rav, rai = topk_encode_reference(x, W, b, k, pb, dead_mask=dead, k_aux=k_aux)
    _check(v, i, x, W, b, pb, k, torch.float32)
    assert av.shape == (n, k_aux) and ai.dtype == torch.int64
    assert_values_close(av, rav)
    pos = av.cpu() > 0
    assert dead[ai.cpu()[pos]].all() and (ai.cpu() < m).all()
    pre = pre_activations(x, W, b, pb)
    assert_values_close(torch.relu(pre.gather(1, ai.cpu())) * pos, av.cpu())
    same = sum(set(a[p].tolist()) == set(c[q > 0].tolist()) for a, p, c, q in zip(ai.cpu(), pos, rai, rav))
    assert same >= n - 1
    if dead_idx == "few":
        assert (av[:, 3:] == 0).all() and (ai[:, 3:] == 0).all()


def test_nan_rows_come_out_nan_like_the_reference(device):
    x, W, b, pb = encoder_inputs(4, 48, 300, seed=4)
    x[1, 5] = float("nan")
    stats = {}
    v, i, _, _ = topk_encode_split_fwd(x.to(device), W.to(device), b.to(device), 8, pb.to(device), stats=stats)
    rv, _ = topk_encode_reference(x, W, b, 8, pb)
    assert torch.isnan(v[1].cpu()).all() and torch.isnan(rv[1]).all()
    assert_values_close(v[[0, 2, 3]], rv[[0, 2, 3]])
    assert stats["fallback_rows"] == 1  # the NaN threshold sends the row to the dense path


def test_keys_order_values_then_lower_column_and_round_trip():
    vals = torch.tensor([float("-inf"), -3.5, -0.0, 0.0, 1e-40, 2.0, 2.0, float("inf"), float("nan"), -float("nan")])
    cols = torch.arange(vals.numel())
    keys = to_keys(vals, cols)
    order = keys.argsort(descending=True).tolist()
    # NaN (either sign) first, lower column first; +inf; the two 2.0 by column; ...; -0.0 and
    # 0.0 equal (by column); -inf last.
    assert order == [8, 9, 7, 5, 6, 4, 2, 3, 1, 0]
    v, c = from_keys(keys)
    assert torch.equal(c, cols) and torch.equal(v[:8], vals[:8]) and torch.isnan(v[8:]).all()
    assert not torch.signbit(v[2])  # -0.0 comes back as 0.0


def test_gradients_through_the_op_match_autograd_through_the_reference(device):
    x, W, b, pb = encoder_inputs(19, 48, 300, seed=6)
    dead = torch.zeros(300, dtype=torch.bool)
    dead[::4] = True
    Wd = torch.randn(300, 48) / 7
    leaves = [t.clone().to(device).requires_grad_() for t in (x, W, b, pb)]
    v, i, av, ai = topk_encode(*leaves[:3], 8, leaves[3], dead_mask=dead.to(device), k_aux=5, backend="split")
    loss = (sparse_decode(v, i, Wd.to(device)) ** 2).sum() + (sparse_decode(av, ai, Wd.to(device)) ** 2).sum()
    loss.backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    rv, ri, rav, rai = topk_encode_reference(*refs[:3], 8, refs[3], dead_mask=dead, k_aux=5)
    rloss = (sparse_decode_reference(rv, ri, Wd) ** 2).sum() + (sparse_decode_reference(rav, rai, Wd) ** 2).sum()
    rloss.backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)


def test_forced_split_through_the_dispatch(monkeypatch, device):
    x, W, b, pb = encoder_inputs(12, 32, 200, seed=8)
    monkeypatch.setenv("ACTSTORE_TOPK_ENCODE", "split")
    v, i = topk_encode(x.to(device), W.to(device), b.to(device), 4, pb.to(device))
    _check(v, i, x, W, b, pb, 4, torch.float32)


def test_autotune_prunes_to_the_dtype_and_is_bypassed_off_cuda(device):
    from actstore.kernels import topk_encode_split as S

    tuned = S._topk_encode_split_tuned
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for d, aligned in ((4096, True), (24, False)):
            args = {"x_ptr": torch.empty(1, dtype=dtype), "D": d, "stride_x": d, "stride_w": d}
            kept = S._prune(tuned.configs, args)
            want = S._split_configs(dtype, aligned)
            assert [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_M"], c.num_stages) for c in kept] == [
                (c["BLOCK_N"], c["BLOCK_M"], c["num_stages"]) for c in want
            ]
            assert all(c.kwargs["BLOCK_N"] >= 64 for c in kept)  # tensor-core sized tiles
    assert len(S._split_configs(torch.bfloat16, False)) == 1  # unaligned 16-bit: the 64-row tile only
    assert [c["num_stages"] for c in S._split_configs(torch.float32, False)] == [1]  # unaligned fp32: one stage
    # the tuner's configurations (made at import) are the tables', tile sizes apart from warps and stages
    fresh = [(c.kwargs, c.num_warps, c.num_stages) for c in S._autotune_configs()]
    assert fresh == [(c.kwargs, c.num_warps, c.num_stages) for c in tuned.configs]
    assert fresh == [
        ({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")}, c["num_warps"], c["num_stages"])
        for c in S._TC_CONFIGS + S._FP32_CONFIGS + S._FP32_UNALIGNED_CONFIGS
    ]
    assert tuned.keys == ["D", "M", "CAP"]
    if device == "cpu":  # the interpreter runs the first configuration; nothing is timed
        x, W, b, pb = encoder_inputs(4, 16, 200, seed=2)
        before = dict(tuned.cache)
        topk_encode_split_fwd(x, W, b, 2, pb)
        assert tuned.cache == before


def test_launch_arguments_the_autotuner_zeroes_are_scratch_and_typed_as_compiled(monkeypatch):
    """On CUDA the autotuner zeroes ``cnt_ptr``/``acnt_ptr`` before each timed run: in every
    mode they must be buffers of the launcher's own, never an input (the bias was, once),
    and every pointer has the dtype benchmarks/gpu_compile.py compiles it with."""
    from actstore.kernels import topk_encode_split as S

    seen = []

    class Spy:
        arg_names = S._topk_encode_split_kernel.arg_names

        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append(dict(zip(self.arg_names, args)))

    monkeypatch.setattr(S, "_topk_encode_split_kernel", Spy())
    x, W, b, pb = encoder_inputs(6, 16, 400, seed=3)
    dead = torch.zeros(400, dtype=torch.bool)
    dead[::5] = True
    S.topk_encode_split_fwd(x, W, b, 4, pb, dead, 3)
    S.topk_encode_split_fwd(x, W, b, 4, pb)
    modes = {(a["cval_ptr"].shape[1] == a["CAP"] and a["cnt_ptr"].numel() == 1, a["ACAP"] > 0) for a in seen}
    # dense (the sample; the fallback, as the spy computes nothing), threshold with and without AuxK
    assert len(seen) >= 4 and len(modes) == 3
    want = {"dead_ptr": torch.int8, "cnt_ptr": torch.int32, "ccol_ptr": torch.int32, "acnt_ptr": torch.int32,
            "acol_ptr": torch.int32, "b_ptr": torch.float32, "thr_ptr": torch.float32, "athr_ptr": torch.float32,
            "cval_ptr": torch.float32, "aval_ptr": torch.float32}  # fmt: skip
    for a in seen:
        for name in ("cnt_ptr", "acnt_ptr"):
            assert all(a[name] is not a[other] for other in ("x_ptr", "w_ptr", "b_ptr", "cval_ptr", "aval_ptr"))
        assert {k: a[k].dtype for k in want} == want


def test_grouped_tile_order_covers_every_tile_once(device):
    """Small tiles and groups of 2 row blocks: 80 rows = 5 row blocks of 16 (a last group of
    one), so a tile the grouped order skipped or visited twice would change the result (a
    skipped one loses candidates, a repeated one appends duplicates)."""
    x, W, b, pb = encoder_inputs(80, 32, 300, seed=12)
    cfg = dict(BLOCK_N=16, BLOCK_M=32, BLOCK_D=16, GROUP_N=2, num_warps=4, num_stages=1)
    dead = torch.zeros(300, dtype=torch.bool)
    dead[1::4] = True
    v, i, av, ai = topk_encode_split_fwd(
        x.to(device), W.to(device), b.to(device), 6, pb.to(device), dead.to(device), 4, config=cfg
    )
    _check(v, i, x, W, b, pb, 6, torch.float32)
    rav = topk_encode_reference(x, W, b, 6, pb, dead_mask=dead, k_aux=4)[2]
    assert_values_close(av, rav)
