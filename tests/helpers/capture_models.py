"""Tiny models and data for the capture tests and their subprocess helpers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB = 97


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h):
        return h + self.mlp(h)


class TinyLM(nn.Module):
    """Embedding + residual MLP blocks ``layers.<i>``; called as ``model(ids)``.

    ``nan_token``: rows whose input token is this id become NaN after ``layers.<nan_layer>``,
    to test how capture treats non-finite activations.
    """

    def __init__(self, d=32, n_layers=4, seed=0, nan_token=None, nan_layer=1, vocab=VOCAB):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n_layers))
        self.head = nn.Linear(d, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.nan_token, self.nan_layer = nan_token, nan_layer
        self.ran: list[str] = []  # which layers ran in the last forward

    def forward(self, ids):
        self.ran = []
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            self.ran.append(f"layers.{i}")
            if self.nan_token is not None and i == self.nan_layer:
                h = torch.where((ids == self.nan_token)[..., None], torch.full_like(h, float("nan")), h)
        return self.head(h)


def token_docs(n_docs=40, seed=0, lo=3, hi=60) -> list[np.ndarray]:
    """Documents of random token ids (1..VOCAB-1) with random lengths."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(lo, hi))).astype(np.int64) for _ in range(n_docs)]


def token_array(n_docs=40, seed=0, length=50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, VOCAB, size=(n_docs, length)).astype(np.int64)


def make_tiny():
    """Factory for ``--model python:capture_models:make_tiny``."""
    return TinyLM()
