"""Runtime facts of this process: its rank and world under ``torchrun``, and its device.

One home for them, so capture, the loader and the trainer agree:

- ``rank_world(rank, world_size)``: explicit values win; else an initialized
  ``torch.distributed`` group; else the ``RANK``/``WORLD_SIZE`` environment that
  ``torchrun`` sets; else ``(0, 1)``.
- ``init_if_launched()``: joins the process group when launched with ``WORLD_SIZE > 1``
  (``backend()``: NCCL when each rank of the node has its own GPU, gloo otherwise) and
  says whether it did, so the caller that opened it closes it.
- ``local_device(device)``: the one device-placement rule of capture, the loader, the
  trainer and the analyses. ``None``/``"auto"`` -> this rank's GPU or the CPU; a bare
  ``"cuda"`` -> this rank's GPU; ``"cuda:N"``/``"cpu"`` as given. This rank's GPU is
  ``cuda:(LOCAL_RANK % device count)``: more ranks than GPUs share them round-robin (two
  ranks on a one-GPU box both use ``cuda:0``) instead of asking for a GPU that is not there.
"""

from __future__ import annotations

import os

import torch


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's ``(rank, world_size)``; both explicit values, or neither, are used."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def initialized_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialized ``torch.distributed`` group, else ``(0, 1)``.

    Unlike :func:`rank_world` it never reads ``RANK``/``WORLD_SIZE``: the loader splits its
    rows by a group that exists, not by the environment of a launcher whose processes may
    each want the whole store."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def init_if_launched() -> bool:
    """Join the default process group when launched by ``torchrun`` with several ranks.

    Returns True when this call created the group (the caller then destroys it), False when
    there is one process or a group already exists."""
    import torch.distributed as dist

    if launched_world() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend())
    return True


def backend(gpus: int | None = None, local_world: int | None = None) -> str:
    """NCCL when every rank of this node has a GPU of its own; else gloo (no CUDA, or more
    ranks than GPUs: NCCL refuses two ranks on one GPU, and :func:`local_device` shares the
    GPUs round-robin then). ``gpus`` and ``local_world`` (default ``LOCAL_WORLD_SIZE``, else
    ``WORLD_SIZE``) are there for tests."""
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_world is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", launched_world()))
    return "nccl" if 0 < local_world <= gpus else "gloo"


def group():
    """The initialized ``torch.distributed`` module, or None when running alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank of an initialized group (a small picklable value, sent
    between the ranks of one job, never read from a store); ``obj`` itself when alone."""
    dist = group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_device(device=None, *, gpus: int | None = None, local_rank: int | None = None) -> torch.device:
    """The device this rank works on (the rule is in the module docstring).

    ``gpus`` (default: the visible CUDA devices, 0 without CUDA) and ``local_rank``
    (default: ``LOCAL_RANK``, 0 when unset) are there for tests."""
    if isinstance(device, torch.device):
        if device.type != "cuda" or device.index is not None:
            return device
        device = "cuda"
    if device in (None, "auto", "cuda"):
        if gpus is None:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > 0:
            local = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else int(local_rank)
            return torch.device("cuda", local % gpus)
        if device == "cuda":
            return torch.device("cuda")  # no GPU: the caller's own check reports it in one line
        return torch.device("cpu")
    return torch.device(device)
