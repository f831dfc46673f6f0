"""``topk_encode``: SAE encoder + top-k (+ AuxK), with a sparse backward.

Forward, four candidates:

- ``triton``: the fused kernel ``actstore.kernels.topk_encode`` (the ``[n, m]``
  pre-activations never reach memory; the AuxK top-k over dead latents comes out of the
  same pass; k or k_aux above 256, whose running sets would spill out of registers, go to
  the split kernel below);
- ``split``: ``actstore.kernels.topk_encode_split``, a tensor-core tiled GEMM whose
  epilogue appends the entries above a per-row threshold (from a dense sample of the first
  latents) to a candidate buffer, then an exact top-k of the candidates (memory
  ``[n, ~2 sqrt(k m)]``; rows whose buffer overflows are redone densely);
- ``chunked``: the GEMM on slices of m, then ``torch.topk`` per slice and a merge
  (``ops/topk_encode_chunked.py``; memory ``[n, 8192]``);
- ``reference``: ``actstore.reference.topk_sae.topk_encode_reference`` (one ``[n, m]``).

On CUDA tensors with ``backend=None`` the measuring dispatch (``ops/_autotune.py``) times
the candidates on the first call per shape class (eager only up to m=32768) and caches the
fastest; ``ACTSTORE_TOPK_ENCODE=triton|split|chunked|reference`` forces one on any device.
On the CPU the default is the reference. ``backend`` given explicitly is used as is
(``triton`` and ``split`` also on CPU tensors under TRITON_INTERPRET=1).

Backward (``actstore.ops.encoder_grads``): through the k (+ k_aux) selected latents only,
``O(n (k + k_aux) d)``, with the gradient of a value masked where ReLU was inactive.

Registered as the ``torch.library`` custom op ``actstore::topk_encode`` with its autograd,
so ``torch.compile(fullgraph=True)`` traces through it. Shapes and layout:
``actstore.reference.topk_sae``.
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, check_k, rows_of
from ..reference.topk_sae import topk_encode_reference
from . import _autotune
from ._dispatch import check_accumulate, resolve_backend
from .encoder_grads import encoder_grads
from .topk_encode_chunked import topk_encode_chunked

CANDIDATES = ("triton", "split", "chunked", "reference")
EAGER_MAX_M = 32768  # the eager candidate holds [n, m] float32: timed only up to here


@torch.library.custom_op("actstore::topk_encode", mutates_args=())
def _topk_encode_op(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    pre_bias: torch.Tensor | None,
    dead_mask: torch.Tensor | None,
    k: int,
    k_aux: int,
    backend: str,
    accumulate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton" and x.dtype != torch.float64:
        from ..kernels.topk_encode import topk_encode_fwd

        return topk_encode_fwd(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux)
    if backend == "split" and x.dtype != torch.float64:
        from ..kernels.topk_encode_split import topk_encode_split_fwd

        return topk_encode_split_fwd(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux)
    if backend == "chunked":
        return topk_encode_chunked(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux)
    out = topk_encode_reference(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux)
    if len(out) == 2:
        out = out + (out[0].new_empty((x.shape[0], 0)), out[1].new_empty((x.shape[0], 0)))
    return tuple(t.contiguous() for t in out)


@_topk_encode_op.register_fake
def _(x, W_enc, b_enc, pre_bias, dead_mask, k, k_aux, backend, accumulate):
    n = x.shape[0]
    ka = k_aux if dead_mask is not None else 0
    vd = acc_dtype(x)
    return (
        x.new_empty((n, k), dtype=vd),
        x.new_empty((n, k), dtype=torch.int64),
        x.new_empty((n, ka), dtype=vd),
        x.new_empty((n, ka), dtype=torch.int64),
    )


def _setup_context(ctx, inputs, output):
    x, W_enc, b_enc, pre_bias, dead_mask, k, k_aux, backend, accumulate = inputs
    values, indices, aux_values, aux_indices = output
    ctx.save_for_backward(x, W_enc, pre_bias, values, indices, aux_values, aux_indices)
    # The backward's kernels: Triton where the forward ran on CUDA through either GEMM path.
    ctx.backend = "triton" if backend in ("triton", "split") or (backend == "chunked" and x.is_cuda) else "reference"
    ctx.accumulate = accumulate
    ctx.mark_non_differentiable(indices, aux_indices)


def _backward(ctx, grad_values, _gi, grad_aux, _gai):
    x, W_enc, pre_bias, values, indices, aux_values, aux_indices = ctx.saved_tensors
    n = x.shape[0]
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    gs, cs = [], []
    for grad, v, idx in ((grad_values, values, indices), (grad_aux, aux_values, aux_indices)):
        if grad is not None and v.shape[1]:
            gs.append(torch.where(v > 0, grad.to(v.dtype), zero))
            cs.append(idx)
    needs = tuple(ctx.needs_input_grad[:4])
    if not gs:
        return (None,) * 9
    g = torch.cat(gs, 1) if len(gs) > 1 else gs[0]
    cols = torch.cat(cs, 1) if len(cs) > 1 else cs[0]
    kt = g.shape[1]
    row_ptr = torch.arange(n + 1, device=x.device) * kt
    rows = rows_of(row_ptr, n * kt)
    grads = encoder_grads(
        needs, x, W_enc, pre_bias, row_ptr, rows, cols.reshape(-1), g.reshape(-1), ctx.backend, ctx.accumulate
    )
    return grads + (None,) * 5


_topk_encode_op.register_autograd(_backward, setup_context=_setup_context)


def _check(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux):
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[1]:
        raise ValueError(
            f"topk_encode: x must be [n, d] and W_enc [m, d], got {tuple(x.shape)} and {tuple(W_enc.shape)}"
        )
    m = W_enc.shape[0]
    if b_enc.shape != (m,):
        raise ValueError(f"topk_encode: b_enc must be [m={m}], got {tuple(b_enc.shape)}")
    if pre_bias is not None and pre_bias.shape != (x.shape[1],):
        raise ValueError(f"topk_encode: pre_bias must be [d={x.shape[1]}], got {tuple(pre_bias.shape)}")
    check_k(k, m)
    if dead_mask is not None:
        if dead_mask.shape != (m,) or dead_mask.dtype != torch.bool:
            raise ValueError(
                f"topk_encode: dead_mask must be a [m={m}] bool tensor, got {tuple(dead_mask.shape)} {dead_mask.dtype}"
            )
        check_k(k_aux, m, "k_aux")


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    *,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    backend: str | None = None,
    accumulate: str = "sorted",
):
    """x ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]`` -> ``(values [n, k], indices [n, k])``:
    the k largest of ``(x - pre_bias) @ W_enc.T + b_enc`` per row, ReLU applied, in
    descending order (values float32; float64 for float64 x). Ties, on every backend: equal
    pre-activations by lower latent first, and at the k-th place the lower latent is kept
    (``actstore._numerics.topk_indices``; NaN is the largest). Differentiable in x, W_enc,
    b_enc and pre_bias.

    With ``dead_mask`` (``[m]`` bool) and ``k_aux`` >= 1, also the AuxK top-k over the dead
    latents from the same pass: ``(values, indices, aux_values [n, k_aux], aux_indices)``,
    in the same order; slots a row cannot fill (fewer dead latents than k_aux) hold latent
    0, value 0. Gradients flow through both sets. ``accumulate``: ``sorted``
    (deterministic) or ``atomic`` weight gradients on the Triton backend.

    Raises ValueError (one line) for k < 1, k > m, or mismatched shapes."""
    _check(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux)
    check_accumulate(accumulate)
    k_aux = k_aux if dead_mask is not None else 0
    if backend is None:
        backend = _pick(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux)
    elif backend not in CANDIDATES:
        raise ValueError(f"unknown backend {backend!r}: use {', '.join(repr(c) for c in CANDIDATES)}")
    out = _topk_encode_op(x, W_enc, b_enc, pre_bias, dead_mask, k, k_aux, backend, accumulate)
    return out if dead_mask is not None else out[:2]


def _pick(x, W_enc, b_enc, k, pre_bias, dead_mask, k_aux) -> str:
    """The candidate for ``backend=None`` (see the module docstring)."""
    forced = _autotune.forced("topk_encode", CANDIDATES)
    if forced is not None:
        return forced
    default = resolve_backend(x, None)
    if default != "triton" or not x.is_cuda or torch.compiler.is_compiling():
        return default  # the CPU, no Triton, ACTSTORE_BACKEND, or tracing: nothing to time
    m = W_enc.shape[0]
    names = ["triton", "split", "chunked"] + (["reference"] if m <= EAGER_MAX_M else [])

    def run(name):
        return lambda: _topk_encode_op(x, W_enc, b_enc, pre_bias, dead_mask, k, k_aux, name, "sorted")

    key = f"{x.dtype}|{W_enc.dtype}|" + _autotune.shape_class(n=x.shape[0], d=x.shape[1], m=m, k=k, k_aux=k_aux)
    with torch.no_grad():
        return _autotune.choose(
            "topk_encode",
            _autotune.device_name(x),
            key,
            {name: run(name) for name in names},
            sync=torch.cuda.synchronize,
        )
