"""The Reducer protocol and one streaming pass: read a block of store rows, encode it once
with the SAE, feed every reducer.

Blocks: block ``k`` is store rows ``[k*B, (k+1)*B)`` (``B = block_rows``), cut to the
selected row range and filtered by flags and documents. Blocks are aligned to global rows,
not to a share's start, so every split of the rows (ranks, resumes) encodes exactly the
same row sets and every reducer sees exactly the same :class:`Batch` es.

A :class:`Batch` holds the selected rows of one block and their code in CSR form, with only
the *firing* entries (activation > 0): ``row_ptr [n+1]``, ``ent_row [nnz]`` (local row of
each entry), ``cols [nnz]`` int64 latent ids, ``vals [nnz]`` float32, plus the token
columns ``token/doc/pos/flags [n]``.

A :class:`Reducer` keeps a small state over the rows it has seen:

- ``update(batch)``: fold one block in (blocks arrive in increasing order);
- ``merge(other)``: fold in a reducer of the same config that saw the rows right after
  this one's (two ranks' shares, in rank order); the result must equal one reducer that
  saw both, bit for bit (integer counts, max, exact selections; float sums go through
  :class:`~actstore.analysis._tree.BlockTree`);
- ``state_dict() -> {name: ndarray}`` / ``load_state_dict``: the state as plain arrays
  (saved as npz, never pickled);
- ``result() -> {array path: ndarray}``: the arrays of the output group; ``attrs()``: JSON.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import AnalysisError

FLAG_BITS = {"bos": 1, "pad": 2, "special": 4}


@dataclass
class Batch:
    block: int
    rows: np.ndarray  # [n] int64 global store rows
    row_ptr: np.ndarray  # [n+1] int64
    ent_row: np.ndarray  # [nnz] int64 local row of each entry
    cols: np.ndarray  # [nnz] int64 latent
    vals: np.ndarray  # [nnz] float32, > 0
    token: np.ndarray  # [n] int32
    doc: np.ndarray  # [n] int64
    pos: np.ndarray  # [n] int32
    flags: np.ndarray  # [n] uint8
    m: int

    @property
    def n(self) -> int:
        return int(self.rows.size)


class Reducer:
    """Base of every job's accumulator (see the module docstring for the contract)."""

    name = ""

    def __init__(self, m: int):
        self.m = int(m)

    def config(self) -> dict:
        """The options that define the result (part of the analysis identity)."""
        return {}

    def update(self, batch: Batch) -> None:
        raise NotImplementedError

    def merge(self, other: "Reducer") -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load_state_dict(self, sd: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def attrs(self) -> dict:
        return {}


@dataclass(frozen=True)
class Selection:
    """Rows ``[lo, hi)`` of the store, less those with any ``drop_flags`` bit, and only the
    documents in ``docs`` when given (sorted document ids)."""

    lo: int
    hi: int
    drop_flags: int = 0
    docs: tuple | None = None

    def to_json(self) -> dict:
        return {
            "rows": [self.lo, self.hi],
            "drop_flags": self.drop_flags,
            "docs": None if self.docs is None else list(self.docs),
        }

    def blocks(self, block_rows: int) -> range:
        if self.hi <= self.lo:
            return range(0)
        return range(self.lo // block_rows, (self.hi - 1) // block_rows + 1)

    def share(self, block_rows: int, rank: int, world: int) -> range:
        """Rank ``rank``'s contiguous share of the blocks."""
        b = self.blocks(block_rows)
        n = len(b)
        return range(b.start + n * rank // world, b.start + n * (rank + 1) // world)


def parse_flags(drop_flags) -> int:
    if drop_flags is None:
        return 0
    if isinstance(drop_flags, (int, np.integer)) and not isinstance(drop_flags, bool):
        return int(drop_flags)
    names = drop_flags.split(",") if isinstance(drop_flags, str) else list(drop_flags)
    mask = 0
    for n in (str(x).strip().lower() for x in names):
        if n and n not in FLAG_BITS:
            raise AnalysisError(f"unknown flag {n!r} in drop_flags: use {', '.join(FLAG_BITS)}")
        mask |= FLAG_BITS.get(n, 0)
    return mask


class Encoder:
    """``sae.encode`` on a block of rows -> the firing entries in CSR form, as numpy; with
    ``latents`` (sorted ids) only those latents' entries (the others' are dropped here, so
    every job sees only the analysed latents; latent ids are unchanged)."""

    def __init__(self, sae, device=None, latents: np.ndarray | None = None):
        self.sae = sae.eval()  # BatchTopK must encode with its fixed threshold
        p = next(sae.parameters())
        self.device = torch.device(device) if device is not None else p.device
        self.dtype = p.dtype
        self.mask = None
        if latents is not None:
            self.mask = np.zeros(sae.cfg.m, bool)
            self.mask[latents] = True

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = x.shape[0]
        if n == 0:
            z = np.zeros(0, np.int64)
            return np.zeros(1, np.int64), z, z, np.zeros(0, np.float32)
        lat = self.sae.encode(x.to(self.device, self.dtype, non_blocking=True))
        row_ptr = lat.row_ptr.cpu().numpy().astype(np.int64, copy=False)
        cols = lat.cols.cpu().numpy().astype(np.int64, copy=False)
        vals = lat.vals.detach().float().cpu().numpy()
        ent_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(row_ptr))
        keep = vals > 0
        if self.mask is not None:
            keep &= self.mask[cols]
        if not keep.all():
            cols, vals, ent_row = cols[keep], vals[keep], ent_row[keep]
            row_ptr = np.r_[0, np.cumsum(np.bincount(ent_row, minlength=n))].astype(np.int64)
        return row_ptr, ent_row, cols, vals


def read_block(store, hook: str, sel: Selection, block: int, block_rows: int, d: int):
    """The selected rows of ``block``: (rows, token columns, activations float32 [n, d])."""
    lo, hi = max(sel.lo, block * block_rows), min(sel.hi, (block + 1) * block_rows)
    t = {k: v.numpy() for k, v in store.tokens(slice(lo, hi)).items()}
    keep = np.ones(hi - lo, dtype=bool)
    if sel.drop_flags:
        keep &= (t["flags"] & sel.drop_flags) == 0
    if sel.docs is not None:
        keep &= np.isin(t["doc"], np.asarray(sel.docs, dtype=np.int64))
    rows = np.arange(lo, hi, dtype=np.int64)
    if keep.all():
        x = store.read(hook, slice(lo, hi))
    else:
        rows, t = rows[keep], {k: v[keep] for k, v in t.items()}
        x = store.read(hook, rows) if rows.size else torch.zeros(0, d)
    return rows, t, x


def _feed(reducers: list[Reducer], batch: Batch, after_block) -> None:
    for r in reducers:
        r.update(batch)
    if after_block is not None:
        after_block(batch.block, batch.n)


def stream(
    store,
    hook: str,
    encoder: Encoder,
    sel: Selection,
    blocks: Iterable[int],
    block_rows: int,
    reducers: list[Reducer],
    after_block: Callable[[int, int], None] | None = None,
) -> None:
    """Feed every reducer every block of ``blocks``: each block read once (the next one is
    read by a helper thread while this one is encoded) and encoded once. The reducers take a
    block (then ``after_block``) on a second thread while the next block is encoded: the
    encode's GEMM and top-k release the GIL, and so do most of the reducers' NumPy sorts, so
    the two overlap; the blocks still reach the reducers one at a time, in order."""
    blocks, d = list(blocks), encoder.sae.cfg.d
    if not blocks:
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="actstore-analysis-read") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="actstore-analysis-reduce") as work,
    ):
        nxt = pool.submit(read_block, store, hook, sel, blocks[0], block_rows, d)
        fed = None
        try:
            for j, b in enumerate(blocks):
                rows, t, x = nxt.result()
                if j + 1 < len(blocks):
                    nxt = pool.submit(read_block, store, hook, sel, blocks[j + 1], block_rows, d)
                row_ptr, ent_row, cols, vals = encoder(x)
                batch = Batch(
                    b,
                    rows,
                    row_ptr,
                    ent_row,
                    cols,
                    vals,
                    t["token"],
                    t["doc"].astype(np.int64, copy=False),
                    t["pos"],
                    t["flags"],
                    encoder.sae.cfg.m,
                )
                if fed is not None:
                    fed.result()  # the previous block is in (and committed) before this one goes
                fed = work.submit(_feed, reducers, batch, after_block)
        finally:
            if fed is not None:
                fed.result()
