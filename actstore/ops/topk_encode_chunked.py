"""The chunked-GEMM candidate of ``topk_encode``: the encoder GEMM on slices of the
latents, ``torch.topk`` of each slice, then one top-k of the survivors.

Exact: the k largest of a row are among the k largest of the slices that hold them. Memory:
``[n, slice_m]`` pre-activations at a time plus ``[n, k * slices]`` candidates, never
``[n, m]``. Speed: the slices are plain GEMMs, so this runs near the vendor GEMM's rate on
any device; it is the baseline the fused kernel must beat, and what the measuring dispatch
(``ops/_autotune.py``) picks where it is faster. Same outputs as
``actstore.reference.topk_sae.topk_encode_reference`` (which it is tested against): values
``[n, k]`` (ReLU applied, descending), indices ``[n, k]`` int64, and with ``dead_mask`` /
``k_aux`` the AuxK top-k over the dead latents (slots a row cannot fill hold latent 0, value 0).

Ties: equal values by lower latent first, also at the k-th place
(``actstore._numerics.topk_indices`` per slice and for the merge). The merge breaks ties by
position in the concatenated survivors, which is the latent order: each slice's survivors
come in (value, latent) order and the slices in latent order.
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, topk_indices

SLICE_M = 8192  # latents per GEMM slice: [n, 8192] float32 = 256 MiB at n=8192


def _top(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    j = topk_indices(pre, min(k, pre.shape[1]))
    return pre.gather(1, j), j


def _merge(vals: list[torch.Tensor], idxs: list[torch.Tensor], k: int):
    v, j = _top(torch.cat(vals, 1), k)
    return v, torch.cat(idxs, 1).gather(1, j)


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
    dead_cols = dead_mask.to(torch.bool).nonzero().flatten() if use_aux else None
    for s in range(0, m, slice_m):
        pre = (xc @ W_enc[s : s + slice_m].t()).to(acc) + b_enc[s : s + slice_m].to(acc)
        v, j = _top(pre, k)
        vals.append(v), idxs.append(j + s)
        if use_aux:  # the slice's dead latents only (ascending, so the tie order holds)
            local = dead_cols[(dead_cols >= s) & (dead_cols < s + pre.shape[1])] - s
            if local.numel():
                av, j = _top(pre[:, local], k_aux)
                avals.append(av), aidxs.append(local[j] + s)
    v, i = _merge(vals, idxs, k)
    out = (torch.relu(v), i)
    if not use_aux:
        return out + (v.new_empty((n, 0)), i.new_empty((n, 0)))
    av, ai = v.new_zeros((n, k_aux)), i.new_zeros((n, k_aux))
    if avals:  # slots past the dead latents stay latent 0, value 0
        got_v, got_i = _merge(avals, aidxs, k_aux)
        av[:, : got_v.shape[1]], ai[:, : got_i.shape[1]] = torch.relu(got_v).nan_to_num(0.0, neginf=0.0), got_i
    return out + (av, ai)
