"""Reading a store: whole chunks decoded in a thread pool, rows gathered natively.

There is no per-row zarr selection anywhere: for any set of rows we find the chunks that
hold them, read each chunk's bytes once through the shard index and verify and decode them
in a thread pool (``chunks.decode_chunks``; numcodecs releases the GIL), and gather the rows with
``actstore._C.gather_rows``. Only rows named by a commit record are ever read; a chunk
that the index lacks, that is short, or that fails its crc32c or decode is an error naming
the segment, array and chunk, never zeros.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _native
from .chunks import decode_chunks
from .errors import MissingObjectError, StoreError, UnknownHookError
from .format import NORM_FIELDS, SEGMENTS, ArraySpec, Schema
from .manifest import load_latest_commit
from .segment import SegmentReader
from .stats import RunningStats
from .storage import Storage


def _row_index(rows, total: int) -> tuple[np.ndarray, bool]:
    """Normalize a row selection to int64 indices; returns (indices, scalar)."""
    if rows is None:
        return np.arange(total, dtype=np.int64), False
    if isinstance(rows, (int, np.integer)):
        idx = np.array([int(rows)], dtype=np.int64)
        scalar = True
    elif isinstance(rows, slice):
        return np.arange(*rows.indices(total), dtype=np.int64), False
    else:
        torch = sys.modules.get("torch")  # no torch loaded: rows cannot be a tensor (metadata reads stay torch-free)
        if torch is not None and isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (total,):
                raise IndexError(f"boolean row mask has shape {idx.shape}, the store has {total} rows")
            return np.flatnonzero(idx).astype(np.int64), False
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise IndexError(
                f"rows must be an int, a slice, or a 1-D integer/boolean array, got {idx.dtype} shape {idx.shape}"
            )
        idx = idx.astype(np.int64)
        scalar = False
    idx = np.where(idx < 0, idx + total, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        bad = int(idx[(idx < 0) | (idx >= total)][0])
        raise IndexError(f"row {bad} is out of range: the store has {total} committed rows")
    return idx, scalar


class Store:
    """A read-only snapshot of a store's committed rows. Use :func:`actstore.open`.

    Rows are numbered globally: segments in name order, each contributing its committed
    rows. ``refresh()`` picks up commits made since opening.
    """

    def __init__(self, storage: Storage, *, threads: int | None = None):
        self.storage = storage
        self.path = storage.url
        try:
            root = json.loads(storage.read("zarr.json"))
        except MissingObjectError:
            raise StoreError(
                f"no store at {storage.url}: zarr.json not found; create one with actstore.create or a capture"
            ) from None
        except ValueError as e:
            raise StoreError(f"{storage.url}/zarr.json is not valid JSON ({e})") from None
        if root.get("zarr_format") != 3 or root.get("node_type") != "group":
            raise StoreError(f"{storage.url} is not a zarr v3 group")
        self.schema = Schema.from_json((root.get("attributes") or {}).get("actstore"), storage.url)
        # Object storage: at least the storage's requests in flight (a get waits on the network).
        self._workers = threads or max(_native.default_threads(), storage.inflight)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="actstore-dec")
        self._pool_pid = os.getpid()
        self.refresh()

    def refresh(self) -> "Store":
        segs = []
        for name in self.storage.list(SEGMENTS):
            if not self.storage.exists(f"{SEGMENTS}/{name}/zarr.json"):
                continue  # a segment whose creation never finished holds no rows
            commit = load_latest_commit(self.storage, name, self.schema)
            rows = commit["rows"] if commit else 0
            segs.append(SegmentReader(self.storage, self.schema, name, rows, commit))
        self.segments = segs
        self._offsets = np.cumsum([0] + [s.rows for s in segs]).astype(np.int64)
        return self

    # -- public ----------------------------------------------------------------------

    @property
    def hooks(self) -> list[str]:
        return list(self.schema.hooks)

    @property
    def rows(self) -> int:
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return self.rows

    def _hook(self, hook: str):
        try:
            return self.schema.hooks[hook]
        except KeyError:
            raise UnknownHookError(f"unknown hook {hook!r}: this store holds {', '.join(self.schema.hooks)}") from None

    def read(self, hook: str, rows=None, dtype=None):
        """Activations of ``hook`` at ``rows`` -> ``[n, d]`` torch tensor of ``dtype`` (default
        ``torch.float32``) on the CPU.

        ``rows``: None (all), an int (returns ``[d]``), a slice, or a 1-D integer or
        boolean array/tensor of global row numbers. fp8/int8/q16 are dequantized with their
        per-row scales; bf16 read as bfloat16 is bit-exact and zero-copy.
        """
        import torch  # deferred: opening a store and reading its metadata need no torch

        from .convert import from_stored  # deferred with torch

        spec = self._hook(hook)
        idx, scalar = _row_index(rows, self.rows)
        arrays = {a.path: a for a in self.schema.arrays()}
        got = self._gather([arrays[spec.array]] + ([arrays[spec.scale_array]] if spec.scale_array else []), idx)
        out = from_stored(
            spec.dtype, got[spec.array], got.get(spec.scale_array), torch.float32 if dtype is None else dtype
        )
        return out[0] if scalar else out

    def tokens(self, rows=None) -> dict:
        """Token-aligned columns at ``rows`` as torch tensors: ``token`` (int32), ``doc`` (int64),
        ``pos`` (int32) and ``flags`` (uint8 bits: 1 BOS, 2 pad, 4 special), each ``[n]``."""
        import torch  # deferred, as in read()

        idx, scalar = _row_index(rows, self.rows)
        cols = [a for a in self.schema.arrays() if a.path.startswith("tokens/")]
        got = self._gather(cols, idx)
        out = {a.path.split("/", 1)[1]: torch.from_numpy(got[a.path]) for a in cols}
        return {k: v[0] for k, v in out.items()} if scalar else out

    @property
    def sources(self) -> list[dict]:
        """The named sources of a capture (``--data pos=a.jsonl --data neg=b.jsonl``):
        ``[{"name", "data", "docs": [first, stop)}]``, document ranges in order; ``[]`` for a
        store captured from unnamed data or written without capture."""
        return [dict(s) for s in ((self.schema.provenance or {}).get("sources") or [])]

    def hook_norm(self, hook: str) -> dict:
        """Where ``hook`` was taken relative to a normalization, as capture found it in a forward:
        ``{"norm", "norm_module", "norm_gain_folded", "norm_gain_applied"}``.

        ``norm``: ``"post"`` (the tensor is a norm's output, e.g. HF Llama's
        ``model.layers.15.mlp:input``, or TransformerLens' ``blocks.15.ln2.hook_normalized``),
        ``"pre"`` (it is a norm's input, e.g. ``model.layers.15.post_attention_layernorm:input``
        or ``blocks.15.hook_resid_mid``), or None (neither, or not known). ``norm_module``: that
        norm's module path. ``norm_gain_folded``: True when the norm has no gain of its own
        because it was folded into the following weights (a TransformerLens ``LNPre``/``RMSPre``
        model), False when it has one, None when not known. ``norm_gain_applied``: whether the
        stored tensor has that gain (and bias) applied: True for a norm module's output, False
        for ``"pre"`` and for TransformerLens' ``hook_normalized`` of a norm with a gain (taken
        before ``w`` and ``b``), None when the norm has no gain. A ``"post"`` tensor with the
        gain applied or folded is exactly what the next layer reads. Every field is None for a
        hook not captured by ``actstore capture``, or by a version that did not record it."""
        self._hook(hook)
        held = (self.schema.provenance or {}).get("hooks")
        held = held if isinstance(held, list) else []  # provenance is free-form: anything else says nothing
        entry = next((h for h in held if isinstance(h, dict) and h.get("name") == hook), {})
        return {k: entry.get(k) for k in NORM_FIELDS}

    def stats(self, hook: str) -> dict:
        """Statistics of ``hook`` over every committed row, merged across segments:
        count, mean/var/std/m2 (float64 ``[d]``), mean_norm, nonfinite_rows."""
        return self._merged_stats(hook).as_dict()

    def _merged_stats(self, hook: str) -> RunningStats:
        spec = self._hook(hook)
        total = RunningStats(spec.d)
        for s in self.segments:
            if s.commit:
                total.merge(RunningStats.from_json(s.commit["stats"][hook]))
        return total

    def info(self) -> dict:
        """A JSON-ready summary: hooks (each with its width, dtype, bytes, ratio, stats and
        ``norm``, as :meth:`hook_norm` gives it), rows, codec, bytes, segments, provenance."""
        sch = self.schema
        hooks = {}
        for h, spec in sch.hooks.items():
            on_disk = sum(self.storage.total_bytes(f"{SEGMENTS}/{s.name}/{spec.array}") for s in self.segments)
            if spec.scale_array:
                on_disk += sum(
                    self.storage.total_bytes(f"{SEGMENTS}/{s.name}/{spec.scale_array}") for s in self.segments
                )
            raw = self.rows * spec.row_bytes + (self.rows * 4 if spec.scale_array else 0)
            st = self._merged_stats(h)
            hooks[h] = {
                "d": spec.d,
                "dtype": spec.dtype.name,
                "logical_dtype": spec.dtype.logical,
                "chunk_rows": spec.chunk_rows,
                "norm": self.hook_norm(h),
                "stored_bytes": raw,
                "bytes_on_disk": on_disk,
                "compression_ratio": round(raw / on_disk, 4) if on_disk else None,
                "stats": {
                    "count": st.count,
                    "mean_norm": st.mean_norm,
                    "mean_abs_mean": float(np.abs(st.mean).mean()) if st.count else None,
                    "mean_std": float(np.sqrt(st.var).mean()) if st.count else None,
                    "nonfinite_rows": st.nonfinite_rows,
                },
            }
        return {
            "path": self.path,
            "format_version": sch.to_json()["format_version"],
            "rows": self.rows,
            "shard_rows": sch.shard_rows,
            "codec": sch.codec_preset,
            "codec_description": sch.codec.describe(),
            "bytes_on_disk": self.storage.total_bytes(""),
            "hooks": hooks,
            "segments": [
                {
                    "name": s.name,
                    "rows": s.rows,
                    "commit": s.commit["seq"] if s.commit else None,
                    "time": s.commit["time"] if s.commit else None,
                }
                for s in self.segments
            ],
            "provenance": sch.provenance,
        }

    def _executor(self) -> ThreadPoolExecutor:
        # A Store used in a forked child (a DataLoader worker under fork): the parent's
        # threads do not exist there, so the child makes its own pool (and the storage its
        # own client); nothing with a thread or a socket crosses the fork.
        if self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="actstore-dec")
            self._pool_pid = os.getpid()
        return self._pool

    def close(self) -> None:
        if self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, rows={self.rows}, hooks={self.hooks})"

    # -- the read path ---------------------------------------------------------------

    def _gather(self, arrays: list[ArraySpec], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``idx`` (global) of each array -> ``{path: [n, ...]}`` numpy arrays."""
        seg = np.searchsorted(self._offsets, idx, side="right") - 1
        local = idx - self._offsets[seg]
        result = {}
        for a in arrays:
            for s in {int(x) for x in np.unique(seg)}:
                self.segments[s].check_array(a)
            chunk = local // a.chunk_rows
            # One key per (segment, chunk): every needed chunk is decoded exactly once.
            key = seg.astype(np.int64) * (1 << 40) + chunk
            uniq, inverse = np.unique(key, return_inverse=True)
            blocks = decode_chunks(
                self._executor(),
                [s.chunks for s in self.segments],
                a,
                [(int(k >> 40), int(k & ((1 << 40) - 1))) for k in uniq],
            )
            out = np.empty((idx.size, *a.row_shape), dtype=a.dtype)
            if idx.size:
                sources = [b.reshape(b.shape[0], -1) for b in blocks]
                _native.gather_rows(
                    sources,
                    inverse.astype(np.int32),
                    (local % a.chunk_rows).astype(np.int64),
                    out=out.reshape(idx.size, -1),
                )
            result[a.path] = out
        return result
