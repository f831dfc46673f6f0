"""The loader's plan: which rows each rank yields, in which order, for every epoch.

The plan is pure arithmetic on the store's committed row counts (and, when flags are
filtered, the flags column), so every rank computes its own share with no coordination,
and the same seed always gives the same batches.

For epoch ``e`` with seed ``s``:

1. **Blocks.** Each segment's committed rows are cut into blocks of ``block_rows`` rows
   (the largest inner-chunk row count of the hooks read, so a block is whole chunks of
   every array; the last block of a segment may be shorter). A block's *kept* rows are
   those whose flags are not filtered out.
2. **Block order.** The blocks are permuted with ``SeedSequence([s, e])`` (in store order
   when ``shuffle=False``). Reading them in that order gives the epoch's *stream* of kept
   rows, ``N`` of them.
3. **Ranks.** Rank ``r`` of ``W`` takes stream rows ``[N*r//W, N*(r+1)//W)``: contiguous,
   disjoint, covering every kept row once, and balanced to one row. A rank reads only
   the blocks its range touches (the two at its edges in part).
4. **Windows (the shuffle buffer).** The rank's blocks are grouped, in order, into windows
   of ``window_blocks`` blocks. A window's kept rows are permuted with
   ``SeedSequence([s, e, W, r, w])`` and appended to the rank's row order.
5. **Batches.** Batch ``i`` is rows ``[i*B, (i+1)*B)`` of that order: drawn from the
   buffer without replacement, and a batch may span two windows. The last batch is
   shorter unless ``drop_last``, which gives every rank ``(N//W)//B`` full batches (the
   same count on every rank, as DDP needs) and skips the rest.

So the position in an epoch is one number, the batches already yielded; resuming computes
the window that batch starts in and reads from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    """Rows ``[start, start + rows)`` of segment number ``segment`` (in the store's order)."""

    segment: int
    start: int
    rows: int


@dataclass(frozen=True)
class Piece:
    """Kept rows ``[lo, hi)`` (counted among the block's kept rows) of block ``block``."""

    block: int
    lo: int
    hi: int


def make_blocks(segment_rows: list[int], block_rows: int) -> list[Block]:
    """Cut each segment's committed rows into blocks of ``block_rows`` (last one shorter)."""
    out = []
    for s, n in enumerate(segment_rows):
        for start in range(0, n, block_rows):
            out.append(Block(s, start, min(block_rows, n - start)))
    return out


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


class EpochPlan:
    """Rank ``rank`` of ``world``'s rows for epoch ``epoch``.

    Args:
        kept: ``[n_blocks]`` int64, kept rows per block (the block's row count when no
            flags are filtered).
        window_blocks: blocks per shuffle window (>= 1).
    """

    def __init__(
        self,
        kept: np.ndarray,
        *,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        shuffle: bool,
        window_blocks: int,
        batch_size: int,
        drop_last: bool,
    ):
        self.kept = np.asarray(kept, dtype=np.int64)
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.shuffle, self.batch_size = shuffle, batch_size
        n_blocks = len(self.kept)
        self.order = _rng(seed, epoch).permutation(n_blocks) if shuffle else np.arange(n_blocks)
        self.total = int(self.kept.sum())  # N: kept rows in the epoch, all ranks
        lo, hi = self.total * rank // world, self.total * (rank + 1) // world
        self.rows = hi - lo
        if drop_last:
            self.batches = (self.total // world) // batch_size
        else:
            self.batches = -(-self.rows // batch_size)
        self.yield_rows = min(self.rows, self.batches * batch_size)  # rows this rank yields

        # The pieces of blocks (in stream order) that fall in [lo, hi).
        ends = np.cumsum(self.kept[self.order])
        starts = ends - self.kept[self.order]
        pieces = []
        first = int(np.searchsorted(ends, lo, side="right"))
        for pos in range(first, n_blocks):
            if starts[pos] >= hi:
                break
            a, b = max(lo, int(starts[pos])), min(hi, int(ends[pos]))
            if b > a:
                pieces.append(Piece(int(self.order[pos]), a - int(starts[pos]), b - int(starts[pos])))
        self.windows: list[list[Piece]] = [pieces[i : i + window_blocks] for i in range(0, len(pieces), window_blocks)]
        sizes = np.array([sum(p.hi - p.lo for p in w) for w in self.windows], dtype=np.int64)
        self.window_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def window_order(self, w: int) -> np.ndarray:
        """``[rows of window w]`` int64: the order in which the window's kept rows are yielded."""
        n = int(self.window_starts[w + 1] - self.window_starts[w])
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return _rng(self.seed, self.epoch, self.world, self.rank, w).permutation(n).astype(np.int64)

    def window_of_row(self, row: int) -> int:
        """The window holding row ``row`` of this rank's order."""
        return int(np.searchsorted(self.window_starts, row, side="right")) - 1
