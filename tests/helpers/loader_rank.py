"""One rank of a torchrun job reading a store with ActivationLoader (rank and world size
from torch.distributed). Writes the token ids of its batches, in order, to OUT/rank<r>.npy
and checks with an all_reduce that drop_last gives every rank the same batch count.

usage: torchrun --nproc_per_node W loader_rank.py STORE OUT
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import actstore


def main() -> None:
    store, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    r = dist.get_rank()
    ld = actstore.ActivationLoader(store, "wide", 64, tokens=True, seed=7, epochs=2, buffer_rows=256)
    assert (ld.rank, ld.world_size) == (r, dist.get_world_size())
    toks = [b["token"].numpy().copy() for b in ld]
    np.save(out / f"rank{r}.npy", np.concatenate(toks))
    even = actstore.ActivationLoader(store, "wide", 64, drop_last=True)
    n = torch.tensor([sum(1 for _ in even)])
    lo, hi = n.clone(), n.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    assert lo.item() == hi.item() == len(even) > 0, (lo, hi)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
