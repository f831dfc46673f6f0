"""Dispatching ops: Triton kernels (``actstore.kernels``) for CUDA tensors, the pure
PyTorch references (``actstore.reference``) otherwise. One op per file."""

from .capture_pack import capture_pack
from .dequant_normalize import dequant_normalize

__all__ = ["capture_pack", "dequant_normalize"]
