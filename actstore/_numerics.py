"""Numerics shared by the SAE ops (``actstore.ops``), their references (``actstore.reference``)
and the SAE classes: the accumulation dtype, the check of ``k``, and the encoder
pre-activations.

A leaf module (it imports torch only): ``reference/`` uses it without importing ``ops/``,
whose package imports the references, so the oracles share no more code with the ops
they judge than these three definitions.
"""

from __future__ import annotations

import torch


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype products accumulate in, and of sparse latent values: float64 for float64
    inputs (gradcheck), float32 for every other float dtype."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_k(k: int, m: int, name: str = "k") -> None:
    """``k`` latents per row out of ``m``: a positive integer no larger than ``m``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    if k > m:
        raise ValueError(f"{name}={k} is larger than the number of latents m={m}: use {name} <= {m}")


def pre_activations(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, pre_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x - pre_bias) @ W_enc.T + b_enc`` -> ``[n, m]`` in the accumulation dtype, for x
    ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]``, pre_bias ``[d]``."""
    acc = acc_dtype(x)
    xc = x.to(acc)
    if pre_bias is not None:
        xc = xc - pre_bias.to(acc)
    return xc @ W_enc.to(acc).t() + b_enc.to(acc)
