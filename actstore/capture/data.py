"""Capture inputs: documents as token ids, in a fixed order.

Accepted ``data``:

- text files: ``.txt`` (one document per file); a directory of them, or a glob;
- JSON lines / JSON / parquet files, read with ``datasets`` (``text_column``, or a
  pre-tokenized ``input_ids``/``tokens`` column);
- a directory written by ``datasets``' ``save_to_disk`` (``load_from_disk``);
- pre-tokenized arrays: ``.npy`` files, NumPy arrays or torch tensors, 2-D (one row per
  document) or 1-D (one document);
- in Python, also a list of strings, a list of token-id lists, or a ``datasets.Dataset``;
- **named sources**: a mapping ``{name: data}`` (``--data pos=pos.jsonl --data neg=neg.jsonl``
  on the command line), read one after another in the order given. Documents are numbered
  across all of them, and :func:`source_table` gives the document range of each name
  (recorded in the store's provenance as ``sources``; see docs/FORMAT.md).

The order is the order given (files sorted by name within a directory or glob), so the
same command always sees the same token stream: that is what makes resume exact.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator

import numpy as np
import torch

from ..store.errors import CaptureError

TOKEN_COLUMNS = ("input_ids", "tokens")
_TOKENIZE_BATCH = 64  # documents per tokenizer call (fast tokenizers batch in Rust)


def describe(data) -> object:
    """A JSON-able description of ``data`` for provenance and resume checks."""
    if isinstance(data, dict):
        return {str(k): describe(v) for k, v in data.items()}
    if isinstance(data, (str, os.PathLike)):
        return os.path.abspath(os.fspath(data))
    if (
        isinstance(data, (list, tuple))
        and all(isinstance(d, (str, os.PathLike)) for d in data)
        and data
        and all(os.path.exists(os.fspath(d)) for d in data)
    ):
        return [os.path.abspath(os.fspath(d)) for d in data]
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return f"array{tuple(data.shape)}"
    return f"{type(data).__name__}[{len(data) if hasattr(data, '__len__') else '?'}]"


def _files(spec: str) -> list[str]:
    if os.path.isdir(spec):
        if (
            os.path.exists(os.path.join(spec, "dataset_info.json"))
            or os.path.exists(os.path.join(spec, "state.json"))
            or os.path.exists(os.path.join(spec, "dataset_dict.json"))
        ):
            return [spec]
        found = sorted(os.path.join(spec, f) for f in os.listdir(spec) if not f.startswith("."))
        return [f for f in found if os.path.isfile(f)]
    if any(c in spec for c in "*?["):
        return sorted(glob.glob(spec))
    if not os.path.exists(spec):
        raise CaptureError(f"data {spec!r} does not exist; give a text/jsonl/parquet/npy file, a folder, or a glob")
    return [spec]


def _from_dataset(ds, text_column: str, tokenizer) -> Iterator[list[int]]:
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # DatasetDict
        if len(ds) != 1:
            raise CaptureError(f"the dataset has splits {list(ds)}; save or pass one split")
        ds = next(iter(ds.values()))
    cols = ds.column_names
    tok_col = next((c for c in TOKEN_COLUMNS if c in cols), None)
    if text_column in cols:
        yield from _tokenize((row[text_column] for row in ds), tokenizer)
    elif tok_col:
        for row in ds:
            yield [int(t) for t in row[tok_col]]
    else:
        raise CaptureError(
            f"the dataset has columns {cols}: none is the text column {text_column!r} "
            f"(set --text-column) or a token column {TOKEN_COLUMNS}"
        )


def _tokenize(texts: Iterable[str], tokenizer) -> Iterator[list[int]]:
    if tokenizer is None:
        raise CaptureError(
            "text data needs a tokenizer: the model has none, so pass tokenizer=... or pre-tokenized data"
        )
    # Documents are tokenized whole and cut into windows later; no length warnings.
    if hasattr(tokenizer, "model_max_length"):
        tokenizer.model_max_length = 1 << 40
    batch: list[str] = []
    for t in texts:
        if not isinstance(t, str):
            raise CaptureError(f"expected text documents, got {type(t).__name__}")
        batch.append(t)
        if len(batch) == _TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def _from_array(a) -> Iterator[list[int]]:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.dtype.kind not in "iu":
        raise CaptureError(f"pre-tokenized data must hold integer token ids, got dtype {a.dtype}")
    if a.ndim == 1:
        yield a.tolist()
    elif a.ndim == 2:
        for row in a:
            yield row.tolist()
    else:
        raise CaptureError(f"pre-tokenized data must be 1-D or 2-D, got shape {a.shape}")


def _from_file(path: str, text_column: str, tokenizer) -> Iterator[list[int]]:
    low = path.lower()
    if os.path.isdir(path):
        import datasets  # deferred: an optional extra, seconds to import, needed only for these inputs

        yield from _from_dataset(datasets.load_from_disk(path), text_column, tokenizer)
    elif low.endswith(".npy"):
        yield from _from_array(np.load(path, mmap_mode="r", allow_pickle=False))
    elif low.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            yield from _tokenize([f.read()], tokenizer)
    elif low.endswith((".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")):
        import datasets  # deferred, as above

        kind = "parquet" if low.endswith(".parquet") else "json"
        ds = datasets.load_dataset(kind, data_files=path, split="train")
        yield from _from_dataset(ds, text_column, tokenizer)
    else:
        raise CaptureError(
            f"data file {path!r}: unknown type; use .txt, .jsonl/.json, .parquet, .npy or a saved dataset folder"
        )


def iter_documents(data, tokenizer=None, text_column: str = "text") -> Iterator[list[int]]:
    """Yield each document of ``data`` as a list of token ids (no special tokens added)."""
    if isinstance(data, dict):
        for v in data.values():
            yield from iter_documents(v, tokenizer, text_column)
    elif isinstance(data, (str, os.PathLike)):
        for path in _files(os.fspath(data)) or _raise_empty(data):
            yield from _from_file(path, text_column, tokenizer)
    elif isinstance(data, (np.ndarray, torch.Tensor)):
        yield from _from_array(data)
    elif hasattr(data, "column_names"):
        yield from _from_dataset(data, text_column, tokenizer)
    elif isinstance(data, (list, tuple)):
        if not data:
            return
        if all(isinstance(d, str) for d in data):
            if data and all(os.path.exists(d) for d in data):
                for d in data:
                    yield from iter_documents(d, tokenizer, text_column)
            else:
                yield from _tokenize(data, tokenizer)
        else:
            for d in data:
                yield from _from_array(np.asarray(d))
    else:
        raise CaptureError(f"unsupported data of type {type(data).__name__}; see actstore.capture.data")


class _CountingTokenizer:
    """Stands in for a tokenizer when only the number of documents matters (no tokenizing)."""

    def __call__(self, batch, **_):
        return {"input_ids": [[] for _ in batch]}


def count_documents(data, text_column: str = "text") -> int:
    """How many documents ``data`` holds, in the numbering :func:`iter_documents` gives
    (empty documents count: they take a number); reads the data without tokenizing it."""
    return sum(1 for _ in iter_documents(data, _CountingTokenizer(), text_column))


def source_table(data, text_column: str = "text") -> list[dict] | None:
    """For named sources ``{name: data}``: ``[{"name", "data", "docs": [first, stop)}]`` in
    document order; None for unnamed data."""
    if not isinstance(data, dict):
        return None
    out, start = [], 0
    for name, v in data.items():
        if not isinstance(name, str) or not name:
            raise CaptureError(f"source name {name!r}: name each source with a non-empty string")
        n = count_documents(v, text_column)
        out.append({"name": name, "data": describe(v), "docs": [start, start + n]})
        start += n
    return out


def parse_sources(items) -> object:
    """``--data`` values: one plain spec is returned as it is; ``NAME=SPEC`` items become
    ``{NAME: SPEC}`` (named sources, in order); several plain specs become a list."""
    items = [items] if isinstance(items, str) else list(items)
    if not items:
        raise CaptureError("no --data given: pass a file, a folder, a glob, or NAME=PATH sources")

    def named(it: str) -> bool:
        name, eq, spec = it.partition("=")
        return bool(eq and name and spec) and not os.path.exists(it) and all(c.isalnum() or c in "_.-" for c in name)

    kinds = [named(it) for it in items]
    if not any(kinds):
        return items[0] if len(items) == 1 else items
    if not all(kinds):
        bad = items[kinds.index(False)]
        raise CaptureError(f"--data {bad!r} has no name: when one source is named (NAME=PATH), name them all")
    out = {}
    for it in items:
        name, _, spec = it.partition("=")
        if name in out:
            raise CaptureError(f"--data names source {name!r} twice: give each source its own name")
        out[name] = spec
    return out


def _raise_empty(spec):
    raise CaptureError(f"data {spec!r} matched no files")
