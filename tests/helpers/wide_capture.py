"""Subprocess for the wide-model memory test: capture TOKENS tokens of a d=4096, 2-layer
Llama built from a config (GQA with one KV head and a narrow MLP keep the CPU time small;
the two hooks, layer 0's output and layer 1's query projection, are 4096 wide) into OUT,
and print JSON with the peak RSS (bytes), the RSS after the model was built and ran once,
and their difference in MB.

    python wide_capture.py OUT TOKENS [CHUNKS_PER_SHARD]

Peak RSS is the kernel's high-water mark ``VmHWM``, reset (``/proc/self/clear_refs``) after the
model is built and has run one batch, so it is capture's peak, not the model build's. The
store's shards hold CHUNKS_PER_SHARD chunks of ~2 MiB (default 4: a 1024-row shard of bf16
d=4096 per hook, 8 MiB), since the writer buffers one whole shard per hook before it writes it.
"""

import json
import resource
import sys

import numpy as np
import torch

import actstore


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main() -> None:
    out, tokens = sys.argv[1], int(sys.argv[2])
    chunks_per_shard = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=1,
        vocab_size=512,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = np.random.default_rng(0).integers(3, 512, size=(tokens // 128, 128)).astype(np.int64)
    with torch.inference_mode():
        model(torch.from_numpy(ids[:4]))  # warm: the allocator's first batch is not capture's doing
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    base = rss_bytes()
    s = actstore.capture(
        model,
        ["model.layers.0", "model.layers.1.self_attn.q_proj"],  # both 4096 wide; the rest of layer 1 never runs
        [list(r) for r in ids],
        out,
        context=128,
        batch_size=4,
        dtype="bf16",
        bos="none",
        eos="none",
        packing="truncate",
        progress=False,
        chunks_per_shard=chunks_per_shard,
    )
    peak = peak_bytes()
    rows = actstore.open(out).rows
    print(
        json.dumps(
            {
                "tokens": tokens,
                "rows": rows,
                "peak_rss": peak,
                "base_rss": base,
                "capture_mb": (peak - base) / 2**20,
                "tokens_per_s": s["tokens_per_s"],
                "chunks_per_shard": chunks_per_shard,
            }
        )
    )


if __name__ == "__main__":
    main()
