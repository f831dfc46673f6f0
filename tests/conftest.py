"""Test-wide set-up. Without a GPU, Triton kernels run on CPU tensors in Triton's
interpreter; it must be switched on before any kernel module is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
