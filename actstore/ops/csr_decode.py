"""``csr_decode``: SAE decode of CSR latents, ``out[i] = sum_{e in row i} vals[e] W_dec[cols[e]] + b_dec``.

Forward: ``csr_matmul`` (the Triton kernel on CUDA: ``nnz * d`` reads, float32 sums, no
``[nnz, d]`` product). Backward, sparse:

- ``grad_vals[e] = grad_out[rows[e]] . W_dec[cols[e]]`` (``csr_gather_dot``: the dense
  product evaluated at the selected entries only);
- ``grad_W_dec = sparse^T @ grad_out`` (``csr_transpose_matmul``, sorted or atomic);
- ``grad_b_dec = grad_out.sum(0)``.

Registered as the custom op ``actstore::csr_decode`` with its autograd. The TopK form
``sparse_decode(values [n, k], indices [n, k], ...)`` lives in ``sparse_decode.py``.
Shapes: row_ptr ``[n+1]``, cols ``[nnz]`` int64, vals ``[nnz]``, W_dec ``[m, d]``, b_dec
``[d]`` -> ``[n, d]`` float32 (float64 for float64 vals).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, rows_of
from ._dispatch import check_accumulate, resolve_backend
from .csr_gather_dot import csr_gather_dot
from .csr_matmul import csr_matmul
from .csr_transpose_matmul import csr_transpose_matmul


@torch.library.custom_op("actstore::csr_decode", mutates_args=())
def _csr_decode_op(
    row_ptr: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None,
    backend: str,
    accumulate: str,
) -> torch.Tensor:
    out = csr_matmul(row_ptr, cols, vals, W_dec, backend)
    return out if b_dec is None else out + b_dec.to(out.dtype)


@_csr_decode_op.register_fake
def _(row_ptr, cols, vals, W_dec, b_dec, backend, accumulate):
    return W_dec.new_empty((row_ptr.shape[0] - 1, W_dec.shape[1]), dtype=acc_dtype(vals))


def _setup_context(ctx, inputs, output):
    row_ptr, cols, vals, W_dec, b_dec, backend, accumulate = inputs
    ctx.save_for_backward(row_ptr, cols, vals, W_dec)
    ctx.has_b, ctx.backend, ctx.accumulate = b_dec is not None, backend, accumulate
    ctx.b_dtype = b_dec.dtype if b_dec is not None else None


def _backward(ctx, grad_out):
    row_ptr, cols, vals, W_dec = ctx.saved_tensors
    rows = rows_of(row_ptr, cols.shape[0])
    grad_vals = grad_W = grad_b = None
    if ctx.needs_input_grad[2]:
        grad_vals = csr_gather_dot(rows, cols, grad_out, W_dec, ctx.backend).to(vals.dtype)
    if ctx.needs_input_grad[3]:
        gW, _ = csr_transpose_matmul(rows, cols, vals, grad_out, W_dec.shape[0], None, ctx.backend, ctx.accumulate)
        grad_W = gW.to(W_dec.dtype)
    if ctx.has_b and ctx.needs_input_grad[4]:
        grad_b = grad_out.sum(0).to(ctx.b_dtype)
    return None, None, grad_vals, grad_W, grad_b, None, None


_csr_decode_op.register_autograd(_backward, setup_context=_setup_context)


def csr_decode(
    row_ptr: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    accumulate: str = "sorted",
) -> torch.Tensor:
    """CSR latents (``row_ptr [n+1]``, ``cols [nnz]``, ``vals [nnz]``) -> ``[n, d]``.
    Differentiable in vals, W_dec and b_dec."""
    if row_ptr.dim() != 1 or cols.dim() != 1 or vals.shape != cols.shape:
        raise ValueError(
            f"csr_decode: row_ptr must be [n+1] and cols, vals both [nnz], got {tuple(row_ptr.shape)}, "
            f"{tuple(cols.shape)} and {tuple(vals.shape)}"
        )
    if W_dec.dim() != 2 or (b_dec is not None and b_dec.shape != (W_dec.shape[1],)):
        raise ValueError(
            f"csr_decode: W_dec must be [m, d] and b_dec [d], got {tuple(W_dec.shape)}"
            f"{'' if b_dec is None else ' and ' + str(tuple(b_dec.shape))}"
        )
    check_accumulate(accumulate)
    return _csr_decode_op(row_ptr, cols, vals, W_dec, b_dec, resolve_backend(W_dec, backend), accumulate)
