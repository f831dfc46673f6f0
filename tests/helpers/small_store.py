"""A small committed store for the CLI and docs tests: two hooks of width 64, ``n`` random rows
in one segment with small chunks (so it has several shards), and a provenance entry."""

from __future__ import annotations

import torch

import actstore


def two_hook_store(path, n=3000):
    w = actstore.create(
        path,
        {"encoder.layer.3": 64, "encoder.layer.5": 64},
        segment="rank00000",
        chunk_bytes=4096,
        provenance={"model": "tiny"},
    )
    acts = {h: torch.randn(n, 64) for h in ("encoder.layer.3", "encoder.layer.5")}
    w.append(acts, tokens=torch.arange(n))
    w.close()
    return acts
