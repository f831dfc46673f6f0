"""Backend choice shared by every op.

``resolve_backend`` picks, when ``backend`` is None: the Triton kernels (``actstore.kernels``)
for CUDA tensors when Triton imports; for CPU tensors the op's native path where it has
one (``native=True``: ``capture_pack``, on ``actstore._C``), else the PyTorch reference
(``actstore.reference``). A given ``backend`` is checked and kept: ``"triton"`` on CPU
tensors needs TRITON_INTERPRET=1 (how the CPU tests run the kernels), ``"reference"``
forces the oracle. ``ACTSTORE_BACKEND=triton|reference`` forces one for every op called
without ``backend=`` (the SAE classes, the trainer), e.g. to run an SAE's Triton path in
the interpreter or to rule the kernels out on a GPU. On a CUDA tensor without a working
Triton, the first op warns once that it takes the (slower) references.
"""

from __future__ import annotations

import functools
import os
import warnings

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


@functools.cache
def _warn_no_triton() -> None:
    warnings.warn(
        "actstore: Triton does not import, so the ops on CUDA tensors take the PyTorch references "
        "(exact, slower, with [n, m] buffers): pip install triton",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_backend(t: torch.Tensor, backend: str | None, *, native: bool = False) -> str:
    """The backend for an op on tensor ``t``: ``"triton"``, ``"reference"`` or, for ops with
    a native CPU path (``native=True``), ``"native"``."""
    choices = BACKENDS + ((NATIVE,) if native else ())
    if backend is None:
        forced = os.environ.get("ACTSTORE_BACKEND", "").strip()
        if forced:
            if forced not in BACKENDS:
                raise ValueError(f"ACTSTORE_BACKEND={forced!r} is not a backend: use triton or reference, or unset it")
            return forced
        if t.is_cuda:
            if triton_available():
                return "triton"
            _warn_no_triton()
        return NATIVE if native and not t.is_cuda else "reference"
    if backend not in choices:
        raise ValueError(f"unknown backend {backend!r}: use {', '.join(repr(c) for c in choices)}")
    return backend


def check_accumulate(accumulate: str) -> str:
    if accumulate not in ACCUMULATE:
        raise ValueError(f"unknown accumulate {accumulate!r}: use 'sorted' (deterministic) or 'atomic'")
    return accumulate
