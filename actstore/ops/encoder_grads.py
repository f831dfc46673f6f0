"""The sparse backward of an SAE encoder, shared by ``topk_encode``, ``batch_topk_encode``,
``jumprelu_encode`` and ``gated_encode``: gradients through the selected latents only.

With the selected entries in CSR form (``row_ptr``, ``rows``, ``cols`` int64) and ``g``
``[nnz]`` the gradient of their pre-activations (zero where ReLU was inactive):

- ``grad_x[i] = sum_{e in row i} g[e] W_enc[cols[e]]`` (``csr_matmul``);
- ``grad_pre_bias = -grad_x.sum(0)``;
- ``grad_W_enc[c] = sum_{e: cols[e]=c} g[e] (x[rows[e]] - pre_bias)`` and
  ``grad_b_enc[c] = sum g[e]`` (one ``csr_transpose_matmul``).

``O(nnz * d)`` work, no ``[n, m]`` tensor, on the ``triton`` and ``reference`` backends.
A third candidate, ``dense`` (``actstore.ops.torch_candidates.encoder_grads_dense``), scatters
``g`` into ``[n, m]`` and runs GEMMs: faster once the code is dense enough.

Which one runs (:func:`grads_choice`): ``ACTSTORE_ENCODER_GRADS=triton|dense|reference``
forces one on any device; when the forward ran the Triton path on CUDA (``backend`` is
``triton``), the measuring dispatch (``ops/_autotune.py``) times the candidates on the first
backward per shape class and caches the fastest; otherwise ``backend`` as given.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from . import _autotune
from .csr_matmul import csr_matmul
from .csr_transpose_matmul import csr_transpose_matmul
from .torch_candidates import encoder_grads_dense

CANDIDATES = ("triton", "dense", "reference")
DENSE_TIMED_MAX = 1 << 28  # n*m elements (1 GiB of float32) up to which dense and reference are timed


def encoder_grads(
    needs: tuple[bool, bool, bool, bool],
    x: torch.Tensor,
    W_enc: torch.Tensor,
    pre_bias: torch.Tensor | None,
    row_ptr: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    g: torch.Tensor,
    backend: str,
    accumulate: str,
):
    """``needs`` = which of (x, W_enc, b_enc, pre_bias) want a gradient. Returns their
    gradients (None where not needed), each in its input's dtype (grad_b_enc float32)."""
    choice = grads_choice(needs, x, W_enc, pre_bias, row_ptr, rows, cols, g, backend, accumulate)
    return _grads_with(choice, needs, x, W_enc, pre_bias, row_ptr, rows, cols, g, accumulate)


def _grads_with(backend, needs, x, W_enc, pre_bias, row_ptr, rows, cols, g, accumulate):
    if backend == "dense":
        return encoder_grads_dense(needs, x, W_enc, pre_bias, rows, cols, g)
    grad_x = grad_W = grad_b = grad_pb = None
    if needs[0] or needs[3]:
        gx = csr_matmul(row_ptr, cols, g, W_enc, backend)
        grad_x = gx.to(x.dtype) if needs[0] else None
        grad_pb = (-gx.sum(0)).to(pre_bias.dtype) if needs[3] and pre_bias is not None else None
    if needs[1] or needs[2]:
        gW, gb = csr_transpose_matmul(rows, cols, g, x, W_enc.shape[0], pre_bias, backend, accumulate)
        grad_W = gW.to(W_enc.dtype) if needs[1] else None
        grad_b = gb if needs[2] else None
    return grad_x, grad_W, grad_b, grad_pb


def grads_choice(
    needs,
    x,
    W_enc,
    pre_bias,
    row_ptr,
    rows,
    cols,
    g,
    backend: str,
    accumulate: str,
    *,
    measure: bool | None = None,
    timer: Callable[[], float] | None = None,
) -> str:
    """The candidate :func:`encoder_grads` runs (see the module docstring). ``measure``
    (default: ``backend`` triton on CUDA tensors, no ``ACTSTORE_BACKEND``, not tracing) and
    ``timer`` let the tests drive the timing on a CPU."""
    forced = _autotune.forced("encoder_grads", CANDIDATES)
    if forced is not None:
        return forced
    if measure is None:
        measure = (
            backend == "triton"
            and x.is_cuda
            and not os.environ.get("ACTSTORE_BACKEND", "").strip()
            and not torch.compiler.is_compiling()
        )
    n, d, m, nnz = x.shape[0], x.shape[1], W_enc.shape[0], cols.numel()
    if not measure or nnz == 0:
        return backend
    names = ["triton"] + (["dense", "reference"] if n * m <= DENSE_TIMED_MAX else [])
    key = f"{x.dtype}|{W_enc.dtype}|needs={''.join('1' if b else '0' for b in needs)}|" + _autotune.shape_class(
        n=n, d=d, m=m, k=max(1, nnz // max(n, 1))
    )

    def run(name):
        return lambda: _grads_with(name, needs, x, W_enc, pre_bias, row_ptr, rows, cols, g, accumulate)

    with torch.no_grad():
        return _autotune.choose(
            "encoder_grads",
            _autotune.device_name(x),
            key,
            {name: run(name) for name in names},
            timer=timer or time.perf_counter,
            sync=torch.cuda.synchronize if x.is_cuda else (lambda: None),
        )
