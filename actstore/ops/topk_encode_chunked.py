"""The chunked-GEMM candidate of ``topk_encode``: the encoder GEMM on slices of the
latents, ``torch.topk`` of each slice, then one top-k of the survivors.

Exact: the k largest of a row are among the k largest of the slices that hold them. Memory:
``[n, slice_m]`` pre-activations at a time plus ``[n, k * slices]`` candidates, never
``[n, m]``. Speed: the slices are plain GEMMs, so this runs near the vendor GEMM's rate on
any device; it is the baseline the fused kernel must beat, and what the measuring dispatch
(``ops/_autotune.py``) picks where it is faster. Same outputs as
``actstore.reference.topk_sae.topk_encode_reference`` (which it is tested against): values
``[n, k]`` (ReLU applied, descending), indices ``[n, k]`` int64, and with ``dead_mask`` /
``k_aux`` the AuxK top-k over the dead latents (slots a row cannot fill hold 0).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype

SLICE_M = 8192  # latents per GEMM slice: [n, 8192] float32 = 256 MiB at n=8192


def _merge(vals: list[torch.Tensor], idxs: list[torch.Tensor], k: int):
    v, i = torch.cat(vals, 1), torch.cat(idxs, 1)
    top = v.topk(min(k, v.shape[1]), dim=1)
    return top.values, i.gather(1, top.indices)


def topk_encode_chunked(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    slice_m: int = SLICE_M,
):
    """x ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]`` -> ``(values, indices, aux_values,
    aux_indices)`` (the aux pair is ``[n, 0]`` without ``dead_mask``); no autograd of its
    own (the op's sparse backward applies)."""
    acc = acc_dtype(x)
    n, m = x.shape[0], W_enc.shape[0]
    xc = x if pre_bias is None else x - pre_bias.to(x.dtype)
    # The GEMM in the weights' dtype (bf16 tensor cores on a GPU), accumulated in float32 by
    # the vendor kernel; the slice is then upcast for the top-k.
    xc = xc.to(W_enc.dtype)
    vals, idxs, avals, aidxs = [], [], [], []
    use_aux = dead_mask is not None and k_aux > 0
    for s in range(0, m, slice_m):
        pre = (xc @ W_enc[s : s + slice_m].t()).to(acc) + b_enc[s : s + slice_m].to(acc)
        t = pre.topk(min(k, pre.shape[1]), dim=1)
        vals.append(t.values), idxs.append(t.indices + s)
        if use_aux:
            masked = pre.masked_fill(~dead_mask[s : s + slice_m][None, :], float("-inf"))
            ta = masked.topk(min(k_aux, pre.shape[1]), dim=1)
            avals.append(ta.values), aidxs.append(ta.indices + s)
    v, i = _merge(vals, idxs, k)
    out = (torch.relu(v), i)
    if not use_aux:
        return out + (v.new_empty((n, 0)), i.new_empty((n, 0)))
    av, ai = _merge(avals, aidxs, k_aux)
    return out + (torch.relu(av).nan_to_num(0.0, neginf=0.0), ai)
