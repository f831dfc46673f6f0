"""``top``: per latent, the ``k`` highest activations over every selected row, exactly.

State ``[m, k]``: ``values`` float32 and ``rows`` int64 (global store rows), each row sorted
by value descending, ties by lower row first; unfilled slots are ``-inf`` / ``-1``. Memory
is O(m*k). A block's entries are first compared with each latent's current k-th entry (its
running threshold), so after warm-up almost every entry is rejected by one vectorized
comparison and only the few survivors reach the sort (buffered: ``_select.BestTable``). The order is total, so merges in
any order give the same table.

Output: ``top/values [m, k]`` float32 (0 where unfilled) and ``top/rows [m, k]`` int64
(-1 where unfilled).
"""

from __future__ import annotations

import numpy as np

from ._pass import Batch, Reducer
from ._select import BestTable


def _primary(a: dict) -> tuple[np.ndarray, int]:
    """Value descending: float32 bits mapped to a uint32 order, then inverted."""
    u = a["values"].astype(np.float32).view(np.uint32)
    asc = np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000))
    return (~asc).astype(np.uint64), 32


_PAD = {"values": -np.inf, "rows": -1}


class Top(Reducer):
    name = "top"

    def __init__(self, m: int, *, k: int = 20):
        super().__init__(m)
        self.k = int(k)
        self.best = BestTable(
            {"values": np.full((m, self.k), -np.inf, np.float32), "rows": np.full((m, self.k), -1, np.int64)},
            _PAD,
            _primary,
        )

    @property
    def table(self) -> dict:
        return self.best.table

    def config(self) -> dict:
        return {"k": self.k}

    def _offer(self, lat: np.ndarray, values: np.ndarray, rows: np.ndarray) -> None:
        tv, tr = self.best.kth("values")[lat], self.best.kth("rows")[lat]
        hit = (values > tv) | ((values == tv) & (rows < tr))
        self.best.push(lat[hit], {"values": values[hit], "rows": rows[hit]})

    def update(self, b: Batch) -> None:
        self._offer(b.cols, b.vals, b.rows[b.ent_row])

    def merge(self, other: "Top") -> None:
        real = other.table["rows"] >= 0
        lat = np.broadcast_to(np.arange(self.m)[:, None], real.shape)[real]
        self._offer(lat, other.table["values"][real], other.table["rows"][real])

    def state_dict(self) -> dict:
        return dict(self.table)

    def load_state_dict(self, sd: dict) -> None:
        self.best.table = {k: np.array(sd[k]) for k in ("values", "rows")}

    def result(self) -> dict:
        rows = self.table["rows"]
        return {"top/values": np.where(rows >= 0, self.table["values"], 0).astype(np.float32), "top/rows": rows}
