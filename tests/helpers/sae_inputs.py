"""Seeded inputs of the SAE op tests (tests/ops/): the same tensors for a given seed on every
device, built on the CPU; the tests move them to the ``device`` fixture.

- :func:`encoder_inputs`: ``x [n, d]``, ``W_enc [m, d]`` (scaled by ``1/sqrt(d)`` so the
  pre-activations are O(1)), ``b_enc [m]``, ``pre_bias [d]``; ``x`` and ``W_enc`` in ``dtype``,
  the biases float32.
- :func:`threshold_inputs`: the same plus ``W_dec [m, d]``, a reconstruction target ``[n, d]``
  and the generator, for the JumpReLU and Gated tests to draw their own parameters from.
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


def csr_dense(rp, c, v, m):
    return Latents(rp.cpu(), c.cpu(), v.detach().cpu(), m).dense()
