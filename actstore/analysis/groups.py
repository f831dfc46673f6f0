"""Row groups: which store rows a representation analysis reads, and the group of each.

A :class:`RowGroups` maps documents (the store's ``tokens/doc`` ids) to named groups and
picks positions inside each document:

- groups, by one of: the capture's named **sources** (``Store.sources``, from ``--data
  pos=a.jsonl --data neg=b.jsonl``), a **label table** (document -> label; CSV or JSON or
  Parquet with columns ``doc`` and ``label``, or a dict), **document lists** (``{name:
  [doc ids]}``), or **every row** of the store as one group (to compare two stores, each
  store is one group);
- positions, by one policy: ``all`` (every row), ``last`` (the last token of each
  document: its largest ``pos``) or ``after_prompt`` (the tokens after the first occurrence
  of a prompt marker, a token-id sequence, e.g. the chat template's assistant header).

Rows with any of ``drop_flags`` (default ``bos,special``: inserted BOS/EOS rows, whose
activations are shared by every group) are never selected; ``last`` and ``after_prompt``
only ever select rows of the document's own text (``pos >= 0``).

:func:`resolve` reads the store's token columns once (a few bytes a row, no activations) to
find each document's last position and marker, and checks the groups: a label naming a
document the store lacks, or a group left with no rows, is a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AnalysisError
from .config import POSITIONS

_NONE = np.int32(-1)


@dataclass(frozen=True)
class RowGroups:
    """The resolved selection of one store: group ``doc_group[doc]`` (-1: not read), and,
    per document, the first selected position ``start[doc]`` and the last ``stop[doc]``
    (inclusive; ``all`` leaves both open)."""

    names: tuple[str, ...]
    doc_group: np.ndarray  # [D] int32
    start: np.ndarray  # [D] int64, first selected pos (all: min int)
    stop: np.ndarray  # [D] int64, last selected pos (all: max int)
    positions: str
    drop_flags: int
    rows: np.ndarray  # [G] int64: selected rows per group

    def assign(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """``[n]`` int32 group of each row of a block's token columns (-1: not selected)."""
        doc = cols["doc"].astype(np.int64, copy=False)
        pos = cols["pos"].astype(np.int64, copy=False)
        ok = (doc >= 0) & (doc < self.doc_group.size)
        d = np.where(ok, doc, 0)
        g = np.where(ok, self.doc_group[d], _NONE)
        keep = (g >= 0) & ((cols["flags"] & self.drop_flags) == 0)
        if self.positions != "all":
            keep &= (pos >= self.start[d]) & (pos <= self.stop[d]) & (pos >= 0)
        return np.where(keep, g, _NONE).astype(np.int32)

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "positions": self.positions,
            "drop_flags": self.drop_flags,
            "rows": self.rows.tolist(),
            "doc_group_sha": _digest(self.doc_group),
            "start_sha": _digest(self.start),
        }


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def read_labels(table) -> dict[int, str]:
    """A document -> label table: a dict, or a CSV / JSON / JSON-lines / Parquet file with
    columns ``doc`` and ``label`` (JSON may also be one ``{"doc": label}`` object)."""
    if isinstance(table, dict):
        return {int(k): str(v) for k, v in table.items()}
    p = Path(table)
    if not p.exists():
        raise AnalysisError(f"label table {p} does not exist: give a CSV, JSON or Parquet file with doc,label")
    low = p.name.lower()
    if low.endswith(".json"):
        doc = json.loads(p.read_text())
        if isinstance(doc, dict):
            return {int(k): str(v) for k, v in doc.items()}
        recs = doc
    elif low.endswith(".jsonl"):
        recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    elif low.endswith(".csv"):
        import csv

        with open(p, newline="") as f:
            recs = list(csv.DictReader(f))
    elif low.endswith(".parquet"):
        import pyarrow.parquet as pq  # deferred: pyarrow comes with datasets, only Parquet tables need it

        recs = pq.read_table(p).to_pylist()
    else:
        raise AnalysisError(f"label table {p}: unknown type; use .csv, .json, .jsonl or .parquet")
    try:
        return {int(r["doc"]): str(r["label"]) for r in recs}
    except (KeyError, TypeError, ValueError):
        raise AnalysisError(f"label table {p} needs columns doc (integer) and label in every record") from None


def _scan(store, block_rows: int, marker: np.ndarray | None):
    """One pass over the token columns: per document, whether it has rows, its last pos,
    and the pos of the end of the first marker occurrence (-1: none)."""
    n = store.rows
    dmax = -1
    cand = []  # (doc, pos, token) rows holding a marker token
    pieces_doc, pieces_pos = [], []
    for lo in range(0, n, block_rows):
        t = {k: v.numpy() for k, v in store.tokens(slice(lo, min(n, lo + block_rows))).items()}
        doc, pos = t["doc"].astype(np.int64), t["pos"].astype(np.int64)
        ok = doc >= 0
        if ok.any():
            dmax = max(dmax, int(doc[ok].max()))
        real = ok & (pos >= 0)
        pieces_doc.append(doc[real])
        pieces_pos.append(pos[real])
        if marker is not None:
            hit = real & np.isin(t["token"], marker)
            cand.append(np.stack([doc[hit], pos[hit], t["token"][hit].astype(np.int64)], 1))
    D = dmax + 1
    present = np.zeros(D, bool)
    last = np.full(D, -1, np.int64)
    if pieces_doc:
        dd, pp = np.concatenate(pieces_doc), np.concatenate(pieces_pos)
        present[dd] = True
        np.maximum.at(last, dd, pp)
    ends = np.full(D, -1, np.int64)
    if marker is not None and cand:
        c = np.concatenate(cand)
        key = c[:, 0] * (1 << 32) + c[:, 1]
        o = np.argsort(key)
        key, tok = key[o], c[o, 2]
        L = marker.size
        first = np.flatnonzero(tok == marker[-1])
        good = np.ones(first.size, bool)
        for j in range(1, L):
            q = key[first] - j
            at = np.clip(np.searchsorted(key, q), 0, key.size - 1)
            good &= (key[at] == q) & (tok[at] == marker[-1 - j])
        hit_keys = key[first[good]]
        docs, ps = hit_keys >> 32, hit_keys & ((1 << 32) - 1)
        for d_, p_ in zip(docs[::-1].tolist(), ps[::-1].tolist()):  # descending: the first occurrence wins
            ends[d_] = p_
    return present, last, ends


def resolve(
    store,
    *,
    sources=None,
    labels=None,
    docs: dict | None = None,
    positions: str = "all",
    marker=None,
    drop_flags="bos,special",
    block_rows: int = 65536,
    name: str = "all",
) -> RowGroups:
    """The :class:`RowGroups` of ``store`` from one of ``sources`` (True for every source, or
    a list of source names), ``labels`` (a label table, see :func:`read_labels`) or ``docs``
    (``{group name: doc ids}``); none of them gives one group ``name`` of every row.
    ``marker``: the prompt marker's token ids, for ``positions="after_prompt"``."""
    if positions not in POSITIONS:
        raise AnalysisError(f"positions {positions!r}: use one of {', '.join(POSITIONS)}")
    given = [x is not None and x is not False for x in (sources, labels, docs)]
    if sum(given) > 1:
        raise AnalysisError("groups come from one of sources, labels or docs: pass only one")
    mk = None
    if positions == "after_prompt":
        if marker is None or len(marker) == 0:
            raise AnalysisError("positions after_prompt needs a prompt marker: pass marker= (token ids)")
        mk = np.asarray(marker, np.int64).reshape(-1)
    present, last, ends = _scan(store, block_rows, mk)
    D = present.size
    doc_group = np.full(D, -1, np.int32)
    if given[0]:
        table = store.sources
        if not table:
            raise AnalysisError(
                f"store {store.path} records no sources: capture with --data NAME=PATH ... or use a label table"
            )
        want = [s["name"] for s in table] if sources is True else list(sources)
        known = {s["name"]: s["docs"] for s in table}
        bad = [w for w in want if w not in known]
        if bad:
            raise AnalysisError(f"unknown source(s) {bad}: store {store.path} has {', '.join(known)}")
        names = tuple(want)
        for g, w in enumerate(want):
            a, b = known[w]
            doc_group[a : min(b, D)] = g
    elif given[1] or given[2]:
        table = read_labels(labels) if given[1] else {int(d): str(k) for k, ds in docs.items() for d in ds}
        if given[2] and sum(len(ds) for ds in docs.values()) != len(table):
            raise AnalysisError("a document is in more than one group of docs=: give each document one group")
        ids = np.fromiter(table, np.int64, len(table))
        missing = ids[(ids < 0) | (ids >= D)]
        if missing.size == 0:
            missing = ids[~present[ids]]
        if missing.size:
            raise AnalysisError(
                f"the groups name {missing.size} document(s) the store lacks (e.g. doc {int(missing[0])}; "
                f"store {store.path} has docs 0..{D - 1}): use the document ids of tokens/doc"
            )
        names = tuple(docs) if given[2] else tuple(sorted(set(table.values())))
        index = {n: i for i, n in enumerate(names)}
        for d_, lab in table.items():
            doc_group[d_] = index[lab]
    else:
        names = (name,)
        doc_group[:] = 0
    if positions == "all":
        start = np.full(D, np.iinfo(np.int64).min, np.int64)
        stop = np.full(D, np.iinfo(np.int64).max, np.int64)
    elif positions == "last":
        start, stop = last.copy(), last.copy()
    else:
        start = np.where(ends >= 0, ends + 1, np.iinfo(np.int64).max)
        stop = np.full(D, np.iinfo(np.int64).max, np.int64)
    from ._pass import parse_flags  # deferred: it imports torch, which the CLI's --positions choices must not

    rg = RowGroups(names, doc_group, start, stop, positions, parse_flags(drop_flags), np.zeros(len(names), np.int64))
    counts = np.zeros(len(names), np.int64)
    for lo in range(0, store.rows, block_rows):
        t = {k: v.numpy() for k, v in store.tokens(slice(lo, min(store.rows, lo + block_rows))).items()}
        g = rg.assign(t)
        counts += np.bincount(g[g >= 0], minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        why = " (no document holds the prompt marker)" if positions == "after_prompt" else ""
        raise AnalysisError(
            f"group(s) {empty} select no rows of store {store.path}{why}: check the groups, positions and drop flags"
        )
    return RowGroups(names, doc_group, start, stop, positions, rg.drop_flags, counts)


row_groups = resolve  # its name in actstore.analysis
