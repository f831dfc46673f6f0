"""Seeded inputs of the SAE op tests (tests/ops/): the same tensors for a given seed on every
device, built on the CPU; the tests move them to the ``device`` fixture.

- :func:`encoder_inputs`: ``x [n, d]``, ``W_enc [m, d]`` (scaled by ``1/sqrt(d)`` so the
  pre-activations are O(1)), ``b_enc [m]``, ``pre_bias [d]``; ``x`` and ``W_enc`` in ``dtype``,
  the biases float32.
- :func:`threshold_inputs`: the same plus ``W_dec [m, d]``, a reconstruction target ``[n, d]``
  and the generator, for the JumpReLU and Gated tests to draw their own parameters from.
- :func:`exact_encoder_inputs`: ``x``, ``W_enc``, ``b_enc`` whose pre-activations are a
  given ``[n, m]`` matrix exactly, in any summation order (the adversarial top-k tests set
  every value, ties included, and the kernels must see the same bits as the reference).
- :func:`csr_dense`: a CSR code as the dense ``[n, m]`` matrix, on the CPU.
"""

from __future__ import annotations

import torch

from actstore.sae import Latents


def encoder_inputs(n, d, m, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    W = torch.randn(m, d, generator=g) / d**0.5
    b = torch.randn(m, generator=g) * 0.1
    pb = torch.randn(d, generator=g) * 0.1
    return x.to(dtype), W.to(dtype), b, pb


def threshold_inputs(n, d, m, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype)
    W = (torch.randn(m, d, generator=g) / d**0.5).to(dtype)
    return (
        x,
        W,
        torch.randn(m, generator=g) * 0.1,
        torch.randn(d, generator=g) * 0.1,
        torch.randn(m, d, generator=g) / 7,
        torch.randn(n, d, generator=g),
        g,
    )


def exact_encoder_inputs(pre, seed, d=16):
    """float32 ``(x [n, d], W_enc [m, d], b_enc [m])`` with ``x @ W_enc.T + b_enc == pre``
    exactly, for ``pre`` ``[n, m]`` (n <= d) of multiples of 2^-14 below 8 in magnitude.

    ``x`` is ``2 I`` on its first n columns and random integers in {-2, -1, 1, 2} on the
    rest; ``W_enc``'s first n columns solve for ``pre``, the others and ``b_enc`` are random
    multiples of 2^-6 in [-1, 1]. Every product and partial sum is then a multiple of 2^-15
    below 2^7: exact in float32 (24 bits), so the tiled kernels, the chunked GEMM and the
    reference all compute ``pre`` to the bit."""
    n, m = pre.shape
    assert n <= d and (pre * 2**14).frac().eq(0).all() and pre.abs().max() < 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 3, (n, d), generator=g) * (torch.randint(0, 2, (n, d), generator=g) * 2 - 1)
    x[:, :n] = 2 * torch.eye(n, dtype=torch.int64)
    x = x.float()
    W = torch.randint(-64, 65, (m, d), generator=g).float() / 64
    b = torch.randint(-64, 65, (m,), generator=g).float() / 64
    rest = x[:, n:] @ W[:, n:].t()  # [n, m], exact
    W[:, :n] = ((pre - rest - b) / 2).t()
    assert torch.equal(x @ W.t() + b, pre)
    return x, W, b


def csr_dense(rp, c, v, m):
    return Latents(rp.cpu(), c.cpu(), v.detach().cpu(), m).dense()
