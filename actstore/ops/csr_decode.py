"""``csr_decode``: SAE decode of CSR latents, ``out[i] = sum_{e in row i} vals[e] W_dec[cols[e]] + b_dec``.

Forward: ``csr_matmul`` (the Triton kernel on CUDA: ``nnz * d`` reads, float32 sums, no
``[nnz, d]`` product). Backward, sparse:

- ``grad_vals[e] = grad_out[rows[e]] . W_dec[cols[e]]`` (``csr_gather_dot``: the dense
  product evaluated at the selected entries only);
- ``grad_W_dec = sparse^T @ grad_out`` (``csr_transpose_matmul``, sorted or atomic);
- ``grad_b_dec = grad_out.sum(0)``.

Registered as the custom op ``actstore::csr_decode`` with its autograd. The TopK form
``sparse_decode(values [n, k], indices [n, k], ...)`` lives in ``sparse_decode.py``.

Candidates (``backend``): ``triton`` (the kernels above), ``reference`` (the oracles),
``embedding_bag`` and ``dense`` (``actstore.ops.torch_candidates``: ``F.embedding_bag`` with
torch's backward, or the code scattered to ``[n, m]`` and one GEMM). With ``backend=None``
(:func:`decode_choice`): ``ACTSTORE_SPARSE_DECODE=<name>`` forces one on any device; on CUDA
tensors with Triton the measuring dispatch (``ops/_autotune.py``) times triton, embedding_bag
and dense (forward, plus backward when a gradient is wanted) on the first call per shape
class and caches the fastest; otherwise (the CPU, ``ACTSTORE_BACKEND``, tracing) the density
cut decides: ``dense`` above ``DENSE_DECODE_ABOVE`` of the ``[n, m]`` entries, else the
default backend.
Shapes: row_ptr ``[n+1]``, cols ``[nnz]`` int64, vals ``[nnz]``, W_dec ``[m, d]``, b_dec
``[d]`` -> ``[n, d]`` float32 (float64 for float64 vals).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

from .._numerics import acc_dtype, rows_of
from . import _autotune
from ._dispatch import check_accumulate, resolve_backend
from .csr_gather_dot import csr_gather_dot
from .csr_matmul import csr_matmul
from .csr_transpose_matmul import csr_transpose_matmul
from .torch_candidates import decode_dense, decode_embedding_bag

# Where no timing happens (the CPU, ACTSTORE_BACKEND, torch.compile tracing), the decode is
# sparse up to this density (nnz / (n*m)) and one dense GEMM above it. Measured on this 2-core
# CPU (benchmarks/bench_sae_decode_crossover.py, n=2048 d=384 m=3072, forward + backward,
# interleaved with the order rotating each round, two runs on an idle machine): sparse
# 0.97-1.28x the dense GEMM up to 2% density (within the noise from 1%), 0.88-0.89x at 5%,
# 0.75x at 10%, 0.50-0.54x at 20%; so the cut sits between 1% and 5%. (An earlier, noisier
# run had put it at 10%.) On CUDA the measuring dispatch times the candidates instead.
DENSE_DECODE_ABOVE = 0.03
BACKENDS = ("triton", "reference", "embedding_bag", "dense")
TIMED = ("triton", "embedding_bag", "dense")
DENSE_TIMED_MAX = 1 << 28  # n*m elements (1 GiB of float32) up to which the dense candidate is timed


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
    if backend is None:
        backend = decode_choice(row_ptr, cols, vals, W_dec, b_dec, accumulate=accumulate)
    elif backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use {', '.join(repr(c) for c in BACKENDS)}")
    return _decode_with(backend, row_ptr, cols, vals, W_dec, b_dec, accumulate)


def _decode_with(backend, row_ptr, cols, vals, W_dec, b_dec, accumulate):
    if backend == "embedding_bag":
        return decode_embedding_bag(row_ptr, cols, vals, W_dec, b_dec)
    if backend == "dense":
        return decode_dense(row_ptr, cols, vals, W_dec, b_dec)
    return _csr_decode_op(row_ptr, cols, vals, W_dec, b_dec, backend, accumulate)


def decode_choice(
    row_ptr: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    accumulate: str = "sorted",
    measure: bool | None = None,
    timer: Callable[[], float] | None = None,
) -> str:
    """The backend :func:`csr_decode` runs with ``backend=None`` (see the module docstring).
    ``measure`` (default: CUDA tensors with Triton, no ``ACTSTORE_BACKEND``, not tracing) and
    ``timer`` let the tests drive the timing on a CPU."""
    forced = _autotune.forced("sparse_decode", BACKENDS)
    if forced is not None:
        return forced
    n, m, nnz = row_ptr.numel() - 1, W_dec.shape[0], cols.numel()
    default = resolve_backend(W_dec, None)
    if measure is None:
        measure = (
            default == "triton"
            and W_dec.is_cuda
            and not os.environ.get("ACTSTORE_BACKEND", "").strip()
            and not torch.compiler.is_compiling()
        )
    if not measure or nnz == 0:
        # Under torch.compile nnz may be data-dependent (a threshold encoder's output): then the
        # sparse default, without a guard on it.
        return "dense" if guard_or_false(nnz > DENSE_DECODE_ABOVE * n * m) else default
    train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (vals, W_dec, b_dec))
    names = [c for c in TIMED if c != "dense" or n * m <= DENSE_TIMED_MAX]
    key = f"{vals.dtype}|{W_dec.dtype}|{'fwd+bwd' if train else 'fwd'}|" + _autotune.shape_class(
        n=n, d=W_dec.shape[1], m=m, k=max(1, nnz // max(n, 1))
    )
    leaves = [t for t in (vals, W_dec, b_dec) if t is not None and t.requires_grad] if train else []

    def run(name):
        def fn():
            with torch.enable_grad() if train else torch.no_grad():
                out = _decode_with(name, row_ptr, cols, vals, W_dec, b_dec, accumulate)
                if leaves:  # the backward too: gradients only, nothing lands in .grad
                    torch.autograd.grad(out, leaves, torch.ones_like(out))

        return fn

    return _autotune.choose(
        "sparse_decode",
        _autotune.device_name(W_dec),
        key,
        {name: run(name) for name in names},
        timer=timer or time.perf_counter,
        sync=torch.cuda.synchronize if W_dec.is_cuda else (lambda: None),
    )
