"""``actstore.capture``: one forward per batch with every hook, into this rank's segment.

The run is a pure function of (model, hooks, data, options): batches are fixed by the
data order, rank ``r`` of ``W`` takes global batches ``r, r+W, ...`` and writes segment
``rank{r:05d}``. Each commit records how many of this rank's batches its rows cover, so a
re-run of the same command skips exactly those and goes on; options that would change
the batches (model, hooks, data, context, batch size, policy, budget, world size) must
match the store's record, or the run refuses to start.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .._dist import group, local_device, rank_world
from ..api import create
from ..models import HookRecorder, LoadedModel, prepare_model, resolve_hooks
from ..models.norms import detect_norms
from ..store.errors import CaptureError
from ..store.format import DTYPES, FLAG_PAD, parse_flags
from .config import CaptureConfig
from .data import describe, iter_documents, source_table
from .pipeline import Sink
from .plan import Policy, default_policy, iter_batches, iter_windows

# Options that fix which rows land where; a resumed run must repeat them exactly.
_RESUME_KEYS = (
    "model",
    "hooks",
    "data",
    "context",
    "batch_size",
    "packing",
    "bos",
    "eos",
    "drop",
    "tokens",
    "world_size",
    "text_column",
    "nonfinite",
)

# Model dtypes: the unscaled storage dtypes, by name or logical alias (bf16 or bfloat16, ...).
_DTYPES = {n: d.torch_dtype for d in DTYPES.values() if not d.scaled for n in (d.name, d.logical)}


def capture(model, hooks, data, out, config: CaptureConfig | None = None, *, tokenizer=None, **overrides) -> dict:
    """Capture activations of ``model`` at ``hooks`` over ``data`` into the store ``out``.

    model: a local HF model directory, ``python:module:function``, or an nn.Module (HF,
        TransformerLens HookedTransformer, or any module called as ``model(ids)``).
    hooks: module paths (``*`` wildcards, ``:input`` suffix) or TransformerLens hook names.
    data: see :mod:`actstore.capture.data`; ``{name: data}`` names each source, and the
        store's provenance then holds the document range of each (``Store.sources``).
        tokenizer: for text data (a path or factory model brings its own).
    config: a :class:`CaptureConfig`; ``overrides`` are its fields as keywords, applied on
        top (``tokens=10**6, context=128, dtype="bf16"``...). The main ones: tokens (stop
        after this many stored tokens, all ranks together; None takes all data), context
        (window length), dtype (bf16, fp16, fp32, fp8, int8, q16), codec (zstd, lz4, none),
        packing (pack or truncate), bos/eos (see :class:`actstore.capture.plan.Policy`;
        auto reads the tokenizer), drop (flags to leave out: "bos", "special"; pad never
        is stored), nonfinite (drop: rows with NaN/inf in any hook are left out and
        counted; or error), model_dtype (cast the model to fp32/bf16/fp16; an HF folder is
        loaded in it), device_map (an HF folder spread over devices by accelerate; a model
        object already placed with a device_map is used where it is).

    Returns a summary dict (rows stored this run, committed rows, seconds, tokens/s,
    bytes written, rows dropped for NaN/inf, where it resumed from). Ctrl-C commits what
    is complete and raises KeyboardInterrupt; the same call then resumes.
    """
    cfg = (config or CaptureConfig()).replace(**overrides)
    return _run_capture(model, hooks, data, out, cfg, tokenizer=tokenizer)


@dataclass
class _Job:
    """What one run works with, set up by ``_run_capture`` and consumed by ``_run``."""

    cfg: CaptureConfig
    cm: LoadedModel
    recorder: HookRecorder
    record: dict  # the options stored in the provenance, checked on resume
    policy: Policy
    batches: object  # iterator of this rank's plan.Batch
    rank: int
    world: int
    dev: torch.device
    t_start: float


def _run_capture(model, hooks, data, out, cfg: CaptureConfig, *, tokenizer=None, after_batch=None) -> dict:
    """capture() with a test seam: ``after_batch(n)`` is called after the n-th batch of this
    run has gone to the pipeline (tests raise KeyboardInterrupt or pause a child there)."""
    t_start = time.perf_counter()
    dev = local_device(cfg.device)
    rank, world = rank_world(cfg.rank, cfg.world_size)
    mdt = _DTYPES.get(cfg.model_dtype) if cfg.model_dtype else None
    if cfg.model_dtype and mdt is None:
        raise CaptureError(f"model dtype {cfg.model_dtype!r}: use fp32, bf16 or fp16")
    cm = prepare_model(model, tokenizer, device=dev, dtype=mdt, device_map=cfg.device_map)
    points = resolve_hooks(cm.model, hooks)
    if cm.max_context is not None and cfg.context > cm.max_context:
        raise CaptureError(
            f"context {cfg.context} is longer than the model allows ({cm.max_context} positions); "
            f"use --context {cm.max_context} or less"
        )
    policy = default_policy(cm.tokenizer, cfg.context, cfg.packing, cfg.bos, cfg.eos)
    drop_bits = parse_flags(cfg.drop, "drop", CaptureError)
    recorder = HookRecorder(cm.model, points, stop_early=cfg.stop_early)
    try:
        probe = _probe_ids(policy, dev)
        widths = _probe_widths(cm, recorder, probe)
        # Where each hook sits relative to a norm (post/pre, the norm, its gain): one more forward
        # of the probe's few tokens, stopped once every hook is settled; unknown on any failure.
        norms = detect_norms(cm.model, points, lambda: cm.forward(probe, torch.ones_like(probe)))
        record = {
            "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else f"<{cm.kind}:{cm.name}>",
            "hooks": [p.name for p in points],
            "data": describe(data),
            "context": cfg.context,
            "batch_size": cfg.batch_size,
            "packing": policy.packing,
            "bos": policy.bos,
            "eos": policy.eos,
            "drop": drop_bits,
            "tokens": cfg.tokens,
            "world_size": world,
            "text_column": cfg.text_column,
            "nonfinite": cfg.nonfinite,
            "kind": cm.kind,
        }
        prov = {
            "capture": record,
            "model": record["model"],
            "dataset": record["data"],
            "context_size": cfg.context,
            "hooks": [{"name": p.name, "module": p.module, "output": not p.input, **norms[p.name]} for p in points],
        }
        sources = source_table(data, cfg.text_column)
        if sources is not None:
            prov["sources"] = sources
        docs = iter_documents(data, cm.tokenizer, cfg.text_column)
        batches = iter_batches(
            iter_windows(docs, policy),
            cfg.batch_size,
            max_tokens=cfg.tokens,
            drop_flags=drop_bits,
            rank=rank,
            world=world,
        )
        first = next(batches, None)
        if first is None and world == 1:
            raise CaptureError(
                f"no tokens in data {record['data']!r}: it holds no documents (or every token was dropped)"
            )
        batches = itertools.chain([first] if first is not None else [], batches)
        writer = create(
            out,
            widths,
            segment=f"rank{rank:05d}",
            dtype=cfg.dtype,
            codec=cfg.codec,
            provenance=prov,
            commit_every_shard=False,
            chunks_per_shard=cfg.chunks_per_shard,
            chunk_bytes=cfg.chunk_bytes,
            durable=cfg.durable,
        )
        try:
            job = _Job(cfg, cm, recorder, record, policy, batches, rank, world, dev, t_start)
            return _run(job, writer, after_batch)
        finally:
            writer.abort()  # no-op after a normal close; otherwise releases the lock, keeping commits
    finally:
        recorder.remove()


def _probe_ids(policy, dev) -> torch.Tensor:
    """The probe forwards' input: 1 x 4 tokens (BOS, else pad)."""
    S = min(4, policy.context)
    fill = policy.bos_id if policy.bos_id is not None else policy.pad_id
    return torch.full((1, S), fill, dtype=torch.long, device=dev)


def _probe_widths(cm, recorder, ids) -> dict[str, int]:
    """Run a forward of ``ids`` (1 x 4 tokens) to learn each hook's width (trailing dims flattened)."""
    S = ids.shape[1]
    with torch.inference_mode():
        got = recorder.run(lambda: cm.forward(ids, torch.ones_like(ids)))
    widths = {}
    for h, t in got.items():
        if t.dim() < 3 or tuple(t.shape[:2]) != (1, S):
            raise CaptureError(
                f"hook {h!r} gives shape {tuple(t.shape)} for a [1, {S}] input; only hooks shaped "
                "[batch, seq, ...] can be captured"
            )
        if not t.is_floating_point():
            raise CaptureError(f"hook {h!r} gives dtype {t.dtype}, not floating-point activations")
        widths[h] = int(math.prod(t.shape[2:]))
    return widths


def _check_resume(writer, record) -> tuple[int, int]:
    """(batches done, NaN rows dropped) from the segment's newest commit; refuses a store
    captured with other options."""
    held = (writer.schema.provenance or {}).get("capture")
    if held is None:
        if writer.committed_rows:
            raise CaptureError(f"store {writer.storage.url} was not written by actstore capture; use another --out")
        return 0, 0
    diff = [k for k in _RESUME_KEYS if held.get(k) != record.get(k)]
    if diff:
        k = diff[0]
        raise CaptureError(
            f"store {writer.storage.url} was captured with {k}={held.get(k)!r}, this run has "
            f"{k}={record.get(k)!r}; re-run with the same options to resume, or use another --out"
        )
    meta = (writer.resume_meta or {}).get("capture") or {}
    if writer.committed_rows and "batches_done" not in meta:
        raise CaptureError(
            f"segment {writer.segment} has {writer.committed_rows} rows but no capture progress record; "
            "use another --out"
        )
    return int(meta.get("batches_done", 0)), int(meta.get("nonfinite_dropped", 0))


def _run(job: _Job, writer, after_batch) -> dict:
    cfg, cm, recorder, rank, world = job.cfg, job.cm, job.recorder, job.rank, job.world
    batches, dev = job.batches, job.dev
    done, dropped = _check_resume(writer, job.record)
    resumed_rows = writer.committed_rows
    # Skip the batches the committed rows already hold, checking that they add up.
    skipped_rows = 0
    for _ in range(done):
        b = next(batches, None)
        if b is None:
            break
        skipped_rows += b.n_keep
    if skipped_rows - dropped != writer.committed_rows:
        raise CaptureError(
            f"segment {writer.segment} holds {writer.committed_rows} rows, but its first {done} batches "
            f"of this data give {skipped_rows - dropped}; the data changed since it was written, "
            "use another --out"
        )
    widths = {h: writer.schema.hooks[h].d for h in job.record["hooks"]}
    sink = Sink(
        writer,
        widths,
        cfg.dtype,
        dev,
        max_rows=cfg.batch_size * job.policy.context,
        slots=cfg.slots,
        nonfinite=cfg.nonfinite,
        commit_every=cfg.commit_every,
        batches_done=done,
        nonfinite_dropped=dropped,
    )
    bar = _progress_bar(cfg.progress, cfg.tokens, world, resumed_rows, rank)
    t_loop = time.perf_counter()
    interrupted = False
    fwd_s = 0.0
    n_batches = 0
    try:
        for b in batches:
            if n_batches == 0 and resumed_rows and rank == 0 and bar is not None:
                bar.write(
                    f"actstore: resuming {writer.storage.url} segment {writer.segment} after {resumed_rows:,} rows"
                )
            ids = torch.from_numpy(b.ids).to(dev, non_blocking=True)
            mask = torch.from_numpy((b.flags != FLAG_PAD).astype(np.int64)).to(dev, non_blocking=True)
            t0 = time.perf_counter()
            with torch.inference_mode():
                got = recorder.run(lambda ids=ids, mask=mask: cm.forward(ids, mask))
                acts = {}
                for h, t in got.items():
                    if tuple(t.shape[:2]) != tuple(b.ids.shape):
                        raise CaptureError(
                            f"hook {h!r} gives shape {tuple(t.shape)} for a {list(b.ids.shape)} batch; "
                            "expected [batch, seq, ...]"
                        )
                    # A model spread over devices (device_map) gives each hook on the device of its
                    # module; the capture kernel and staging ring live on `dev`.
                    acts[h] = t.reshape(b.ids.size, widths[h]).to(dev, non_blocking=True)
                fwd_s += time.perf_counter() - t0
                sink.put(acts, b)
            n_batches += 1
            if bar is not None:
                _update_bar(bar, sink, writer, resumed_rows)
            if after_batch is not None:
                after_batch(n_batches)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        try:
            sink.close(commit=True)
        except Exception:
            pass
        if bar is not None:
            bar.close()
        raise
    sink.close(commit=True)
    writer.close()
    if bar is not None:
        _update_bar(bar, sink, writer, resumed_rows)
        bar.close()
    loop_s = time.perf_counter() - t_loop
    _barrier()
    secs = time.perf_counter() - job.t_start
    pr = sink.progress
    summary = {
        "store": writer.storage.url,
        "segment": writer.segment,
        "rank": rank,
        "world_size": world,
        "rows_this_run": pr.rows,
        "committed_rows": writer.committed_rows,
        "resumed_from": resumed_rows,
        "batches_this_run": n_batches,
        "seconds": secs,
        "capture_seconds": loop_s,
        "forward_seconds": fwd_s,
        "tokens_per_s": pr.rows / loop_s if loop_s else 0.0,
        "bytes_written": writer.bytes_written,
        "nonfinite_rows_dropped": pr.nonfinite_rows,
        "store_wait_seconds": pr.wait_s,
        "interrupted": interrupted,
    }
    if interrupted:
        print(
            f"actstore: interrupted; {writer.committed_rows:,} rows committed in {writer.storage.url} "
            f"(segment {writer.segment}); re-run the same command to resume",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    return summary


def _barrier():
    dist = group()
    if dist is not None:
        dist.barrier()


def _progress_bar(enabled, tokens, world, resumed, rank):
    if not enabled or rank != 0:
        return None
    total = -(-tokens // world) if tokens else None
    return tqdm(
        total=total,
        initial=resumed,
        unit="tok",
        unit_scale=True,
        dynamic_ncols=True,
        file=sys.stderr,
        desc="capture",
        mininterval=0.5,
    )


def _update_bar(bar, sink, writer, resumed):
    pr = sink.progress
    el = max(time.perf_counter() - pr.started, 1e-9)
    bar.n = resumed + pr.rows
    post = {"tok/s": f"{pr.rows / el:,.0f}", "GB": f"{writer.bytes_written / 1e9:.3f}"}
    if pr.wait_s > 0.05 * el:
        # The model waited for the store: the disk (or the encoders) is the bottleneck.
        post["store-bound"] = f"{100 * pr.wait_s / el:.0f}% waiting"
    if pr.nonfinite_rows:
        post["NaN/inf rows"] = pr.nonfinite_rows
    bar.set_postfix(post, refresh=False)
    bar.refresh()
