"""Triton kernel: the r-th largest of a float32 vector by radix select (no full sort).

BatchTopK needs one threshold per batch: the ``n*k``-th largest activation. Floats are
mapped to order-preserving uint32 keys (flip every bit of negatives, the sign bit of the
rest) and the key is found 8 bits at a time, most significant first: each of the 4
passes histograms the next byte of the keys that share the prefix found so far (256
bins, float32-free integer atomics), then a few tiny device ops pick the bin holding the
r-th largest and carry the prefix and the remaining rank to the next pass. Nothing goes
back to the host, so the select never stalls the stream. Work: 4 reads of the input.

Shapes: values ``[N]`` float32 (NaN is not supported: pass ReLU'd activations), rank r
(1-based, ``1 <= r <= N``). Returns a 0-d float32 tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _radix_histogram_kernel(val_ptr, prefix_ptr, hist_ptr, N, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    bits = tl.load(val_ptr + offs, mask=mask, other=0.0).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    key = tl.where(bits < 0x80000000, bits | 0x80000000, bits ^ 0xFFFFFFFF)
    prefix = tl.load(prefix_ptr)
    if SHIFT < 24:
        # Only keys whose higher bytes equal the prefix found by the earlier passes.
        mask = mask & ((key >> (SHIFT + 8)) == prefix)
    b = (key >> SHIFT) & 0xFF
    tl.atomic_add(hist_ptr + b, tl.full((BLOCK,), 1, dtype=tl.int32), mask=mask)


RADIX_SHIFTS = (24, 16, 8, 0)  # the 4 passes, most significant byte first


def _radix_select_config(shift: int) -> dict:
    """One pass's constexprs and ``num_warps`` (pure; benchmarks/gpu_compile.py compiles what
    a launch would): 1024 keys per program."""
    return dict(SHIFT=shift, BLOCK=1024, num_warps=4)


def radix_select_fwd(values: torch.Tensor, r: int) -> torch.Tensor:
    """Launch: the r-th largest of ``values`` ``[N]`` float32 as a 0-d tensor."""
    values = values.contiguous().reshape(-1).to(torch.float32)
    n = values.numel()
    if not 1 <= r <= n:
        raise ValueError(f"radix_select: rank {r} is outside 1..{n}")
    dev = values.device
    prefix = torch.zeros(1, dtype=torch.int64, device=dev)
    rank = torch.tensor([r], dtype=torch.int64, device=dev)
    for shift in RADIX_SHIFTS:
        cfg = _radix_select_config(shift)
        hist = torch.zeros(256, dtype=torch.int32, device=dev)
        _radix_histogram_kernel[(triton.cdiv(n, cfg["BLOCK"]),)](values, prefix, hist, n, **cfg)
        # Count from the top byte down: the bin where the running count reaches the rank.
        above = hist.flip(0).cumsum(0).to(torch.int64)  # above[j]: keys in bins >= 255 - j
        j = torch.searchsorted(above, rank)  # first j with above[j] >= rank
        b = 255 - j
        rank = rank - (above[j] - hist.flip(0)[j].to(torch.int64))
        prefix = (prefix << 8) | b
    key = prefix[0] & 0xFFFFFFFF
    bits = torch.where(key >= 0x80000000, key ^ 0x80000000, key ^ 0xFFFFFFFF)
    # int64 holding 32 bits -> int32 two's complement -> reinterpreted as float32
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)
