"""torchrun child for the analysis rank test: each rank runs its share of the planted
analysis (rank and world from the launcher, gloo group joined here); rank 0 writes the
merged output after the barrier.

usage: torchrun --nproc_per_node W analysis_rank.py STORE OUT
"""

import sys

import torch.distributed as dist
from analysis_store import BLOCK, JOBS, relu_sae

import actstore.analysis as an


def main() -> None:
    store, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    try:
        an.run(store, relu_sae(), JOBS, out, block_rows=BLOCK)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
