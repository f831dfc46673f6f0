"""Pure PyTorch reference of the JumpReLU activation and its straight-through
pseudo-gradients (Rajamanoharan et al. 2024, "Jumping Ahead"), the oracle of
``actstore.ops.jumprelu``.

With ``theta [m] > 0`` the per-latent threshold and ``K(u) = 1[|u| < 1/2]`` the rectangle
kernel of bandwidth ``eps``:

- ``jumprelu(pre, theta) = pre * H(pre - theta)``; ``d/dpre = H(pre - theta)``,
  ``d/dtheta = -(theta / eps) K((pre - theta) / eps)``;
- ``step(pre, theta) = H(pre - theta)`` (the L0 count); ``d/dpre = 0``,
  ``d/dtheta = -(1 / eps) K((pre - theta) / eps)``.

Shapes: pre ``[n, m]``, theta ``[m]``; the threshold gradient is summed over rows.
"""

from __future__ import annotations

import torch


def _rect(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    return (((pre - theta) / eps).abs() < 0.5).to(pre.dtype)


class JumpReLUReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        grad_pre = g * (pre > theta).to(g.dtype)
        grad_theta = (-(theta / ctx.eps) * _rect(pre, theta, ctx.eps) * g).sum(0)
        return grad_pre, grad_theta, None


class StepReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        grad_theta = (-(1.0 / ctx.eps) * _rect(pre, theta, ctx.eps) * g).sum(0)
        return torch.zeros_like(pre), grad_theta, None


def jumprelu_reference(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``[n, m]`` JumpReLU activations with the straight-through threshold gradient."""
    return JumpReLUReference.apply(pre, theta, eps)


def step_reference(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``[n, m]`` 0/1 indicators ``pre > theta`` with the straight-through threshold gradient
    (``.sum(1).mean()`` is the differentiable L0)."""
    return StepReference.apply(pre, theta, eps)
