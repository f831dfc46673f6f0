"""Dispatching ops: Triton kernels (``actstore.kernels``) for CUDA tensors, the pure
PyTorch references (``actstore.reference``) otherwise. One op per file."""

from .capture_pack import capture_pack
from .dequant_normalize import dequant_normalize
from .sparse_decode import sparse_decode
from .topk_encode import topk_encode

__all__ = ["capture_pack", "dequant_normalize", "sparse_decode", "topk_encode"]
