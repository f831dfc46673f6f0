"""``actstore bench capture``: capture tokens/s against the forward-only ceiling.

The model is the user's (``model``: a local HF model directory, ``hooks`` its module
paths) or a built-in synthetic GPT-2 from a config (``layers`` blocks of width ``d``,
random weights; the hook is the last block, so the full forward is the exact ceiling).
Tokens: ``seqs`` random windows of ``context`` ids. Variants, interleaved: ``forward``
(``model(input_ids)`` over the same batches, nothing kept) and ``capture``
(``actstore.capture`` of the hooks into a fresh store, ``dtype``/``codec`` as given).
Checked first: the stored rows of the first hook equal the forward's output at that
module, cast to the stored dtype.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..api import open as open_store
from ..capture import capture
from .harness import compare

_STORED = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _synthetic(layers: int, d: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2Model  # deferred: seconds to import

    cfg = GPT2Config(
        n_layer=layers,
        n_embd=d,
        n_head=max(1, d // 64),
        vocab_size=8192,
        n_positions=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return GPT2Model(cfg).eval(), f"h.{layers - 1}", cfg.vocab_size


def _user_model(path: str, hooks: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()
    return model, hooks, model.config.vocab_size


def run(
    model: str | None = None,
    hooks: str | None = None,
    layers: int = 4,
    d: int = 512,
    seqs: int = 64,
    context: int = 128,
    batch_size: int = 8,
    dtype: str = "bf16",
    codec: str = "zstd",
    device="cpu",
    repeats: int = 5,
    progress=None,
    **_,
) -> dict:
    dev = torch.device(device)
    if dtype not in _STORED:
        raise ValueError(f"capture bench dtype {dtype!r}: use bf16, fp16 or fp32 (lossless for the check)")
    net, hooks, vocab = _user_model(model, hooks) if model else _synthetic(layers, d)
    net = net.to(dev)
    first = hooks.split(",")[0]
    module = net.get_submodule(first)
    ids = np.random.default_rng(0).integers(0, vocab, size=(seqs, context)).astype(np.int64)
    work = Path(tempfile.mkdtemp(prefix="actstore-bench-capture-"))
    out = work / "s"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def forward(keep=None):
        with torch.inference_mode():
            for lo in range(0, seqs, batch_size):
                net(input_ids=torch.from_numpy(ids[lo : lo + batch_size]).to(dev))
        sync()

    def forward_rows():
        kept = []

        def hook(_m, _i, o):
            h = o[0] if isinstance(o, tuple) else o
            kept.append(h.reshape(-1, h.shape[-1]).to(_STORED[dtype]).float().cpu())

        handle = module.register_forward_hook(hook)
        try:
            forward()
        finally:
            handle.remove()
        return torch.cat(kept)

    def run_capture():
        capture(
            net,
            hooks,
            ids,
            str(out),
            context=context,
            batch_size=batch_size,
            dtype=dtype,
            codec=codec,
            bos="none",
            eos="none",
            progress=False,
            device=dev,
        )
        sync()

    def captured_rows():
        shutil.rmtree(out, ignore_errors=True)
        run_capture()
        with open_store(out) as st:
            return st.read(first)

    try:
        return compare(
            "capture",
            {"forward": forward, "capture": run_capture},
            work=ids.size / 1e3,
            unit="ktokens/s",
            ratios={"capture / forward ceiling": ("capture", "forward")},
            outputs={"forward": forward_rows, "capture": captured_rows},
            setup={"capture": lambda: shutil.rmtree(out, ignore_errors=True)},
            repeats=repeats,
            params={
                "model": model or f"synthetic GPT-2, {layers} layers, d={d}",
                "hooks": hooks,
                "tokens": int(ids.size),
                "context": context,
                "batch_size": batch_size,
                "dtype": dtype,
                "codec": codec,
                "device": str(dev),
            },
            progress=progress,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
