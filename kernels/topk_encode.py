"""Triton kernel: SAE encoder GEMM with the top-k fused into its epilogue.

``pre = (x - pre_bias) @ W_enc.T + b_enc`` is computed one ``[BLOCK_N, BLOCK_M]`` tile at a
time; each tile's k largest entries are merged into a running top-k held in registers, so
the ``[n, m]`` pre-activations never reach global memory (at n=8192, m=131072 they would be
4 GiB of fp32 written and read back).

Shapes: x ``[n, d]`` (row stride ``stride_x``, last dim contiguous), W_enc ``[m, d]`` (one
row per latent), b ``[m]`` float32 (``b_enc - W_enc @ pre_bias``, folded by the launcher).
Outputs: values ``[n, k]`` float32 (ReLU applied) and indices ``[n, k]`` int64, each row in descending order.

Top-k merge: every pre-activation becomes one int64 key whose order is the value's order,
``(orderable float bits - 2^31) << 32 | (2^32 - 1 - column)``, so one integer carries the
column along and equal values prefer the lower column. The running top-k is an unsorted
set of k keys. A tile's keys above the set's minimum are inserted largest first, each
replacing the current minimum, for as many rounds as the most such keys in any row
(at most k). After the first tiles almost no key beats the k-th best (about
``k ln(m/k)`` insertions per row over the whole scan), so most tiles cost one comparison
per element. No sort in the kernel: ``tl.sort`` took 1.5 s per call under
TRITON_INTERPRET=1 and is absent from some Triton versions; the launcher orders the k
results per row by (value, latent): two ``torch.sort`` of ``[n, k]``, the key order, which
is also the reference's (``actstore._numerics.topk_indices``). Keys order NaN by their sign
bit (a negative NaN ranks last), where the reference puts every NaN first: the two agree
on rows without a negative NaN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_KEY = tl.constexpr(-(2**63) + 1)  # below every real key (even a -inf pre-activation beats it)
MAX_KEY = tl.constexpr(2**63 - 1)  # fills the slots past k (KP is a power of two): never the minimum


@triton.jit
def _merge_topk(best, cand, kk, K: tl.constexpr):
    """Insert the keys of ``cand`` ``[BLOCK_N, BLOCK_M]`` (MIN_KEY where absent) that beat
    the running set ``best`` ``[BLOCK_N, KP]``, largest first, each replacing the set's
    minimum. Returns the new set."""
    thr = tl.min(best, axis=1)
    cand = tl.where(cand > thr[:, None], cand, MIN_KEY)
    rounds = tl.minimum(tl.max(tl.sum((cand > MIN_KEY).to(tl.int32), axis=1), axis=0), K)
    j = 0
    while j < rounds:
        top = tl.max(cand, axis=1)
        low = tl.min(best, axis=1)
        pos = tl.argmin(best, axis=1)
        put = (kk[None, :] == pos[:, None]) & (top > low)[:, None]
        best = tl.where(put, top[:, None], best)
        cand = tl.where(cand == top[:, None], MIN_KEY, cand)  # keys are unique: removes one
        j += 1
    return best


@triton.jit
def _store_topk(best, rows, rmask, kk, val_ptr, idx_ptr, K: tl.constexpr):
    """Unpack keys into (value float32, column int64) and store ``[BLOCK_N, K]``."""
    col = 0xFFFFFFFF - (best & 0xFFFFFFFF)
    ordered = (best >> 32) + 0x80000000
    bits = tl.where(ordered >= 0x80000000, ordered ^ 0x80000000, ordered ^ 0xFFFFFFFF)
    val = (bits & 0xFFFFFFFF).to(tl.uint32).to(tl.float32, bitcast=True)
    out = rows.to(tl.int64)[:, None] * K + kk[None, :]
    omask = rmask[:, None] & (kk < K)[None, :]
    tl.store(val_ptr + out, val, mask=omask)
    tl.store(idx_ptr + out, col, mask=omask)


@triton.jit
def _topk_encode_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    val_ptr,
    idx_ptr,
    dead_ptr,
    aval_ptr,
    aidx_ptr,
    N,
    D,
    M,
    stride_x,
    stride_w,
    K: tl.constexpr,
    KP: tl.constexpr,
    KA: tl.constexpr,
    KAP: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    kk = tl.arange(0, KP)
    best = tl.where((kk < K)[None, :], tl.full((BLOCK_N, KP), MIN_KEY, dtype=tl.int64), MAX_KEY)
    ka = tl.arange(0, KAP)
    # AuxK: a second running set over the dead latents only, from the same tiles (KA=0: off).
    aux = tl.where((ka < KA)[None, :], tl.full((BLOCK_N, KAP), MIN_KEY, dtype=tl.int64), MAX_KEY)
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        cmask = cols < M
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            xt = tl.load(
                x_ptr + rows.to(tl.int64)[:, None] * stride_x + ds[None, :],
                mask=rmask[:, None] & dmask[None, :],
                other=0.0,
            )
            wt = tl.load(
                w_ptr + cols.to(tl.int64)[None, :] * stride_w + ds[:, None],
                mask=dmask[:, None] & cmask[None, :],
                other=0.0,
            )
            if IEEE:
                acc += tl.dot(xt, wt, input_precision="ieee")
            else:
                acc += tl.dot(xt, wt)
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0)[None, :]
        # float -> orderable int: flip all bits of negatives, the sign bit of the rest.
        bits = acc.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        ordered = tl.where(bits < 0x80000000, bits | 0x80000000, bits ^ 0xFFFFFFFF)
        keys = ((ordered - 0x80000000) << 32) + (0xFFFFFFFF - cols.to(tl.int64))[None, :]
        best = _merge_topk(best, tl.where(cmask[None, :], keys, MIN_KEY), kk, K)
        if KA > 0:
            dead = tl.load(dead_ptr + cols, mask=cmask, other=0) != 0
            aux = _merge_topk(aux, tl.where((cmask & dead)[None, :], keys, MIN_KEY), ka, KA)
    _store_topk(best, rows, rmask, kk, val_ptr, idx_ptr, K)
    if KA > 0:
        _store_topk(aux, rows, rmask, ka, aval_ptr, aidx_ptr, KA)


def fold_pre_bias(W_enc: torch.Tensor, b_enc: torch.Tensor, pre_bias: torch.Tensor | None) -> torch.Tensor:
    """``b_enc - W_enc @ pre_bias`` ``[m]`` float32: ``(x - p) W^T + b = x W^T + (b - W p)``, so
    the pre-bias folds into the bias and x stays in its own dtype for tl.dot (subtracting in
    the kernel would round x - p to fp16/bf16 before the product). The GEMV runs in float32
    over slices of 8192 rows, so no float32 copy of a bf16 W_enc (2 GiB at m=131072,
    d=4096) is ever made."""
    b = b_enc.to(torch.float32)
    if pre_bias is None:
        return b
    p = pre_bias.to(torch.float32)
    out = torch.empty_like(b)
    for s in range(0, W_enc.shape[0], 8192):
        out[s : s + 8192] = b[s : s + 8192] - W_enc[s : s + 8192].to(torch.float32) @ p
    return out


# The largest running set (``next_power_of_2(k)``, and of ``k_aux``) the fused kernel takes:
# its sets are ``[BLOCK_N, KP]`` int64 in registers, so past 256 (128 registers per thread for
# one set of 256 at 4 warps) they cannot stay there. Larger k or k_aux (the threshold ops'
# ``cand_k`` up to 1024, the SAEs' default ``k_aux = d/2``) go to the split kernel
# (``topk_encode_split.py``), which keeps no set in registers and gives the same results.
FUSED_MAX_K = 256

# (num_warps, num_stages) per (float32 operands, AuxK on, KP); KP below 16 takes the 16 row.
# Chosen by compiling every one with benchmarks/gpu_compile.py (Triton 3.9, ptxas 12.9 for
# sm_80 and 13.4 for sm_90a): each is spill-free on both archs at BLOCK_N=16, BLOCK_M=64.
# ptxas spills a few bytes to reach an occupancy step (96, 128, 168 registers) and which
# configuration does so moves erratically with K; the old 4 warps / 3 stages spilled at 16
# of the 60 production configurations. 8 warps halve the registers of the sets, 2 stages
# free the third operand buffer's addresses. Not timed on a GPU.
_TILES = {
    (False, False): {16: (8, 2), 32: (8, 2), 64: (8, 2), 128: (8, 2), 256: (8, 2)},
    (False, True): {16: (4, 2), 32: (4, 2), 64: (4, 2), 128: (4, 2), 256: (8, 2)},
    (True, False): {16: (8, 2), 32: (8, 2), 64: (8, 2), 128: (8, 2), 256: (8, 2)},
    (True, True): {16: (8, 2), 32: (8, 2), 64: (8, 2), 128: (8, 1), 256: (8, 2)},
}


def _topk_encode_config(d: int, k: int, k_aux: int, dtype: torch.dtype) -> dict | None:
    """The launch's constexprs, ``num_warps`` and ``num_stages`` for ``d`` input features, top
    ``k``, ``k_aux`` AuxK latents (0: off) and the operands' ``dtype``, or None where the
    fused kernel does not run (``next_power_of_2`` of k or k_aux above ``FUSED_MAX_K``, or
    ``d`` not a multiple of 16: the launcher hands those to the split kernel). Unaligned rows
    load unvectorised, and no one choice of warps and stages kept the fused kernel spill-free
    there (36-356 B at bf16/fp16 K=16, and K=32-128 with AuxK 256, d=1000, sm_80/sm_90a);
    real models' widths are multiples of 16. A pure function of the shape, so that
    benchmarks/gpu_compile.py compiles exactly what a launch would. Tiles: 16 rows (the
    smallest tl.dot), 64 latents, d in tiles of 16-64; warps and stages from ``_TILES``.
    Not tuned on a GPU; see benchmarks/README.md."""
    kp = triton.next_power_of_2(k)
    kap = triton.next_power_of_2(max(k_aux, 1))
    if kp > FUSED_MAX_K or kap > FUSED_MAX_K or d % 16:
        return None
    fp32 = dtype == torch.float32
    num_warps, num_stages = _TILES[(fp32, k_aux > 0)][max(kp, 16)]
    return dict(
        K=k,
        KP=kp,
        KA=k_aux,
        KAP=kap,
        IEEE=fp32,
        BLOCK_N=16,
        BLOCK_M=64,
        BLOCK_D=min(64, max(16, triton.next_power_of_2(d))),
        num_warps=num_warps,
        num_stages=num_stages,
    )


def topk_encode_fwd(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    relu: bool = True,
):
    """Launch the fused encoder + top-k (``relu=False``: the raw k largest, which the
    threshold ops use as candidates). Where k or k_aux is too large for the fused kernel's
    registers (``_topk_encode_config`` is None: above ``FUSED_MAX_K``) this hands the call
    to ``topk_encode_split.topk_encode_split_fwd``, which returns the same.

    Returns ``(values [n, k] float32, indices [n, k] int64, aux_values [n, k_aux],
    aux_indices [n, k_aux])``, each row descending, equal values by lower latent (also the
    one kept at the k-th place), ReLU applied. The aux pair is the top-k over latents where
    ``dead_mask`` ``[m]`` is true (empty when ``k_aux`` is 0); a row with fewer dead latents
    than ``k_aux`` fills the rest with latent 0, value 0."""
    n, d = x.shape
    m = W_enc.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    if W_enc.stride(1) != 1:
        W_enc = W_enc.contiguous()
    if x.dtype != W_enc.dtype:
        x = x.to(W_enc.dtype)  # tl.dot needs one dtype; copying x ([n, d]) is cheaper than W ([m, d])
    ka = k_aux if dead_mask is not None else 0
    cfg = _topk_encode_config(d, k, ka, x.dtype)
    if cfg is None:  # sets too large for registers: the split kernel, same results (FUSED_MAX_K)
        from .topk_encode_split import topk_encode_split_fwd

        return topk_encode_split_fwd(x, W_enc, b_enc, k, pre_bias, dead_mask if ka else None, ka, relu)
    b = fold_pre_bias(W_enc, b_enc, pre_bias)
    values = torch.empty((n, k), dtype=torch.float32, device=x.device)
    indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
    aux_values = torch.empty((n, ka), dtype=torch.float32, device=x.device)
    aux_indices = torch.empty((n, ka), dtype=torch.int64, device=x.device)
    if n == 0:
        return values, indices, aux_values, aux_indices
    dead = dead_mask.to(torch.int8).contiguous() if ka else values  # unused pointer when KA=0
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    _topk_encode_fwd_kernel[grid](
        x,
        W_enc,
        b.contiguous(),
        values,
        indices,
        dead,
        aux_values,
        aux_indices,
        n,
        d,
        m,
        x.stride(0),
        W_enc.stride(0),
        **cfg,
    )
    # Descending per row, equal values by lower latent; ReLU as torch.relu (NaN stays NaN,
    # sorted first like torch.topk).
    values, indices = _order(values, indices)
    values = torch.relu(values) if relu else values
    if ka:
        # Slots left empty (a row with fewer dead latents than k_aux) decode to a column
        # past m, so they sort last: make them latent 0 with value 0, which adds nothing and
        # gets no gradient.
        empty = aux_indices >= m
        aux_values, aux_indices = _order(aux_values.masked_fill(empty, float("-inf")), aux_indices)
        empty = aux_indices >= m
        aux_values, aux_indices = torch.relu(aux_values), aux_indices.masked_fill(empty, 0)
    return values, indices, aux_values, aux_indices


def _order(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's unordered k per row ``[n, k]`` in the order of its keys (and of
    ``actstore._numerics.topk_indices``): values descending, equal values by lower latent.
    Two sorts of ``[n, k]``: latents ascending, then a stable sort of the values."""
    indices, by_latent = indices.sort(dim=1)  # unique, but empty aux slots (one column, all -inf)
    values, order = values.gather(1, by_latent).sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)
