"""The top-level functions: ``actstore.create`` and ``actstore.open``."""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from typing import TYPE_CHECKING

from ._version import __version__
from .store.errors import StoreError
from .store.format import Schema, group_doc, make_schema
from .store.reader import Store
from .store.storage import open_storage

if TYPE_CHECKING:
    from .store.writer import SegmentWriter


def open(path: str | os.PathLike, *, threads: int | None = None) -> Store:  # noqa: A001 - the public name
    """Open the store at ``path`` (local path or file:// URL) for reading."""
    return Store(open_storage(path), threads=threads)


def create(
    path: str | os.PathLike,
    hooks: dict[str, int] | None = None,
    *,
    segment: str | None = None,
    dtype: str = "bf16",
    codec: str = "zstd",
    chunks_per_shard: int | None = None,
    provenance: dict | None = None,
    threads: int | None = None,
    commit_every_shard: bool = True,
    durable: bool = True,
    chunk_bytes: int | None = None,
) -> SegmentWriter:
    """Create (or extend) the store at ``path`` and return a writer for one segment.

    hooks: name -> width ``d`` of every hook the store holds. Required for a new store;
        for an existing one it may be omitted, and if given must match.
    segment: this writer's segment name. Reopening an existing segment resumes it: the
        writer's ``committed_rows`` says where to continue, and anything uncommitted is
        discarded. Default: a new unique name.
    dtype: bf16 (default, lossless for bf16 models), fp16, fp32, fp8 or int8 (lossy, with
        a per-row scale; error bounds in docs/FORMAT.md).
    codec: zstd (default), lz4 or none.
    provenance: free-form JSON (model, revision, dataset, context size, hook specs...);
        the actstore version and creation time are added.
    durable: fsync every object before it is renamed into place. Only benchmarks turn it off.
    chunks_per_shard, chunk_bytes: layout overrides (defaults 64 chunks of ~2 MiB); tests
        use small values to exercise many shards.
    """
    storage = open_storage(path, durable=durable)
    existing = _load_schema(storage)
    if existing is None:
        if not hooks:
            raise StoreError(f"no store at {storage.url} yet: pass hooks={{name: d}} to create one")
        prov = {
            "actstore_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(provenance or {}),
        }
        kw = {k: v for k, v in (("chunks_per_shard", chunks_per_shard), ("chunk_bytes", chunk_bytes)) if v}
        schema = make_schema(hooks, dtype=dtype, codec=codec, provenance=prov, **kw)
        doc = group_doc({"actstore": schema.to_json()})
        data = json.dumps(doc, indent=1).encode()
        if storage.conditional_put:
            created = storage.write_exclusive("zarr.json", data)
        else:  # no create-if-absent: ranks that race here must write the same schema
            created = not storage.exists("zarr.json")
            if created:
                storage.write_atomic("zarr.json", data)
        existing = schema if created else _load_schema(storage)  # else another rank created it first
    schema = existing
    if hooks is not None:
        want = {h: int(d) for h, d in hooks.items()}
        have = {h: s.d for h, s in schema.hooks.items()}
        if want != have:
            raise StoreError(f"store at {storage.url} holds hooks {have}, you asked for {want}; use another path")
        if dtype != next(iter(schema.hooks.values())).dtype.name or codec != schema.codec_preset:
            held = next(iter(schema.hooks.values())).dtype.name
            raise StoreError(
                f"store at {storage.url} is {held}/{schema.codec_preset}, you asked for {dtype}/{codec}; use "
                f"another path"
            )
    name = segment or f"seg-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    from .store.writer import SegmentWriter  # deferred: it imports torch, which open() never needs

    return SegmentWriter(storage, schema, name, threads=threads, commit_every_shard=commit_every_shard)


def _load_schema(storage) -> Schema | None:
    if not storage.exists("zarr.json"):
        return None
    try:
        root = json.loads(storage.read("zarr.json"))
    except ValueError as e:
        raise StoreError(f"{storage.url}/zarr.json is not valid JSON ({e})") from None
    return Schema.from_json((root.get("attributes") or {}).get("actstore"), storage.url)
