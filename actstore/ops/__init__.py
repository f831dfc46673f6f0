"""Dispatching ops: Triton kernels (``actstore.kernels``) for CUDA tensors, the pure
PyTorch references (``actstore.reference``) otherwise. One op per file.

The SAE ops are ``torch.library`` custom ops (``actstore::*``) with their own autograd,
so ``torch.compile(fullgraph=True)`` traces through them."""

from .batch_topk_encode import batch_topk_encode
from .capture_pack import capture_pack
from .csr_decode import csr_decode
from .dequant_normalize import dequant_normalize
from .gated_encode import gated_encode
from .jumprelu_encode import jumprelu_encode
from .kth_largest import kth_largest
from .sparse_decode import sparse_decode
from .topk_encode import topk_encode

__all__ = [
    "batch_topk_encode",
    "capture_pack",
    "csr_decode",
    "dequant_normalize",
    "gated_encode",
    "jumprelu_encode",
    "kth_largest",
    "sparse_decode",
    "topk_encode",
]
