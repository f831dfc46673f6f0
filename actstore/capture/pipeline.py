"""The path from the capture kernel to the store, off the model's thread.

Per batch, on the model's thread (``Sink.put``):

1. wait for a free ring slot (backpressure: at most ``slots`` batches in flight, so
   memory does not grow with the run);
2. the capture kernel packs each hook into that slot's device staging buffers;
3. on CUDA, a side stream waits for the kernel's event and copies the packed rows into
   the slot's pinned host buffers (``non_blocking``), then records a copy event;
4. the slot goes on a queue.

A writer thread takes slots in order, waits for their copy events, turns the moments
into statistics, handles NaN/inf rows, appends to the segment (whose encoder pool
compresses whole shards; Blosc releases the GIL) and frees the slot. It commits after
any batch that completed a shard, and at least every ``commit_every`` seconds, recording
how many batches the committed rows cover. On the CPU the writer thread also runs the
reference pack (no copies), so the model's thread does nothing but forwards.

A failed write (full disk, I/O error) stops the writer; the next ``put`` raises it as a
one-line CaptureError, and everything committed before it stays readable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ops.capture_pack import capture_pack
from ..store.convert import Packed, from_stored
from ..store.errors import CaptureError
from ..store.format import parse_dtype
from ..store.stats import RunningStats
from ..store.writer import SegmentWriter


def _libc_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Why: each batch allocates and frees tens of MB (activations, their float64 moments, the
    stored copy). After glibc frees one large mmapped block it raises its mmap threshold to
    that size, so later blocks of that size come from the threads' heaps, which keep what is
    freed. A d=4096 capture (tests/helpers/wide_capture.py with both layers' outputs hooked,
    batches of 512 rows, 2 shared cores) peaked 105, 198 and 210 MB over the model at 1024,
    4096 and 12288 tokens; trimming after every batch the writer thread writes (0.06 ms a
    call), 103, 150 and 132 MB."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class Progress:
    """Counters the progress line reads (updated by the writer thread)."""

    rows: int = 0  # rows appended this run
    batches: int = 0
    nonfinite_rows: int = 0
    wait_s: float = 0.0  # model thread time spent waiting for a free slot (store-bound)
    started: float = field(default_factory=time.perf_counter)


class _Slot:
    """Staging (device) and pinned host buffers for one batch of every hook."""

    def __init__(self, hooks: dict[str, int], dtype: str, rows: int, device: torch.device):
        spec = parse_dtype(dtype)
        tdt, scaled = spec.torch_dtype, spec.scaled
        self.dev: dict[str, dict] = {}
        self.host: dict[str, dict] = {}

        def alloc(d, dev, pin):
            return {
                "out": torch.empty((rows, d), dtype=tdt, device=dev, pin_memory=pin),
                "scale": torch.empty(rows, dtype=torch.float32, device=dev, pin_memory=pin) if scaled else None,
                "bad": torch.empty(rows, dtype=torch.int8, device=dev, pin_memory=pin),
                "moments": torch.empty(3 * d + 1, dtype=torch.float32, device=dev, pin_memory=pin),
            }

        for h, d in hooks.items():
            self.dev[h] = alloc(d, device, False)
            self.host[h] = alloc(d, "cpu", True)
        self.event = None


class Sink:
    """Packs batches on the device and writes them into ``writer`` on a background thread.

    hooks: stored hook name -> width d. ``put(acts, batch)`` takes ``[B*L, d]`` tensors
    (any float dtype, on ``device``) and a :class:`actstore.capture.plan.Batch`.
    ``close()`` drains the queue and commits. Every commit records the batches done and
    the NaN/inf rows dropped so far (over all runs of this segment), which a resumed run
    starts from (``batches_done``, ``nonfinite_dropped``).
    """

    def __init__(
        self,
        writer: SegmentWriter,
        hooks: dict[str, int],
        dtype: str,
        device: torch.device,
        *,
        max_rows: int,
        slots: int = 3,
        nonfinite: str = "drop",
        commit_every: float = 60.0,
        batches_done: int = 0,
        nonfinite_dropped: int = 0,
    ):
        if nonfinite not in ("drop", "error"):
            raise CaptureError(f"nonfinite={nonfinite!r}: use drop or error")
        self.writer = writer
        self.hooks = hooks
        self.dtype = dtype
        self.device = device
        self.cuda = device.type == "cuda"
        self.nonfinite = nonfinite
        self.commit_every = commit_every
        self.batches_done = batches_done
        self.nonfinite_before = nonfinite_dropped
        self.progress = Progress()
        self.error: BaseException | None = None
        self._free: queue.Queue = queue.Queue()
        self._work: queue.Queue = queue.Queue()
        if self.cuda:
            self._slots = [_Slot(hooks, dtype, max_rows, device) for _ in range(slots)]
            self._side = torch.cuda.Stream(device)
        else:
            self._slots = [None] * slots
        for i in range(slots):
            self._free.put(i)
        self._last_commit = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="actstore-capture-writer", daemon=True)
        self._thread.start()

    # -- model thread -------------------------------------------------------------------

    def put(self, acts: dict[str, torch.Tensor], batch) -> None:
        t0 = time.perf_counter()
        slot = None
        while slot is None:
            self._raise_if_failed()
            try:
                slot = self._free.get(timeout=0.5)
            except queue.Empty:
                pass
        self.progress.wait_s += time.perf_counter() - t0
        keep = torch.from_numpy(batch.keep)
        first = int(np.argmax(batch.keep))
        if self.cuda:
            s = self._slots[slot]
            keep_d = keep.pin_memory().to(self.device, non_blocking=True)
            dst = (
                torch.from_numpy(np.cumsum(batch.keep, dtype=np.int64) - 1)
                .pin_memory()
                .to(self.device, non_blocking=True)
            )
            for h, x in acts.items():
                d = self.hooks[h]
                mom = s.dev[h]["moments"]
                shift = mom[2 * d + 1 :]
                # Centre the moments on one kept row of this batch: sums of (x - x0) stay
                # of the order of the spread, so fp32 M2 = s2 - s1^2/n does not cancel.
                shift.copy_(x[first].float())
                bufs = {
                    "out": s.dev[h]["out"],
                    "scale": s.dev[h]["scale"],
                    "bad": s.dev[h]["bad"],
                    "moments": mom[: 2 * d + 1],
                }
                # Results land in this slot's staging buffers; the copies below read them there.
                capture_pack(x, keep_d, shift, self.dtype, dst=dst, n_keep=batch.n_keep, buffers=bufs)
            ready = torch.cuda.Event()
            ready.record()
            self._side.wait_event(ready)
            n = batch.n_keep
            with torch.cuda.stream(self._side):
                for h in acts:
                    for k, dev in s.dev[h].items():
                        if dev is None:
                            continue
                        if k == "moments":
                            s.host[h][k].copy_(dev, non_blocking=True)
                        else:
                            s.host[h][k][:n].copy_(dev[:n], non_blocking=True)
                s.event = torch.cuda.Event()
                s.event.record(self._side)
            self._work.put((slot, batch, None))
        else:
            # CPU: the writer thread packs, so the model thread only runs forwards.
            self._work.put((slot, batch, (acts, first)))

    def close(self, commit: bool = True) -> None:
        """Drain the queue, commit (unless a write failed) and stop the thread."""
        self._work.put(None)
        self._thread.join()
        if commit and self.error is None:
            self._commit()
        self._raise_if_failed()

    def _raise_if_failed(self):
        if self.error is not None:
            e = self.error
            if isinstance(e, CaptureError):
                raise e
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CaptureError(
                f"store write failed ({type(e).__name__}: {msg}); {self.writer.committed_rows} rows "
                f"committed before it stay readable; fix the cause (disk space, permissions) and "
                f"re-run the same command to resume"
            ) from e

    # -- writer thread ------------------------------------------------------------------

    def _host_packs(self, slot: int, batch, packs):
        """(per hook: Packed on host, shift numpy float64)."""
        if packs is not None:
            acts, first = packs
            keep = torch.from_numpy(batch.keep)
            out = {}
            with torch.inference_mode():
                for h, x in acts.items():
                    shift = x[first].float()
                    out[h] = (capture_pack(x, keep, shift, self.dtype), shift.double().numpy())
            return out
        s = self._slots[slot]
        s.event.synchronize()
        n = batch.n_keep
        out = {}
        for h, d in self.hooks.items():
            hb = s.host[h]
            mom = hb["moments"]
            p = Packed(
                hb["out"][:n],
                hb["scale"][:n] if hb["scale"] is not None else None,
                hb["bad"][:n].bool(),
                mom[:d],
                mom[d : 2 * d],
                mom[2 * d : 2 * d + 1],
            )
            out[h] = (p, mom[2 * d + 1 :].double().numpy())
        return out

    def _run(self):
        while True:
            item = self._work.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            slot, batch, packs = item
            try:
                self._write(self._host_packs(slot, batch, packs), batch)
                trim_heap()
            except BaseException as e:  # noqa: BLE001 - handed to the model thread
                self.error = e
            finally:
                self._free.put(slot)

    def _write(self, packs: dict, batch) -> None:
        w = self.writer
        keep = batch.keep
        cols = {
            "tokens": batch.ids.reshape(-1)[keep],
            "doc": batch.doc.reshape(-1)[keep],
            "pos": batch.pos.reshape(-1)[keep],
            "flags": batch.flags.reshape(-1)[keep],
        }
        bad = np.zeros(batch.n_keep, dtype=bool)
        for p, _ in packs.values():
            bad |= p.bad.numpy()
        arrays, stats = {}, {}
        for h, (p, shift) in packs.items():
            spec = w.schema.hooks[h]
            # bf16 goes as uint16 bits (zarr has no bfloat16), q16's int16 holder as its uint16 codes.
            data = p.data.view(torch.int16) if p.data.dtype == torch.bfloat16 else p.data
            arrays[spec.array] = data.numpy().view(spec.dtype.stored)
            if spec.scale_array:
                arrays[spec.scale_array] = p.scale.numpy()
            st = RunningStats.from_moments(
                spec.d,
                batch.n_keep - int(p.bad.sum()),
                shift,
                p.s1.double().numpy(),
                p.s2.double().numpy(),
                float(p.norm_sum[0]),
            )
            st.nonfinite_rows = int(p.bad.sum())
            stats[h] = st
        if bad.any():
            if self.nonfinite == "error":
                worst = {h: int(p.bad.sum()) for h, (p, _) in packs.items() if int(p.bad.sum())}
                raise CaptureError(
                    f"batch {batch.index}: rows holding NaN/inf per hook {worst}; the model produced "
                    f"non-finite activations (use --nonfinite drop to skip and count such rows)"
                )
            good = ~bad
            arrays = {k: v[good] for k, v in arrays.items()}
            cols = {k: v[good] for k, v in cols.items()}
            # A row dropped for another hook's NaN was in this hook's moments: recount the
            # statistics of the rows actually stored (rare path, from the stored values).
            for h, (p, _) in packs.items():
                spec = w.schema.hooks[h]
                st = RunningStats(spec.d)
                kept = from_stored(
                    spec.dtype,
                    arrays[spec.array],
                    arrays.get(spec.scale_array) if spec.scale_array else None,
                    torch.float32,
                )
                st.update(kept)
                st.nonfinite_rows = int(p.bad.sum())
                stats[h] = st
        shard_before = w.rows // w.schema.shard_rows
        w.append_packed(arrays, stats, tokens=cols["tokens"], doc=cols["doc"], pos=cols["pos"], flags=cols["flags"])
        self.batches_done += 1
        pr = self.progress
        pr.rows += int(arrays[next(iter(arrays))].shape[0])
        pr.batches += 1
        pr.nonfinite_rows += int(bad.sum())
        if w.rows // w.schema.shard_rows != shard_before or time.monotonic() - self._last_commit > self.commit_every:
            self._commit()

    def _commit(self):
        # Both counters are the writer thread's own, so they match the committed rows.
        self.writer.commit(
            meta={
                "capture": {
                    "batches_done": self.batches_done,
                    "nonfinite_dropped": self.nonfinite_before + self.progress.nonfinite_rows,
                }
            }
        )
        self._last_commit = time.monotonic()
