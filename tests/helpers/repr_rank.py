"""torchrun child for the representation-analysis rank test: every rank reads its share of
the planted store (tests/helpers/repr_store.py) for steering vectors, PCA, layer diffs and
probes; rank 0 saves the merged results under OUT/<kind>. Also run with no launcher (one
process) for the reference.

usage: [torchrun --nproc_per_node W] repr_rank.py STORE OUT
"""

import os
import sys

import torch.distributed as dist

import actstore
import actstore.analysis as an

BLOCK = 37


def main() -> None:
    store, out = actstore.open(sys.argv[1]), sys.argv[2]
    launched = "RANK" in os.environ
    if launched:
        dist.init_process_group("gloo")
    try:
        g = an.row_groups(store, sources=True)
        results = {
            "steering": an.steering_vectors(store, "a,b,c", g, "pos", "neg", pca=True, top_k=5, block_rows=BLOCK),
            "pca": an.pca(store, "a,c", g, k=4, sample=30, block_rows=BLOCK),
            "diff": an.layer_diff(store, "a", "b", g, top_k=5, block_rows=BLOCK),
            "probes": an.probes(store, "a,b", g, "pos", "neg", epochs=2, block_rows=BLOCK),
        }
        if not launched or dist.get_rank() == 0:
            for kind, res in results.items():
                res.save(os.path.join(out, kind))
    finally:
        if launched:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
