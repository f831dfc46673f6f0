"""One streaming pass over the selected rows of several hooks (no SAE): the engine of the
representation analyses (steering vectors, ...).

Blocks are aligned to global store rows (block ``k`` = rows ``[k*B, (k+1)*B)``), as in
``_pass.py``: each block's token columns are read once, :meth:`RowGroups.assign` gives each
row's group, and the selected rows of every hook are read (float32 ``[n, d]``). Rank ``r`` of
``w`` takes the contiguous share ``[n*r//w, n*(r+1)//w)`` of the blocks; float sums go
through :class:`~actstore.analysis._tree.BlockTree`, so any split merges bit-identically to
one pass. With ``resume`` a pass commits its state and continues after a crash
(``_checkpoint.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ._checkpoint import PassState
from ._pass import AnalysisError


@dataclass
class RowBlock:
    block: int
    rows: np.ndarray  # [n] int64 global rows (selected only)
    group: np.ndarray  # [n] int32
    doc: np.ndarray  # [n] int64
    x: dict  # hook -> float32 [n, d] torch tensor


def check_hooks(store, hooks) -> list[str]:
    hooks = [h.strip() for h in hooks.split(",")] if isinstance(hooks, str) else list(hooks)
    if not hooks:
        raise AnalysisError("no hooks given: pass hooks= (--hooks a,b)")
    bad = [h for h in hooks if h not in store.hooks]
    if bad:
        raise AnalysisError(f"unknown hook(s) {bad}: this store holds {', '.join(store.hooks)}")
    return hooks


def n_blocks(store, block_rows: int) -> int:
    return -(-store.rows // block_rows)


def share(nb: int, rank: int, world: int) -> range:
    return range(nb * rank // world, nb * (rank + 1) // world)


def read_block(store, hooks, groups, block: int, block_rows: int) -> RowBlock:
    lo, hi = block * block_rows, min(store.rows, (block + 1) * block_rows)
    t = {k: v.numpy() for k, v in store.tokens(slice(lo, hi)).items()}
    g = groups.assign(t)
    keep = g >= 0
    rows = np.arange(lo, hi, dtype=np.int64)[keep]
    x = {h: store.read(h, rows) for h in hooks} if rows.size else {}
    return RowBlock(block, rows, g[keep], t["doc"][keep].astype(np.int64), x)


def stream(
    store,
    hooks,
    groups,
    blocks: Iterable[int],
    block_rows: int,
    fn: Callable[[RowBlock], None],
    resume: PassState | None = None,
) -> None:
    """``fn(block)`` for every block of ``blocks`` that has selected rows, in order; the next
    block is read by a helper thread while ``fn`` runs.

    resume (``Checkpoint.track``): the pass's committed state is loaded first and the blocks
    it holds are skipped (all of them for a finished pass); the state is committed every
    ``commit_rows`` store rows and once more at the end."""
    blocks = list(blocks)
    if resume is not None:
        blocks = resume.begin(blocks)
    if blocks:
        with ThreadPoolExecutor(1, thread_name_prefix="actstore-rows") as pool:
            nxt = pool.submit(read_block, store, hooks, groups, blocks[0], block_rows)
            for j in range(len(blocks)):
                b = nxt.result()
                if j + 1 < len(blocks):
                    nxt = pool.submit(read_block, store, hooks, groups, blocks[j + 1], block_rows)
                if b.rows.size:
                    fn(b)
                if resume is not None:
                    span = min(store.rows, (b.block + 1) * block_rows) - b.block * block_rows
                    resume.after(b.block, span, j + 1 == len(blocks))
    if resume is not None:
        resume.finish()
