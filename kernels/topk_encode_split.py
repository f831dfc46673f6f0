"""Triton kernel: SAE encoder + top-k as a tensor-core GEMM with a threshold epilogue.

The fused kernel of ``topk_encode.py`` keeps a running top-k of int64 keys in registers per
16-row program and streams all of W_enc through every program (254-255 registers, spills).
This one is a plain tiled GEMM (``[BLOCK_N >= 64, BLOCK_M]`` tiles of ``tl.dot``: wgmma on
Hopper, mma on Ampere) whose epilogue is a comparison, in three passes:

1. **Sample.** The pre-activations of the first ``ms`` latents (``sample_m``, about
   ``2 sqrt(k m)``) are written dense, ``[n, ms]`` float32, by the same kernel
   (``DENSE=True``); their exact top-k per row (int64 keys, ``torch.topk``) gives each row a
   threshold ``t``: the k-th largest of a subset is at most the k-th largest of all ``m``,
   so every latent of the row's true top-k outside the sample has a value ``>= t``.
2. **Split.** The kernel runs over latents ``[ms, m)``; each tile appends the entries with
   ``value >= t`` (NaN too: ``not value < t``) to its row's candidate buffer ``[n, cap]``
   (value float32, column int32) at a slot from an atomic per-row counter plus the
   in-tile prefix sum. About ``k (m - ms) / ms`` entries per row survive (``cap`` is twice
   that plus 64, at most ``m - ms``); the counter keeps counting past ``cap``.
3. **Select.** ``torch.topk`` of int64 keys over the sample's k and the row's candidates
   gives the exact top-k. Keys: ``(orderable float bits - 2^31) << 32 | (2^32 - 1 - col)``
   (as in ``topk_encode.py``: equal values prefer the lower latent; NaN, made positive, is
   the largest, as in ``torch.topk``). A row whose counter passed ``cap`` (or whose
   threshold is NaN: every entry survives) is redone exactly: the same kernel, dense over
   slices of ``m`` for those rows only. ``stats["fallback_rows"]`` counts them.

AuxK: a second threshold from the k_aux-th largest *dead* latent of the sample (``-inf``
when the sample holds fewer than k_aux dead latents) and a second buffer, filled by the
same tiles (``AUX=True``): the same exactness argument over the dead latents.

Memory: ``[n, ms]`` float32 + ``[n, cap]`` x 8 B (+ the aux buffer), never ``[n, m]``: at
n=8192, m=131072, k=32: ms=4096 (128 MiB) and cap=2048 (128 MiB) against 4 GiB.

Launch: a 1-D grid over ``[BLOCK_N, BLOCK_M]`` output tiles, ``GROUP_N`` row blocks at a time
(the grouped order of Triton's matmul tutorial) so that W_enc is read from HBM about
``n / (BLOCK_N GROUP_N)`` times and each tile's operands come from L2. On CUDA the tiles
are chosen by ``triton.autotune`` among :func:`_split_configs` (keyed on ``D``, ``M``,
``CAP`` - which carries k - and, as Triton adds to every key, the pointer dtypes); off CUDA
(TRITON_INTERPRET=1) the launcher calls the plain jitted kernel with the first of those
configurations, so the interpreter never times anything and the tests run the production
tile shape.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .topk_encode import fold_pre_bias

MIN_KEY = -(2**63)  # below every key of a real (NaN-canonical) float: empty slots
DENSE_SLICE = 8192  # latents per dense slice of the exact fallback


@triton.jit
def _append(v, keep, lrows, rows, rmask, cols, cnt_ptr, val_ptr, col_ptr, CAP):
    """Append the entries of ``v`` ``[BLOCK_N, BLOCK_M]`` where ``keep`` to their rows'
    buffers ``[N, CAP]`` (``val_ptr``/``col_ptr`` already at the program's first row,
    ``lrows`` the rows from there, so offsets stay int32). One atomic per row reserves the
    row's slots; then one round per survivor of the fullest row stores every row's lowest
    remaining kept column. A round is two row reductions over ``[BLOCK_N]`` vectors: no
    per-element prefix sum or address tile, which spilled (255 registers, ~1 KiB of spills
    at 128x128 on sm_90a). Slots past CAP are not written; the counter still counts them."""
    cnt = tl.sum(keep.to(tl.int32), axis=1)
    rounds = tl.max(cnt, axis=0)
    if rounds > 0:
        base = tl.atomic_add(cnt_ptr + rows, cnt, mask=rmask & (cnt > 0))
        j = 0
        while j < rounds:
            c = tl.min(tl.where(keep, cols[None, :], 2147483647), axis=1)  # [BLOCK_N]
            hit = cols[None, :] == c[:, None]
            val = tl.sum(tl.where(hit, v, 0.0), axis=1)
            slot = base + j
            ok = rmask & (j < cnt) & (slot < CAP)
            tl.store(val_ptr + lrows * CAP + slot, val, mask=ok)
            tl.store(col_ptr + lrows * CAP + slot, c, mask=ok)
            keep = keep & ~hit
            j += 1


@triton.jit
def _topk_encode_split_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    thr_ptr,
    athr_ptr,
    dead_ptr,
    cnt_ptr,
    cval_ptr,
    ccol_ptr,
    acnt_ptr,
    aval_ptr,
    acol_ptr,
    N,
    D,
    M0,
    M,
    CAP,
    ACAP,
    stride_x,
    stride_w,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    DENSE: tl.constexpr,
    AUX: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    """One ``[BLOCK_N, BLOCK_M]`` tile of ``x @ W_enc[M0:M].T + b``. ``DENSE``: store it at
    ``cval[row, col - M0]`` (row stride CAP). Otherwise append the entries ``>= thr[row]``
    (and with ``AUX`` the dead ones ``>= athr[row]``) to the candidate buffers."""
    pid = tl.program_id(0)
    n_rb = tl.cdiv(N, BLOCK_N)
    n_cb = tl.cdiv(M - M0, BLOCK_M)
    width = GROUP_N * n_cb
    first = (pid // width) * GROUP_N
    size = tl.minimum(n_rb - first, GROUP_N)
    rb = first + (pid % width) % size
    cb = (pid % width) // size
    rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = M0 + cb * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
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
        if UPCAST:
            acc = tl.dot(xt.to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")
        elif IEEE:
            acc = tl.dot(xt, wt, acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, wt, acc)
    v = acc + tl.load(b_ptr + cols, mask=cmask, other=0.0)[None, :]
    valid = rmask[:, None] & cmask[None, :]
    if DENSE:
        off = rows.to(tl.int64)[:, None] * CAP + (cols - M0)[None, :]
        tl.store(cval_ptr + off, v, mask=valid)
    else:
        lrows = tl.arange(0, BLOCK_N)
        first_row = (rb * BLOCK_N).to(tl.int64)
        thr = tl.load(thr_ptr + rows, mask=rmask, other=0.0)
        keep = valid & ~(v < thr[:, None])
        _append(v, keep, lrows, rows, rmask, cols, cnt_ptr, cval_ptr + first_row * CAP, ccol_ptr + first_row * CAP, CAP)
        if AUX:
            athr = tl.load(athr_ptr + rows, mask=rmask, other=0.0)
            dead = tl.load(dead_ptr + cols, mask=cmask, other=0) != 0
            keep = valid & dead[None, :] & ~(v < athr[:, None])
            _append(v, keep, lrows, rows, rmask, cols, acnt_ptr, aval_ptr + first_row * ACAP,
                    acol_ptr + first_row * ACAP, ACAP)  # fmt: skip


# Autotune candidates (constexprs + warps + stages). 16-bit: tensor-core tiles of the
# matmul tutorial's Hopper set, less those that spill with this epilogue (128x256: 255
# registers, 80-108 B spilled on sm_90a); fp32 (IEEE FMA, no tensor cores): half the depth,
# so the staged operand tiles fit shared memory. Not timed on a GPU yet: see
# benchmarks/README.md.
_TC_CONFIGS = [
    dict(BLOCK_N=128, BLOCK_M=128, BLOCK_D=64, GROUP_N=16, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_M=128, BLOCK_D=64, GROUP_N=16, num_warps=8, num_stages=4),
    dict(BLOCK_N=64, BLOCK_M=128, BLOCK_D=64, GROUP_N=16, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_M=64, BLOCK_D=64, GROUP_N=16, num_warps=4, num_stages=4),
]
_FP32_CONFIGS = [
    dict(BLOCK_N=64, BLOCK_M=128, BLOCK_D=32, GROUP_N=16, num_warps=8, num_stages=3),
    dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=32, GROUP_N=16, num_warps=4, num_stages=3),
]
# float32 rows whose width is no multiple of 16: both tiles above spill (8 B at sm_80 for the
# 128-row one, 16 B at sm_90a for the 64-row one, d=40 and d=1000); one stage does not.
_FP32_UNALIGNED_CONFIGS = [dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=32, GROUP_N=16, num_warps=4, num_stages=1)]


def _split_configs(dtype: torch.dtype, aligned: bool = True) -> list[dict]:
    """The launch configurations the autotuner chooses among for operands of ``dtype``
    (constexprs plus ``num_warps``, ``num_stages``); the first is the one used off CUDA.
    ``aligned``: ``d`` and both row strides divisible by 16 (every production shape). When
    they are not, loads cannot be vectorised and the 16-bit tiles with 128 rows spill
    (120-1056 B at d=24 on sm_80/sm_90a), so only the 64-row tile (254 registers, no
    spill) is offered; in float32, ``_FP32_UNALIGNED_CONFIGS``. benchmarks/gpu_compile.py
    compiles every one of them."""
    if dtype == torch.float32:
        return _FP32_CONFIGS if aligned else _FP32_UNALIGNED_CONFIGS
    return _TC_CONFIGS if aligned else _TC_CONFIGS[2:3]


def split_flags(dtype: torch.dtype, dense: bool, aux: bool, cuda: bool = True) -> dict:
    """The mode constexprs of a launch (benchmarks/gpu_compile.py compiles these with every
    configuration). ``UPCAST`` is for Triton's interpreter only: its ``tl.dot`` misreads
    bfloat16 operands (values ~1e10 off in Triton 3.9, the old kernel's too), so off CUDA
    bfloat16 tiles are widened to float32 first, which is exactly the reference's product;
    on a GPU bfloat16 goes to the tensor cores as is."""
    upcast = not cuda and dtype == torch.bfloat16
    return dict(IEEE=dtype == torch.float32 or upcast, UPCAST=upcast, DENSE=dense, AUX=aux)


def _tile_key(c: dict) -> tuple:
    return tuple(sorted(c.items()))


def _aligned(d: int, stride_x: int, stride_w: int) -> bool:
    return d % 16 == 0 and stride_x % 16 == 0 and stride_w % 16 == 0


def _prune(configs, named_args, **kwargs):
    """Keep the configurations of the operands' dtype and alignment (autotune's
    ``early_config_prune``)."""
    a = named_args
    want = {_tile_key(c) for c in _split_configs(a["x_ptr"].dtype, _aligned(a["D"], a["stride_x"], a["stride_w"]))}
    return [c for c in configs if _tile_key({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}) in want]


def _autotune_configs() -> list:
    return [
        triton.Config(
            {k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
            num_warps=c["num_warps"],
            num_stages=c["num_stages"],
        )  # fmt: skip
        for c in _TC_CONFIGS + _FP32_CONFIGS + _FP32_UNALIGNED_CONFIGS
    ]


# The candidate buffers are appended to with atomics: a timing run must start from zero
# counters, hence reset_to_zero (the buffers' stale slots are never read past the counter).
_topk_encode_split_tuned = triton.autotune(
    configs=_autotune_configs(),
    key=["D", "M", "CAP"],
    prune_configs_by={"early_config_prune": _prune},
    reset_to_zero=["cnt_ptr", "acnt_ptr"],
)(_topk_encode_split_kernel)


def sample_m(m: int, k: int) -> int:
    """Latents in the sample pass: ``2 sqrt(k m)`` rounded up to 128 (it minimises the dense
    sample, ``4 ms`` bytes per row, plus the candidate buffer, ``16 k m / ms``), at most m."""
    return min(m, max(128, 128 * math.ceil(2 * math.sqrt(k * m) / 128)))


def capacity(m: int, ms: int, k: int) -> int:
    """Candidate slots per row: twice the expected survivors ``k (m - ms) / ms`` plus 64,
    rounded up to 16, at most ``m - ms`` (then no row can overflow)."""
    return min(m - ms, 16 * math.ceil((2 * k * (m - ms) / ms + 64) / 16))


def to_keys(v: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 values and int columns (broadcastable) -> int64 keys in the values' order,
    equal values ordered by lower column first; NaN (any sign) is made the largest and -0.0
    equal to 0.0 (``+ 0.0``), as ``torch.topk`` compares them."""
    v = torch.where(torch.isnan(v), torch.full_like(v, float("nan")).abs(), v + 0.0)
    bits = v.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    ordered = torch.where(bits < 0x80000000, bits | 0x80000000, bits ^ 0xFFFFFFFF)
    return ((ordered - 0x80000000) << 32) + (0xFFFFFFFF - cols.to(torch.int64))


def from_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_keys`: ``(values float32, columns int64)``."""
    col = 0xFFFFFFFF - (keys & 0xFFFFFFFF)
    ordered = (keys >> 32) + 0x80000000
    bits = torch.where(ordered >= 0x80000000, ordered ^ 0x80000000, ordered ^ 0xFFFFFFFF)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)  # to int32's range, then reinterpret
    return bits.to(torch.int32).view(torch.float32), col


def _launch(x, W, b, M0, M, cfg, *, dense_out=None, thr=None, athr=None, dead=None, bufs=None, abufs=None, cap=0):
    """One launch over latents ``[M0, M)`` (see the kernel)."""
    n, d = x.shape
    # Pointers a mode does not read: float32 ones alias b; the int ones are scratch of their
    # own dtype (as benchmarks/gpu_compile.py types them), never an input, because the
    # autotuner zeroes cnt_ptr/acnt_ptr before every timed run (reset_to_zero).
    i32 = torch.zeros(1, dtype=torch.int32, device=x.device)
    aux = abufs is not None
    if dense_out is not None:
        cnt, cval, ccol, cap = i32, dense_out, i32, dense_out.shape[1]
    else:
        cnt, cval, ccol = bufs
    acnt, aval, acol = abufs if aux else (i32, b, i32)
    acap = aval.shape[1] if aux else 0
    if not aux:
        dead = torch.zeros(1, dtype=torch.int8, device=x.device)
    args = (x, W, b, thr if thr is not None else b, athr if aux else b, dead,
            cnt, cval, ccol, acnt, aval, acol, n, d, M0, M, cap, acap, x.stride(0), W.stride(0))  # fmt: skip
    flags = split_flags(x.dtype, dense_out is not None, aux, x.is_cuda)
    if x.is_cuda and cfg is None:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(M - M0, meta["BLOCK_M"]),)  # noqa: E731
        _topk_encode_split_tuned[grid](*args, **flags)
    else:
        cfg = cfg or _split_configs(x.dtype, _aligned(d, x.stride(0), W.stride(0)))[0]
        grid = (triton.cdiv(n, cfg["BLOCK_N"]) * triton.cdiv(M - M0, cfg["BLOCK_M"]),)
        _topk_encode_split_kernel[grid](*args, **flags, **cfg)


def _top_of_keys(parts: list[torch.Tensor], k: int) -> torch.Tensor:
    keys = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    return keys.topk(min(k, keys.shape[1]), dim=1).values


def _dense_exact(x, W, b, k, ka, dead, cfg) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The exact top-k (and AuxK) keys of the rows of ``x`` over all ``m``, in dense slices."""
    m = W.shape[0]
    best, abest = [], []
    for s in range(0, m, DENSE_SLICE):
        e = min(m, s + DENSE_SLICE)
        pre = torch.empty((x.shape[0], e - s), dtype=torch.float32, device=x.device)
        _launch(x, W, b, s, e, cfg, dense_out=pre)
        keys = to_keys(pre, torch.arange(s, e, device=x.device))
        best = [_top_of_keys(best + [keys], k)]
        if ka:
            abest = [_top_of_keys(abest + [keys.masked_fill(~dead[s:e][None, :], MIN_KEY)], ka)]
    return best[0], (abest[0] if ka else None)


def _select(top_s, bufs, cap, k):
    """The top-k keys of the sample's ``top_s`` and each row's candidates; rows that overflowed."""
    if bufs is None:
        return top_s, torch.zeros(top_s.shape[0], dtype=torch.bool, device=top_s.device)
    cnt, cval, ccol = bufs
    keys = to_keys(cval, ccol)
    filled = torch.arange(cap, device=cnt.device)[None, :] < cnt[:, None]
    keys = keys.masked_fill(~filled, MIN_KEY)
    return _top_of_keys([top_s, keys], k), cnt > cap


def topk_encode_split_fwd(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    relu: bool = True,
    *,
    sample: int | None = None,
    cap: int | None = None,
    config: dict | None = None,
    stats: dict | None = None,
):
    """Encoder + exact top-k (+ AuxK) by sample, threshold-append and select (module docstring).

    x ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]``, pre_bias ``[d]``, dead_mask ``[m]`` bool.
    Returns ``(values [n, k] float32, indices [n, k] int64, aux_values [n, k_aux],
    aux_indices [n, k_aux])`` like ``topk_encode.topk_encode_fwd``: rows descending, equal
    values by lower latent (the keys' order: of two latents tied at the k-th place the lower
    is kept, whether it lies in the sample, in the candidates or in a dense redo), ReLU
    applied (``relu=False``: raw values), aux slots a row cannot fill hold latent 0, value 0.
    ``sample`` / ``cap`` override :func:`sample_m` / :func:`capacity` (tests force overflows
    with them); ``config`` fixes the launch configuration (default: autotuned on CUDA, the
    first of :func:`_split_configs` elsewhere); ``stats`` (a dict) receives ``sample_m``,
    ``cap``, ``aux_cap`` and ``fallback_rows`` (rows redone densely)."""
    n, d = x.shape
    m = W_enc.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    if W_enc.stride(1) != 1:
        W_enc = W_enc.contiguous()
    if x.dtype != W_enc.dtype:
        x = x.to(W_enc.dtype)  # tl.dot needs one dtype; copying x ([n, d]) is cheaper than W ([m, d])
    b = fold_pre_bias(W_enc, b_enc, pre_bias).contiguous()
    ka = k_aux if dead_mask is not None else 0
    dev = x.device
    dead = dead_mask.to(torch.int8).contiguous() if ka else None
    deadb = dead_mask.to(torch.bool) if ka else None
    ms = min(m, max(k, ka, sample if sample is not None else sample_m(m, k)))
    # Pass 1: the sample, dense; its exact top-k and the thresholds.
    pre = torch.empty((n, ms), dtype=torch.float32, device=dev)
    if n:
        _launch(x, W_enc, b, 0, ms, config, dense_out=pre)
    keys = to_keys(pre, torch.arange(ms, device=dev))
    del pre
    top_s = keys.topk(k, dim=1).values
    thr = from_keys(top_s[:, -1])[0].contiguous()
    atop_s, athr, acap = None, None, 0
    if ka:
        atop_s = keys.masked_fill(~deadb[:ms][None, :], MIN_KEY).topk(min(ka, ms), dim=1).values
        if ka <= ms:
            athr = torch.where(atop_s[:, ka - 1] == MIN_KEY, float("-inf"), from_keys(atop_s[:, ka - 1])[0])
        else:
            athr = torch.full((n,), float("-inf"), device=dev)
        athr = athr.contiguous()
        dead_rest = int(deadb[ms:].sum())
        acap = min(dead_rest, capacity(m, ms, ka)) if cap is None else min(dead_rest, cap)
    del keys
    # Pass 2: the rest of the latents, threshold epilogue.
    bufs = abufs = None
    c = capacity(m, ms, k) if cap is None else min(cap, m - ms)
    if ms < m:
        bufs = (torch.zeros(n, dtype=torch.int32, device=dev), torch.empty((n, c), dtype=torch.float32, device=dev),
                torch.empty((n, c), dtype=torch.int32, device=dev))  # fmt: skip
        if ka and dead_rest:
            abufs = (torch.zeros(n, dtype=torch.int32, device=dev),
                     torch.empty((n, acap), dtype=torch.float32, device=dev),
                     torch.empty((n, acap), dtype=torch.int32, device=dev))  # fmt: skip
        if n:
            _launch(x, W_enc, b, ms, m, config, thr=thr, athr=athr, dead=dead, bufs=bufs, abufs=abufs, cap=c)
    # Pass 3: exact select; overflowing rows (and NaN thresholds) redone densely.
    best, redo = _select(top_s, bufs, c, k)
    redo = redo | torch.isnan(thr)
    abest = None
    if ka:
        abest, aredo = _select(atop_s, abufs, acap, ka)
        redo = redo | aredo
        if abest.shape[1] < ka:  # fewer latents than k_aux in all: pad with empty slots
            abest = torch.cat([abest, abest.new_full((n, ka - abest.shape[1]), MIN_KEY)], 1)
    rows = redo.nonzero().flatten()
    if rows.numel():
        fb, fab = _dense_exact(x[rows], W_enc, b, k, ka, deadb, config)
        best[rows] = fb
        if ka:
            abest[rows] = fab
    if stats is not None:
        stats.update(sample_m=ms, cap=c if ms < m else 0, aux_cap=acap, fallback_rows=int(rows.numel()))
    values, indices = from_keys(best)
    values = torch.relu(values) if relu else values
    if not ka:
        empty = torch.empty((n, 0), device=dev)
        return values, indices, empty, empty.to(torch.int64)
    empty = abest == MIN_KEY
    av, ai = from_keys(abest)
    return values, indices, torch.relu(av).nan_to_num(0.0, neginf=0.0).masked_fill(empty, 0.0), ai.masked_fill(empty, 0)
