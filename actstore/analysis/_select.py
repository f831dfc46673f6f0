"""Per group, the K best entries of a fixed-width table: :func:`keep_best` (one merge) and
:class:`BestTable` (candidates buffered, merged in batches).

``table`` maps names to ``[G, K]`` arrays, one of them ``rows`` (int64, -1 in unfilled
slots), each row a group's K entries sorted best first, unfilled slots last holding
``pad[name]``. ``groups [c]`` and ``cand`` (same names, ``[c]``) are new candidates, which
the caller has already filtered against each group's current K-th entry, so that only a
few reach the sort. The order is total: ``primary(arrays) -> (uint64 keys, bits)`` (smaller
is better; ``bits`` significant low bits), then ``rows`` ascending, so the result does not
depend on the order in which candidates or merges arrive.

Cost of one :func:`keep_best`: one argsort over the touched groups' filled entries plus the
candidates. When every block touches most groups (a latent fires in nearly every block of
4096 rows), merging every block re-sorts the whole table each time: at m=4096, K=100 that
was 110 ms of a 210 ms block (``bins``, profiled at ``benchmarks/bench_analysis.py``'s
shape). :class:`BestTable` therefore buffers candidates and merges when the buffer holds as
many entries as the table, so each candidate costs O(1) sorted entries amortized, and
memory stays O(G*K). Filtering against the table's K-th entries between merges is still
exact: those entries are the K-th best of a subset of what was seen, so they are never
better than the true K-th; a candidate they reject would be rejected by the true K-th too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def keep_best(
    table: dict[str, np.ndarray],
    pad: dict[str, object],
    groups: np.ndarray,
    cand: dict[str, np.ndarray],
    primary: Callable[[dict], tuple[np.ndarray, int]],
) -> None:
    """Merge candidates into ``table`` in place (see the module docstring for the order)."""
    if groups.size == 0:
        return
    k = table["rows"].shape[1]
    touched, local = np.unique(groups, return_inverse=True)
    old = {name: table[name][touched].reshape(-1) for name in table}
    real = old["rows"] >= 0  # padding never competes: it is written back after the real entries
    g = np.concatenate([np.repeat(np.arange(touched.size, dtype=np.uint64), k)[real], local.astype(np.uint64)])
    both = {name: np.concatenate([old[name][real], cand[name]]) for name in table}
    p, bits = primary(both)
    # One argsort of (group, primary) packed into a uint64, instead of a three-key lexsort
    # (21 ms against 284 ms for 820k entries): the group takes the high bits, the primary's
    # top bits the rest. Entries whose packed keys tie are re-sorted by (full primary, row).
    gbits = max(int(touched.size - 1).bit_length(), 1)
    room = 64 - gbits
    pk = p >> np.uint64(bits - room) if bits > room else p << np.uint64(room - bits)
    packed = (g << np.uint64(room)) | pk if room < 64 else pk
    order = np.argsort(packed)
    sp = packed[order]
    eq = sp[1:] == sp[:-1]
    if eq.any():
        tie = np.flatnonzero(np.r_[eq, False] | np.r_[False, eq])
        seg = np.cumsum(np.r_[True, ~eq])[tie]
        sub = order[tie]
        order[tie] = sub[np.lexsort([both["rows"][sub], p[sub], seg])]
    g = g[order].astype(np.int64)
    n = g.size
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    keep = rank < k
    for name in table:
        rows = np.full((touched.size, k), pad[name], table[name].dtype)
        rows[g[keep], rank[keep]] = both[name][order[keep]]
        table[name][touched] = rows


class BestTable:
    """A :func:`keep_best` table whose candidates wait in a buffer of at most ``capacity``
    entries (default: the table's size, at least 65536) until :meth:`flush`.

    ``kth(name)`` gives the ``[G]`` K-th entries to filter candidates against (possibly
    stale, which is exact; see the module docstring). ``table`` flushes first, so it is
    always the exact K best of everything pushed.
    """

    def __init__(
        self,
        table: dict[str, np.ndarray],
        pad: dict[str, object],
        primary: Callable[[dict], tuple[np.ndarray, int]],
        capacity: int | None = None,
    ):
        self._t = table
        self.pad, self.primary = pad, primary
        g, k = next(iter(table.values())).shape
        self.capacity = int(capacity) if capacity is not None else max(g * k, 1 << 16)
        self._groups: list[np.ndarray] = []
        self._cand: list[dict[str, np.ndarray]] = []
        self._pending = 0

    def kth(self, name: str) -> np.ndarray:
        return self._t[name][:, -1]

    def push(self, groups: np.ndarray, cand: dict[str, np.ndarray]) -> None:
        if groups.size == 0:
            return
        self._groups.append(groups)
        self._cand.append(cand)
        self._pending += groups.size
        if self._pending >= self.capacity:
            self.flush()

    def flush(self) -> None:
        if not self._groups:
            return
        groups = np.concatenate(self._groups)
        cand = {name: np.concatenate([c[name] for c in self._cand]) for name in self._t}
        self._groups, self._cand, self._pending = [], [], 0
        keep_best(self._t, self.pad, groups, cand, self.primary)

    @property
    def table(self) -> dict[str, np.ndarray]:
        self.flush()
        return self._t

    @table.setter
    def table(self, t: dict[str, np.ndarray]) -> None:
        self._groups, self._cand, self._pending = [], [], 0
        self._t = t
