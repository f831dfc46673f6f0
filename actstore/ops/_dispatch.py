"""Backend choice shared by every op.

``resolve_backend`` picks, when ``backend`` is None: the Triton kernels (``actstore.kernels``)
for CUDA tensors when Triton imports; for CPU tensors the op's native path where it has
one (``native=True``: ``capture_pack``, on ``actstore._C``), else the PyTorch reference
(``actstore.reference``). A given ``backend`` is checked and kept: ``"triton"`` on CPU
tensors needs TRITON_INTERPRET=1 (how the CPU tests run the kernels), ``"reference"``
forces the oracle.
"""

from __future__ import annotations

import functools

import torch

BACKENDS = ("triton", "reference")
NATIVE = "native"
ACCUMULATE = ("sorted", "atomic")


@functools.cache
def triton_available() -> bool:
    """Whether ``import triton`` succeeds (asked once per process)."""
    try:
        import triton  # noqa: F401  (optional dependency: the CPU paths run without it)
    except Exception:
        return False
    return True


def resolve_backend(t: torch.Tensor, backend: str | None, *, native: bool = False) -> str:
    """The backend for an op on tensor ``t``: ``"triton"``, ``"reference"`` or, for ops with
    a native CPU path (``native=True``), ``"native"``."""
    choices = BACKENDS + ((NATIVE,) if native else ())
    if backend is None:
        if t.is_cuda and triton_available():
            return "triton"
        return NATIVE if native and not t.is_cuda else "reference"
    if backend not in choices:
        raise ValueError(f"unknown backend {backend!r}: use {', '.join(repr(c) for c in choices)}")
    return backend


def check_accumulate(accumulate: str) -> str:
    if accumulate not in ACCUMULATE:
        raise ValueError(f"unknown accumulate {accumulate!r}: use 'sorted' (deterministic) or 'atomic'")
    return accumulate
