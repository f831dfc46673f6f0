"""``ActivationDataset``: the loader as a ``torch.utils.data.IterableDataset``.

For code built around ``torch.utils.data.DataLoader``. Use it with ``batch_size=None``
(the dataset yields whole batches):

    ds = actstore.ActivationDataset("acts", "blocks.6.hook_resid_post", 4096, seed=0)
    dl = DataLoader(ds, batch_size=None, num_workers=4, pin_memory=True)
    for epoch in range(n):
        ds.set_epoch(epoch)
        for x in dl: ...

Each DataLoader worker is one more share of the split: worker ``i`` of ``k`` on rank ``r``
of ``W`` reads share ``r * k + i`` of ``W * k``, so every row still comes exactly once per
epoch across all ranks and workers, and the DataLoader's round-robin over workers makes
the order deterministic. The dataset holds only plain values (the store path, the
options, the rank and world size read when it was made), so it pickles for ``spawn``
workers, and every worker opens its own store and threads inside ``__iter__``, so nothing
with threads or file handles crosses a ``fork``. Batches are made on the CPU in the
workers; move them to the GPU in the training loop (``pin_memory=True`` helps).
``set_epoch`` reaches the workers when they are started afresh each epoch (the default,
``persistent_workers=False``). Mid-epoch resume needs :class:`ActivationLoader` itself.
"""

from __future__ import annotations

import torch

from .._dist import initialized_rank_world
from .._native import default_threads
from ..store.errors import LoaderError
from ..store.reader import Store
from .loader import ActivationLoader


class ActivationDataset(torch.utils.data.IterableDataset):
    """One epoch of :class:`ActivationLoader` batches per iteration; see the module docstring.

    ``loader_options`` are those of :class:`ActivationLoader` except ``device`` (always
    the CPU here), ``epochs`` and ``rank``/``world_size`` (given here, or read from
    ``torch.distributed``); ``threads`` defaults to the CPU count split over the workers.
    """

    def __init__(
        self,
        store: Store | str,
        hooks: str | list[str],
        batch_size: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        **loader_options,
    ):
        for bad in ("device", "epochs"):
            if bad in loader_options:
                raise LoaderError(
                    f"ActivationDataset does not take {bad}=: batches are made on the CPU, one epoch per "
                    "iteration (call set_epoch)"
                )
        self.path = str(store.path) if isinstance(store, Store) else str(store)
        self.hooks = hooks
        self.batch_size = batch_size
        r, w = initialized_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        self.options = dict(loader_options)
        self.epoch = 0
        # Fail here, in the main process, on bad options or an empty store, not in a worker.
        probe = self._loader(0, 1)
        probe.close()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _loader(self, worker: int, workers: int) -> ActivationLoader:
        opts = dict(self.options)
        opts.setdefault("threads", max(1, default_threads() // workers))
        return ActivationLoader(
            self.path,
            self.hooks,
            self.batch_size,
            device="cpu",
            epochs=self.epoch + 1,
            rank=self.rank * workers + worker,
            world_size=self.world_size * workers,
            **opts,
        )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        loader = self._loader(worker, workers)
        loader.set_epoch(self.epoch)
        try:
            yield from loader
        finally:
            loader.close()
