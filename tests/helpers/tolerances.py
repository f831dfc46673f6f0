"""Tolerances of the op tests against their references, in one place.

- ``DTYPE_TOL[dtype] = (atol, rtol)``: elementwise, for an op's float values against its
  reference, by the dtype of the op's inputs (Liger-Kernel's per-dtype tables). Both sides
  accumulate in float32, so only the summation order (and, for float16 inputs, the
  rounding the kernel sees) differs.
- ``GRAD_TOL[dtype]``: the same for gradients, which sum over the batch through a sparse
  backward in another order.
- ``RMS_RATIO[dtype]`` and :func:`assert_close` (flash-linear-attention's check):
  ``rms(got - ref) / rms(ref) < ratio``, for sums whose scale varies with the data (the
  capture statistics), where one elementwise atol cannot fit every element.

Measured on the Triton interpreter (2-core CPU, the SAE op tests in tests/ops/): the largest
``|got - ref| / (1 + |ref|)`` was 7e-7 for float32 values and 2.4e-5 for gradients; the largest
relative RMS 3.3e-7.
Not yet measured on a GPU (benchmarks/gpu_session.sh runs these tests there).
"""

from __future__ import annotations

import torch

DTYPE_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3)}
GRAD_TOL = {torch.float32: (2e-4, 1e-4)}
# float32 accumulation against a float64 reference; float64 against float64 rounded to float32.
RMS_RATIO = {torch.float32: 1e-5, torch.float64: 1e-6}


def rms_ratio(ref: torch.Tensor, got: torch.Tensor) -> float:
    """``rms(got - ref) / rms(ref)`` in float64 (0 when both are all zero)."""
    ref, got = ref.detach().cpu().double(), got.detach().cpu().double()
    err = (got - ref).flatten().square().mean().sqrt().item()
    base = ref.flatten().square().mean().sqrt().item()
    return err / base if base else err


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float) -> None:
    """Fail unless ``got`` has ``ref``'s shape and ``rms(got - ref) / rms(ref) < ratio``."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    r = rms_ratio(ref, got)
    diff = (got.detach().cpu().double() - ref.detach().cpu().double()).abs().max().item() if ref.numel() else 0.0
    assert r < ratio, f"{name}: relative rms error {r:.3g} >= {ratio:.3g} (max abs diff {diff:.3g})"


def assert_values_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype = torch.float32, msg=None) -> None:
    """Elementwise within ``DTYPE_TOL[dtype]``; ``got`` may live on another device."""
    atol, rtol = DTYPE_TOL[dtype]
    torch.testing.assert_close(got.detach().cpu(), ref.detach(), atol=atol, rtol=rtol, msg=msg)


def assert_grads_close(names, got, ref, dtype: torch.dtype = torch.float32) -> None:
    """The ``.grad`` of each leaf in ``got`` against the one in ``ref``, within ``GRAD_TOL[dtype]``."""
    atol, rtol = GRAD_TOL[dtype]
    for name, a, r in zip(names, got, ref, strict=True):
        torch.testing.assert_close(a.grad.cpu(), r.grad, atol=atol, rtol=rtol, msg=name)
