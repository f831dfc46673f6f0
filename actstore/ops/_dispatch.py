"""Backend choice shared by the SAE ops: the Triton kernels for CUDA tensors, the PyTorch
references otherwise; ``backend="triton"`` forces the kernels (CPU tensors then need
TRITON_INTERPRET=1), ``"reference"`` the references."""

from __future__ import annotations

import torch

from .capture_pack import triton_available

BACKENDS = ("triton", "reference")
ACCUMULATE = ("sorted", "atomic")


def resolve_backend(t: torch.Tensor, backend: str | None) -> str:
    if backend is None:
        return "triton" if t.is_cuda and triton_available() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use 'triton' or 'reference'")
    return backend


def check_accumulate(accumulate: str) -> str:
    if accumulate not in ACCUMULATE:
        raise ValueError(f"unknown accumulate {accumulate!r}: use 'sorted' (deterministic) or 'atomic'")
    return accumulate


def value_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype of sparse latent values and of fp32-accumulated products: float64 for
    float64 inputs (gradcheck), float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
