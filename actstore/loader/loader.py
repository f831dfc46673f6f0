"""``actstore.ActivationLoader``: shuffled, deterministic, resumable, rank-split batches.

The order of the rows is the plan's (``actstore.loader.plan``: blocks permuted per epoch,
a contiguous share of the stream per rank, a seeded shuffle window of many blocks). The
hot path, per window of blocks:

1. a producer thread makes the window's batch buffers (pinned when the batches go to a
   GPU) and works out where each kept row goes (inverse of the window's permutation);
2. a thread pool reads each block's chunks through the shard index, decodes each chunk
   into a per-thread scratch buffer and scatters its rows there with the native
   ``scatter_rows`` (``BlockFetcher``; GIL released), one window ahead of the batches
   being served;
3. on a GPU the consumer copies the stored bytes with ``non_blocking=True`` and the Triton
   ``dequant_normalize`` kernel decodes bf16/fp8/int8/q16, applies the per-row scale and the
   normalization, and writes the asked dtype; on the CPU the producer does that step.

Resume rule (``state_dict`` / ``load_state_dict``): the position is (epoch, batches yielded
in it), plus the options that fix the order and the store snapshot (segment names and row
counts when the loader was made). A state resumes exactly, with the same batches as an
uninterrupted run, when the seed, shuffle, hooks, flag filter and snapshot match; in the
middle of an epoch the batch size, buffer, drop_last and rank count must match too. At
an epoch boundary (``batch == 0``, which includes a state saved after an epoch's last
batch) any rank count resumes it, because every epoch's split is computed afresh.
Anything else is refused with a one-line error naming the option.
"""

from __future__ import annotations

import atexit
import math
import mmap
import queue
import sys
import threading
import weakref

import numpy as np
import torch

from .._dist import from_rank0, initialized_rank_world, local_device
from .._native import default_threads
from ..api import open as open_store
from ..ops.dequant_normalize import dequant_normalize
from ..store.errors import LoaderError
from ..store.format import ArraySpec, parse_flags
from ..store.reader import Store
from ..store.segment import SegmentReader
from .fetch import BlockFetcher
from .plan import Block, EpochPlan, make_blocks

STATE_VERSION = 1
NORMALIZE = ("mean_norm", "standardize")
TOKEN_KEYS = ("token", "doc", "pos")
# With tokens=True a batch also carries each row's global store row index (int64 [B]): the
# one unique name of a row ((doc, pos) is not: inserted tokens have pos -1). It is not a
# stored column: the producer writes it from the plan.
ROW_KEY = "row"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Stored numpy dtype -> a numpy dtype of the same width that torch can hold (torch has no
# general uint16 support, and only the bits matter).
_HOLDER = {np.dtype("uint16"): np.dtype("int16")}


# Loaders alive in this process. At exit their threads are stopped while the interpreter is
# still whole: an iterator left unfinished (``it = iter(loader); next(it)``) is otherwise
# finalized during module teardown, when its producer's stop() would meet module globals
# already set to None and print "Exception ignored in: <generator ...>" after the user's
# script has ended.
_LIVE: "weakref.WeakSet[ActivationLoader]" = weakref.WeakSet()


@atexit.register
def _stop_live_loaders() -> None:
    for loader in list(_LIVE):
        try:
            loader._stop_active()
            if loader._fetcher is not None:
                loader._fetcher.close()
                loader._fetcher = None
        except Exception:  # noqa: BLE001 - exiting: nothing left to report to
            pass


def _range(name: str, value) -> tuple[int, int] | None:
    """``(lo, hi)`` as two ints with ``lo < hi``, or None."""
    if value is None:
        return None
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise LoaderError(f"{name} must be a pair (start, stop) of integers, got {value!r}") from None
    if not 0 <= lo < hi:
        raise LoaderError(f"{name}=({lo}, {hi}) is empty or negative: give 0 <= start < stop")
    return lo, hi


def parse_drop_flags(drop_flags) -> int:
    """None, an int bit mask, or flag names ("bos,special" or a list) -> bit mask."""
    return parse_flags(drop_flags, "drop_flags", LoaderError)


class ActivationLoader:
    """Batches of stored activations, shuffled, deterministic and resumable.

    Args:
        store: a path / URL or an open :class:`Store`.
        hooks: one hook name (batches are ``[B, d]`` tensors) or a list of them (batches
            are dicts ``{hook: [B, d_hook]}``, row ``i`` of every hook from the same token).
        batch_size: rows per batch (>= 1); the last batch of an epoch is shorter unless
            ``drop_last``.
        shuffle: permute blocks per epoch and rows within each shuffle window. False reads
            in store order (for analysis passes).
        seed: the seed of every permutation; the same seed gives the same batches.
        epochs: how many epochs one iteration runs (None: without end).
        device: where the batches land ("auto": this rank's GPU or the CPU; a bare "cuda":
            this rank's GPU, see :func:`actstore._dist.local_device`).
        dtype: the batches' dtype (float32, bfloat16, float16).
        normalize: None; ``"mean_norm"`` scales each hook by ``sqrt(d) / mean_norm`` from
            the store's statistics (SAELens' convention: mean row norm becomes sqrt(d);
            the factors are in ``scale_factors``); ``"standardize"`` gives
            ``(x - mean) / std`` per dimension. Both use the statistics of every row of
            the store unless ``stats`` names others.
        drop_flags: rows to leave out, by flag ("bos", "special", "pad") or bit mask.
        tokens: also return ``token`` (int32), ``doc`` (int64) and ``pos`` (int32) ``[B]``,
            and ``row`` (int64 ``[B]``): each row's global index in the store (segments in
            name order, as ``Store.read`` counts), unique where ``(doc, pos)`` is not
            (batches are then dicts).
        drop_last: every rank yields the same number of full batches, ``(N // W) // B``
            (what DDP needs); the rows past that are skipped this epoch.
        buffer_rows: rows in one shuffle window (rounded up to whole blocks of ~2 MiB
            chunks). Host memory is about 2-3 windows of stored bytes: 65536 rows of
            d=4096 bf16 is 512 MiB per window. On the CPU the batch buffers are kept for
            reuse until :meth:`close` (a batch still held is never reused).
        threads: decode threads (default min(CPU count, 8)).
        prefetch: batches prepared ahead of the consumer.
        rank: this process's share, of ``world_size``; default from ``torch.distributed``
            when it is initialized, else 0.
        world_size: how many shares; default from ``torch.distributed``, else 1.
        rows: ``(start, stop)``: only the rows ``[start, stop)`` of the store, counted in
            store order over the committed rows (before the flag filter). A held-out
            split is two loaders over complementary ranges.
        docs: ``(lo, hi)``: only the rows whose document id is in ``[lo, hi)``.
        stats: per hook, the statistics to normalize with in place of the store's (the
            :meth:`Store.stats` form: ``mean_norm`` for ``"mean_norm"``, ``mean`` and
            ``std`` for ``"standardize"``); hooks it does not name use the store's. The
            trainer passes its training rows' statistics, so that the held-out rows do
            not shape the scale. :meth:`norm_stats` gives what a hook is normalized with.

    Iterating runs from the current position to the end of ``epochs``; ``state_dict()``
    taken between batches resumes exactly there (the rule is in this module's docstring).
    The rows are the store's committed rows when the loader was made (its snapshot).
    """

    def __init__(
        self,
        store: Store | str,
        hooks: str | list[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        normalize: str | None = None,
        drop_flags=None,
        tokens: bool = False,
        drop_last: bool = False,
        buffer_rows: int = 65536,
        threads: int | None = None,
        prefetch: int = 4,
        rank: int | None = None,
        world_size: int | None = None,
        rows: tuple[int, int] | None = None,
        docs: tuple[int, int] | None = None,
        stats: dict[str, dict] | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise LoaderError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(buffer_rows, bool) or not isinstance(buffer_rows, (int, np.integer)) or buffer_rows < 1:
            raise LoaderError(f"buffer_rows must be a positive integer, got {buffer_rows!r}")
        if epochs is not None and (not isinstance(epochs, (int, np.integer)) or epochs < 0):
            raise LoaderError(f"epochs must be a non-negative integer or None, got {epochs!r}")
        if dtype not in _DTYPES:
            raise LoaderError(f"dtype {dtype} is not supported: use torch.float32, torch.bfloat16 or torch.float16")
        if normalize is not None and normalize not in NORMALIZE:
            raise LoaderError(f"unknown normalize {normalize!r}: use None, 'mean_norm' or 'standardize'")
        if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 1:
            raise LoaderError(f"prefetch must be a positive integer, got {prefetch!r}")
        self.device = local_device(device)  # a bare "cuda" is this rank's GPU (the one rule)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LoaderError(f"device {device} asked for, but torch sees no CUDA device; use device='cpu'")
        if self.device.type not in ("cpu", "cuda"):
            raise LoaderError(f"device {device} is not supported: use 'cpu' or 'cuda'")

        _LIVE.add(self)
        self._own_store = not isinstance(store, Store)
        if self._own_store:
            store = open_store(store)
        self.store: Store = store
        self._fetcher: BlockFetcher | None = None
        self._active = None
        self._generation = 0
        self._single = isinstance(hooks, str)
        self.hooks = [hooks] if self._single else list(hooks)
        if not self.hooks:
            raise LoaderError("no hooks given: pass a hook name or a list of them")
        if len(set(self.hooks)) != len(self.hooks):
            raise LoaderError(f"hooks {self.hooks} name a hook twice")
        self._specs = [self.store._hook(h) for h in self.hooks]  # UnknownHookError, one line
        if tokens and set(self.hooks) & {*TOKEN_KEYS, ROW_KEY}:
            raise LoaderError(
                f"a hook named {sorted(set(self.hooks) & {*TOKEN_KEYS, ROW_KEY})[0]!r} collides with the token "
                "columns of tokens=True; read the tokens with Store.tokens instead"
            )

        r, w = initialized_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise LoaderError(f"rank {self.rank} of world size {self.world_size} is not a valid share")

        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epochs = None if epochs is None else int(epochs)
        self.dtype = dtype
        self.normalize = normalize
        self.drop_mask = parse_drop_flags(drop_flags)
        self.row_range = _range("rows", rows)
        self.doc_range = _range("docs", docs)
        self._given_stats = dict(stats or {})
        if set(self._given_stats) - set(self.hooks):
            raise LoaderError(
                f"stats name {sorted(set(self._given_stats) - set(self.hooks))[0]!r}, which is not among the "
                f"loader's hooks {self.hooks}"
            )
        self.tokens = bool(tokens)
        self.drop_last = bool(drop_last)
        self.buffer_rows = int(buffer_rows)
        # Object storage: a fetch waits on the network, so the pool keeps the storage's
        # requests in flight (ACTSTORE_S3_INFLIGHT) even on few cores.
        self.threads = int(threads) if threads else max(default_threads(), self.store.storage.inflight)
        # Threads of the producer's CPU conversion while the pool still decodes (it gets
        # them all once decoding is done): few, so that it does not fight the decoders.
        self.convert_threads = max(1, min(self.threads, default_threads()) // 4)
        self.prefetch = int(prefetch)

        arrays = {a.path: a for a in self.store.schema.arrays()}
        self._arrays: list[ArraySpec] = []
        for spec in self._specs:
            self._arrays.append(arrays[spec.array])
            if spec.scale_array:
                self._arrays.append(arrays[spec.scale_array])
        if self.tokens:
            self._arrays += [arrays[f"tokens/{k}"] for k in TOKEN_KEYS]
        self._flags_spec = arrays["tokens/flags"]
        self.block_rows = max(spec.chunk_rows for spec in self._specs)
        self.window_blocks = max(1, -(-self.buffer_rows // self.block_rows))
        # Batches alive at once: two windows' (one served, one decoding), the queue's, and
        # the one or two the caller holds.
        per_window = -(-self.window_blocks * self.block_rows // self.batch_size) + 1
        self._host_buffers = _HostBuffers(cap=2 * per_window + self.prefetch + 2)

        snapshot = [(s.name, s.rows) for s in self.store.segments]
        if rank is None and world_size is None:
            # Ranks opened the store at different moments, and writers may be committing (on
            # object storage, on other nodes): every rank plans over rank 0's snapshot.
            pinned = from_rank0(snapshot)
            if pinned != snapshot:
                self.store.refresh()
            snapshot = pinned
        self._set_snapshot(snapshot)
        self._set_normalization(None)
        self._epoch = 0
        self._batch = 0

    # -- snapshot and normalization -----------------------------------------------------

    def _set_snapshot(self, seg_rows: list[tuple[str, int]]) -> None:
        """Plan over rows ``[0, rows)`` of each named segment."""
        by_name = {s.name: s for s in self.store.segments}
        segs = []
        for name, rows in seg_rows:
            cur = by_name.get(name)
            if cur is None or cur.rows < rows:
                have = 0 if cur is None else cur.rows
                raise LoaderError(
                    f"segment {name!r} had {rows} committed rows when the state was saved, the store at "
                    f"{self.store.path} has {have}; resume against the same store"
                )
            if rows:
                segs.append(SegmentReader(self.store.storage, self.store.schema, name, rows, cur.commit))
        self._snapshot = [(s.name, s.rows) for s in segs]
        self._segments = segs
        if not segs:
            raise LoaderError(f"store {self.store.path} has no committed rows: capture or append activations first")
        self.blocks: list[Block] = make_blocks([s.rows for s in segs], self.block_rows)
        # Global store row of each block's first row (segments in order): the ``row`` column.
        seg_base = np.concatenate([[0], np.cumsum([s.rows for s in segs])]).astype(np.int64)
        self._block_base = np.array([seg_base[b.segment] + b.start for b in self.blocks], dtype=np.int64)
        self._kept_local: dict[int, np.ndarray] = {}
        if self.drop_mask or self.row_range or self.doc_range:
            kept = np.empty(len(self.blocks), dtype=np.int64)
            flags = [s.read_rows(self._flags_spec, 0, s.rows) for s in segs] if self.drop_mask else None
            doc_spec = next(a for a in self.store.schema.arrays() if a.path == "tokens/doc")
            doc_ids = [s.read_rows(doc_spec, 0, s.rows) for s in segs] if self.doc_range else None
            seg_first = np.concatenate([[0], np.cumsum([s.rows for s in segs])])  # stream row of each segment's row 0
            for b, blk in enumerate(self.blocks):
                keep = np.ones(blk.rows, dtype=bool)
                if flags is not None:
                    keep &= (flags[blk.segment][blk.start : blk.start + blk.rows] & self.drop_mask) == 0
                if self.row_range:
                    at = seg_first[blk.segment] + blk.start + np.arange(blk.rows)
                    keep &= (at >= self.row_range[0]) & (at < self.row_range[1])
                if doc_ids is not None:
                    d = doc_ids[blk.segment][blk.start : blk.start + blk.rows]
                    keep &= (d >= self.doc_range[0]) & (d < self.doc_range[1])
                self._kept_local[b] = np.flatnonzero(keep).astype(np.int64)
                kept[b] = self._kept_local[b].size
            if kept.sum() == 0 and not (self.row_range or self.doc_range):
                raise LoaderError(
                    f"drop_flags={self.drop_mask} leaves no rows of store {self.store.path}: "
                    "every committed row carries a dropped flag"
                )
            if kept.sum() == 0:
                raise LoaderError(
                    f"drop_flags={self.drop_mask}, rows={self.row_range} and docs={self.doc_range} leave no "
                    f"rows of store {self.store.path}: widen the selection"
                )
        else:
            kept = np.array([b.rows for b in self.blocks], dtype=np.int64)
        self._kept = kept
        if self._fetcher is not None:  # it holds the old segment readers
            self._fetcher.close()
            self._fetcher = None

    def norm_stats(self, hook: str) -> dict:
        """The statistics ``hook`` is normalized with when the loader is made: those given as
        ``stats``, else the store's over every row (:meth:`Store.stats`). A state loaded with
        :meth:`load_state_dict` brings its own normalization, which these do not show."""
        if hook not in self.hooks:
            raise LoaderError(f"hook {hook!r} is not among the loader's hooks {self.hooks}")
        return self._given_stats[hook] if hook in self._given_stats else self.store.stats(hook)

    def _set_normalization(self, saved: dict | None) -> None:
        """Per hook ``(shift [d] | None, mul [d] | None)`` float32 on the device."""
        self._norm: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.scale_factors: dict[str, float] = {}
        for spec in self._specs:
            shift = mul = None
            if saved is not None:
                s = saved[spec.name]
                shift = None if s["shift"] is None else torch.tensor(s["shift"], dtype=torch.float32)
                mul = None if s["mul"] is None else torch.tensor(s["mul"], dtype=torch.float32)
            elif self.normalize == "mean_norm":
                mean_norm = self.norm_stats(spec.name)["mean_norm"]
                if not mean_norm or not math.isfinite(mean_norm) or mean_norm <= 0:
                    raise LoaderError(
                        f"hook {spec.name!r} has no usable mean norm in its statistics "
                        f"({mean_norm}); use normalize=None"
                    )
                mul = torch.full((spec.d,), math.sqrt(spec.d) / mean_norm, dtype=torch.float32)
            elif self.normalize == "standardize":
                st = self.norm_stats(spec.name)
                std = np.asarray(st["std"], dtype=np.float64)
                shift = torch.from_numpy(np.asarray(st["mean"], dtype=np.float32))
                mul = torch.from_numpy((1.0 / np.where(std > 0, std, 1.0)).astype(np.float32))  # constant dims: 1
            if mul is not None and self.normalize == "mean_norm":
                self.scale_factors[spec.name] = float(mul[0])
            self._norm[spec.name] = (
                None if shift is None else shift.to(self.device),
                None if mul is None else mul.to(self.device),
            )

    # -- plan ----------------------------------------------------------------------------

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's :class:`EpochPlan` for ``epoch``."""
        return EpochPlan(
            self._kept,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world_size,
            shuffle=self.shuffle,
            window_blocks=self.window_blocks,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.plan(0).batches

    @property
    def rows(self) -> int:
        """Rows per epoch, all ranks together (after the flag filter)."""
        return int(self._kept.sum())

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch``."""
        self._stop_active()
        self._epoch, self._batch = int(epoch), 0

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position and everything that fixes the order; JSON-ready."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "hooks": list(self.hooks),
            "drop_flags": self.drop_mask,
            "rows": self.row_range,
            "docs": self.doc_range,
            "batch_size": self.batch_size,
            "buffer_rows": self.buffer_rows,
            "drop_last": self.drop_last,
            "rank": self.rank,
            "world_size": self.world_size,
            "segments": [list(x) for x in self._snapshot],
            "normalize": self.normalize,
            "norm": {
                h: {"shift": None if s is None else s.cpu().tolist(), "mul": None if m is None else m.cpu().tolist()}
                for h, (s, m) in self._norm.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (see the resume rule in this module's docstring)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise LoaderError(
                f"not an ActivationLoader state of version {STATE_VERSION} "
                f"(got version {state.get('version') if isinstance(state, dict) else type(state).__name__})"
            )
        mine = self.state_dict()
        state = {"rows": None, "docs": None, **state}  # states saved before the row/doc selection existed
        missing = [k for k in mine if k not in state] or [h for h in self.hooks if h not in (state.get("norm") or {})]
        if missing:
            raise LoaderError(f"the state lacks {missing[0]!r}: it is damaged or not from this loader's hooks")
        for key in ("hooks", "seed", "shuffle", "drop_flags", "normalize", "rows", "docs"):
            if (list(state[key]) if key in ("rows", "docs") and state[key] else state[key]) != (
                list(mine[key]) if key in ("rows", "docs") and mine[key] else mine[key]
            ):
                raise LoaderError(
                    f"the state was saved with {key}={state[key]!r}, this loader has {key}={mine[key]!r}; "
                    f"make the loader with {key}={state[key]!r} to resume"
                )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if batch:
            for key in ("batch_size", "buffer_rows", "drop_last"):
                if state[key] != mine[key]:
                    raise LoaderError(
                        f"the state was saved mid-epoch (epoch {epoch}, batch {batch}) with "
                        f"{key}={state[key]!r}, this loader has {key}={mine[key]!r}; use the same "
                        f"{key}, or resume from a state saved at an epoch boundary"
                    )
            if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
                raise LoaderError(
                    f"the state was saved mid-epoch (epoch {epoch}, batch {batch}) by rank "
                    f"{state['rank']} of {state['world_size']}, this is rank {self.rank} of "
                    f"{self.world_size}; resume with {state['world_size']} ranks, or from a state "
                    "saved at an epoch boundary"
                )
        self._stop_active()
        snapshot = [(n, int(r)) for n, r in state["segments"]]
        if snapshot != self._snapshot:  # the same rows need no new plan (nor a re-read of the flags)
            self._set_snapshot(snapshot)
        self._set_normalization(state["norm"])
        self._epoch, self._batch = epoch, batch

    # -- iteration -----------------------------------------------------------------------

    def __iter__(self):
        self._stop_active()
        return self._iterate()

    def _iterate(self):
        # Only the newest iterator moves the position: iter(), set_epoch(), load_state_dict()
        # and close() stop this one's producer, which ends it at its next step.
        self._generation += 1
        gen = self._generation
        while self.epochs is None or self._epoch < self.epochs:
            plan = self.plan(self._epoch)
            if plan.batches == 0 and self.epochs is None:
                raise LoaderError(
                    f"rank {self.rank} of {self.world_size} gets no batch of {self.batch_size} rows from "
                    f"the {plan.total} rows of an epoch{' (drop_last)' if self.drop_last else ''}, so "
                    "epochs=None would never yield; use fewer ranks, a smaller batch_size or finite epochs"
                )
            if self._batch >= plan.batches:
                self._epoch, self._batch = self._epoch + 1, 0
                continue
            if self._fetcher is None:
                self._fetcher = BlockFetcher(
                    self._segments, self._arrays, self.block_rows, self.threads, widen=self._widened()
                )
            producer = _Producer(self, plan, self._batch)
            self._active = producer
            try:
                for host in producer:
                    if gen != self._generation:
                        return
                    batch = self._finish(host)
                    self._batch += 1
                    if self._batch >= plan.batches:
                        self._epoch, self._batch = self._epoch + 1, 0
                    yield batch
                if gen != self._generation:
                    return
            finally:
                producer.stop()
                if self._active is producer:
                    self._active = None

    def _widened(self) -> frozenset[str]:
        """Arrays that reach the batch already in their final form: bf16 bits read as plain
        float32 on the CPU are widened per chunk by the fetcher (see BlockFetcher)."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return frozenset()
        return frozenset(
            spec.array
            for spec in self._specs
            if spec.dtype.name == "bf16" and all(t is None for t in self._norm[spec.name])
        )

    def _stop_active(self) -> None:
        self._generation += 1
        if self._active is not None:
            self._active.stop()
            self._active = None

    def _convert(self, stored: dict[str, torch.Tensor], threads: int = 0) -> dict[str, torch.Tensor]:
        """Stored rows (on the target device) -> the batch: dequantized, normalized, dtype."""
        out = {}
        widened = self._fetcher.widen if self._fetcher is not None else frozenset()
        for spec in self._specs:
            if spec.array in widened:
                out[spec.name] = stored[spec.array]
                continue
            scale = stored.get(spec.scale_array) if spec.scale_array else None
            shift, mul = self._norm[spec.name]
            out[spec.name] = dequant_normalize(
                stored[spec.array], spec.dtype, scale, shift, mul, self.dtype, threads=threads
            )
        if self.tokens:
            for k in TOKEN_KEYS:
                out[k] = stored[f"tokens/{k}"].reshape(-1)
            out[ROW_KEY] = stored[ROW_KEY]
        return out

    def _finish(self, host: dict[str, torch.Tensor]):
        """Consumer side: on a GPU copy the pinned stored rows and convert there."""
        if self.device.type == "cuda":
            host = self._convert({k: v.to(self.device, non_blocking=True) for k, v in host.items()})
        return host[self.hooks[0]] if self._single and not self.tokens else host

    def close(self) -> None:
        """Stop the background work and release the threads (and the store, if opened here)."""
        self._stop_active()
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None
        self._host_buffers.clear()
        if self._own_store:
            self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._stop_active()
            if self._fetcher is not None:
                self._fetcher.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"ActivationLoader({self.store.path!r}, hooks={self.hooks}, batch_size={self.batch_size}, "
            f"rank={self.rank}/{self.world_size}, epoch={self._epoch}, batch={self._batch})"
        )


class _HostBuffers:
    """CPU batch buffers kept for reuse once no batch uses them any more.

    A fresh batch buffer costs a page fault per 4 KiB page at its first write, and those
    writes are the decode workers' scatters: on 2 cores, scattering a decoded chunk's rows
    into fresh batch memory took ~10x as long as into memory already touched (4.5 ms against
    0.45 ms per 1.5 MiB chunk; benchmarks/results/loader_profile_quick.json). A buffer is handed
    out again only when nothing else refers to it: a batch (or any view of it, numpy or
    torch) that the caller still holds keeps the buffer's reference count up (a tensor made
    by ``torch.from_numpy`` holds its array), so a held batch is never overwritten. Only
    the producer thread calls :meth:`take`. At most ``cap`` buffers per shape are kept;
    past that they are plain allocations, freed with their batch.
    """

    def __init__(self, cap: int):
        self.cap = cap
        self._bufs: dict[tuple, list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` that nothing else refers to (contents undefined)."""
        kept = self._bufs.setdefault((shape, np.dtype(dtype).str), [])
        for i in range(len(kept)):
            if sys.getrefcount(kept[i]) <= _UNUSED_REFS:
                return kept[i]
        buf = _host_array(shape, np.dtype(dtype))
        if len(kept) < self.cap:
            kept.append(buf)
        return buf

    def clear(self) -> None:
        self._bufs.clear()


_HUGE_PAGE = 2 << 20


def _host_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new array for a CPU batch. From 2 MiB up it is an anonymous mapping of whole 2 MiB
    huge pages (``MADV_HUGEPAGE``, where Linux offers it): its first writes then fault once
    per 2 MiB instead of once per 4 KiB (a 3 MiB batch: 2 faults and 0.7 ms, against 768
    faults and 2.3-3.5 ms for ``np.empty`` on the 2-core machine of the profile). It wastes
    at most the rest of the last huge page (under 2 MiB per batch buffer)."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes < _HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype=dtype)
    m = mmap.mmap(-1, -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP compiled out or refused: small pages, as np.empty would get
        pass
    return np.frombuffer(m, dtype=dtype, count=count).reshape(shape)


# References to an array that only a list refers to, as ``sys.getrefcount(lst[i])`` counts
# them (the list's, and the call's argument), measured rather than assumed.
_probe = [np.empty(0)]
_UNUSED_REFS = sys.getrefcount(_probe[0])
del _probe

_END = object()


class _Error:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Producer:
    """A thread that turns one epoch's plan, from batch ``first``, into host batches."""

    def __init__(self, loader: ActivationLoader, plan: EpochPlan, first: int):
        self.loader = loader
        self.plan = plan
        self.first = first
        self.q: queue.Queue = queue.Queue(maxsize=loader.prefetch)
        self._stop = threading.Event()
        self._stopped = False
        self._futures: dict[int, list] = {}  # window -> futures of its blocks
        self._buffers: dict[int, dict] = {}  # batch -> host buffers being filled
        self.thread = threading.Thread(target=self._run, name="actstore-loader", daemon=True)
        self.thread.start()

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is _END:
                return
            if isinstance(item, _Error):
                raise item.exc
            yield item

    def stop(self) -> None:
        """Stop the thread; an iterator still reading this producer then ends. Idempotent:
        a second call (the iterator's ``finally`` after the loader stopped it) does nothing,
        so a generator finalized at interpreter exit touches no module state."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        while self.thread.is_alive():
            self._drain()
            self.thread.join(timeout=0.05)
        self._drain()  # a batch put just before the thread saw the stop
        self.q.put_nowait(_END)
        for futs in self._futures.values():
            for f in futs:
                f.cancel()
        self._futures.clear()

    def _drain(self) -> None:
        try:
            while True:
                self.q.get_nowait()
        except queue.Empty:
            pass

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._batches():
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Error(e))

    # -- windows -------------------------------------------------------------------------

    def _scatter_window(self, w: int, start: int, end: int) -> list:
        """Submit the decode-and-scatter of window ``w``'s blocks; returns their futures.

        Kept row ``j`` of the window goes to stream row ``ws + inv[j]`` (``inv`` inverts
        the window's order), i.e. batch ``// B``, row ``% B``; rows outside ``[start, end)``
        (before a resume point, past ``drop_last``) are not read. Batch buffers are made
        here, before any block writes to them.
        """
        plan, B, loader = self.plan, self.plan.batch_size, self.loader
        ws = int(plan.window_starts[w])
        n = int(plan.window_starts[w + 1]) - ws
        inv = np.empty(n, dtype=np.int64)
        inv[plan.window_order(w)] = np.arange(n, dtype=np.int64)
        stream = inv + ws
        b_lo = max(ws, start) // B
        b_hi = (min(ws + n, end) - 1) // B
        for b in range(b_lo, b_hi + 1):
            if b not in self._buffers:
                self._buffers[b] = self._new_batch(min(B, end - b * B))
        dsts = {a.path: [self._buffers[b][a.path][1] for b in range(b_lo, b_hi + 1)] for a in loader._arrays}
        futures, j = [], 0
        for p in plan.windows[w]:
            k = p.hi - p.lo
            rows = stream[j : j + k]
            keep = (rows >= start) & (rows < end)
            kept = loader._kept_local.get(p.block)
            local = np.arange(p.lo, p.hi, dtype=np.int64) if kept is None else kept[p.lo : p.hi]
            if not keep.all():
                rows, local = rows[keep], local[keep]
            if rows.size and loader.tokens:
                # The global store row of each kept row, written here from the plan (no read):
                # the batch's ``row`` column, in the same slots as the rows the fetcher scatters.
                glob = loader._block_base[p.block] + local
                bidx = rows // B
                for b in np.unique(bidx):
                    sel = bidx == b
                    self._buffers[int(b)][ROW_KEY][1][rows[sel] % B] = glob[sel]
            if rows.size:
                futures.append(
                    loader._fetcher.submit(
                        loader.blocks[p.block],
                        np.ascontiguousarray(local),
                        (rows // B - b_lo).astype(np.int32),
                        rows % B,
                        dsts,
                    )
                )
            j += k
        return futures

    def _new_batch(self, n: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        """Host buffers of one batch: ``{path: (tensor, 2-D numpy view)}``, pinned for a GPU."""
        pin = self.loader.device.type == "cuda"
        out = {}
        widened = self.loader._fetcher.widen
        for a in self.loader._arrays:
            holder = np.dtype(np.float32) if a.path in widened else _HOLDER.get(a.dtype, a.dtype)
            width = int(np.prod(a.row_shape)) if a.row_shape else 1
            if pin:
                t = torch.empty((n, width), dtype=_torch_dtype(holder), pin_memory=True)
                buf = t.numpy()
            else:
                buf = self.loader._host_buffers.take((n, width), holder)
                t = torch.from_numpy(buf)
            out[a.path] = (t if a.row_shape else t.reshape(-1), buf)
        if self.loader.tokens:
            if pin:
                t = torch.empty(n, dtype=torch.int64, pin_memory=True)
            else:
                t = torch.from_numpy(self.loader._host_buffers.take((n,), np.dtype(np.int64)))
            out[ROW_KEY] = (t, t.numpy())
        return out

    def _batches(self):
        plan, B = self.plan, self.plan.batch_size
        start, end = self.first * B, plan.yield_rows
        if start >= end:
            return
        w_first, w_last = plan.window_of_row(start), plan.window_of_row(end - 1)
        emit = self.first
        for w in range(w_first, w_last + 1):
            for ww in (w, w + 1):  # decode the next window while this one finishes
                if ww <= w_last and ww not in self._futures:
                    self._futures[ww] = self._scatter_window(ww, start, end)
            futures = self._futures.pop(w)
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            done = min(int(plan.window_starts[w + 1]), end)  # stream rows [start, done) are in place
            while emit * B < end and min((emit + 1) * B, end) <= done:
                if self._stop.is_set():
                    return
                yield self._finish(self._buffers.pop(emit))
                emit += 1

    def _finish(self, bufs: dict) -> dict[str, torch.Tensor]:
        out = {path: t for path, (t, _) in bufs.items()}
        if self.loader.device.type == "cuda":
            return out
        # The CPU conversion runs here; with no window left to decode it takes every thread.
        loader = self.loader
        return loader._convert(out, loader.convert_threads if self._futures else loader.threads)


def _torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
