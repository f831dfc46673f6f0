"""Stores and tiny models for the integration tests (tests/integrations/).

``rows_store``: two hooks, two segments, small chunks, token columns with every 16th row
flagged BOS; returns the fp32 activations it wrote so tests compare against them exactly.
``sparse_store``: one hook whose rows are sparse sums of fixed directions (something an SAE
can learn in a few dozen steps), for the trainer integrations.
``tiny_gpt2``: a GPT-2 built from a config with a word-level tokenizer (no downloads).
"""

from __future__ import annotations

import numpy as np
import torch

import actstore
from actstore.store.format import FLAG_BOS

HOOKS = {"h.a": 24, "h.b": 40}


def rows_store(path, n0=700, n1=500, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    full = {h: torch.randn(n0 + n1, d, generator=g) * 2 + 0.5 for h, d in HOOKS.items()}
    tok = torch.arange(n0 + n1, dtype=torch.int64) % 97
    flags = torch.zeros(n0 + n1, dtype=torch.uint8)
    flags[::16] = FLAG_BOS
    for seg, (lo, hi) in (("rank00000", (0, n0)), ("rank00001", (n0, n0 + n1))):
        w = actstore.create(path, HOOKS, segment=seg, dtype="fp32", chunk_bytes=2048, chunks_per_shard=4)
        w.append(
            {h: x[lo:hi] for h, x in full.items()},
            tokens=tok[lo:hi],
            doc=torch.arange(lo, hi) // 50,
            pos=torch.arange(lo, hi) % 50,
            flags=flags[lo:hi],
        )
        w.close()
    return {**full, "token": tok, "flags": flags}


def sparse_acts(n, d, m=48, k=3, seed=0) -> torch.Tensor:
    """``n`` rows, each a sum of ``k`` of ``m`` fixed unit directions with positive weights, plus noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)])
    w = torch.rand(n, k, generator=g) * 3 + 0.5
    return (w[..., None] * dirs[idx]).sum(1) + 0.02 * torch.randn(n, d, generator=g) + 1.0


def sparse_store(path, hook="blocks.1.hook_resid_post", n=8192, d=32, seed=0) -> torch.Tensor:
    x = sparse_acts(n, d, seed=seed) * 8  # mean norm far from sqrt(d), as in real residual streams
    w = actstore.create(path, {hook: d}, segment="rank00000", dtype="bf16", chunk_bytes=4096)
    w.append({hook: x}, tokens=torch.arange(n) % 97)
    w.close()
    return x


def word_tokenizer(vocab_size=97):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    t.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="w1", bos_token="w2", pad_token="w0")


def tiny_gpt2(n_layer=3, d=32, vocab=97, dtype=torch.float32, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=d, n_head=2, vocab_size=vocab, n_positions=64, bos_token_id=2, eos_token_id=1
    )
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def word_docs(n_docs=12, seed=0, lo=10, hi=40, vocab=97) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi, size=n_docs)
    return [" ".join(f"w{int(t)}" for t in rng.integers(3, vocab, size=int(n))) for n in lengths]
