"""One rank of a torchrun job (gloo) on one bucket: it writes its own segment, then reads
its share of every rank's rows through ActivationLoader over rank 0's pinned snapshot.

usage: torchrun --nproc_per_node W s3_rank.py STORE_URL OUT

Rank r writes 300 rows with token ids r*10000 + i to segment rank<r>. Every rank opens
the store; then rank 0 alone appends 100 more rows, so the other ranks' stores are behind.
Each rank's loader must plan over rank 0's snapshot (segments and rows), which the ranks
check with an all_gather; the token ids each rank yields go to OUT/rank<r>.npy.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import actstore


def main() -> None:
    url, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    r = dist.get_rank()
    w = actstore.create(url, {"h": 16}, segment=f"rank{r}", chunk_bytes=256, chunks_per_shard=4)
    ids = torch.arange(300) + r * 10000
    w.append({"h": ids[:, None].float().expand(300, 16) / 1000}, tokens=ids)
    w.commit()
    dist.barrier()
    store = actstore.open(url)  # every rank's snapshot: 300 rows per segment
    dist.barrier()
    if r == 0:
        more = torch.arange(300, 400)
        w.append({"h": more[:, None].float().expand(100, 16) / 1000}, tokens=more)
        w.commit()
        store.refresh()  # rank 0 sees the new rows; the others still hold the older snapshot
    w.close()
    ld = actstore.ActivationLoader(store, "h", 32, tokens=True, seed=5)
    snaps = [None] * dist.get_world_size()
    dist.all_gather_object(snaps, ld._snapshot)
    assert all(s == snaps[0] for s in snaps), snaps
    toks = [b["token"].numpy().copy() for b in ld]
    for b in actstore.ActivationLoader(store, "h", 64, tokens=True, shuffle=False):
        assert torch.equal(b["h"][:, 0], (b["token"].float() / 1000).bfloat16().to(b["h"].dtype))  # stored bf16
        break
    np.save(out / f"rank{r}.npy", np.concatenate(toks))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
