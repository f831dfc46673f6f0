"""torchrun child for the representation-analysis rank test: every rank reads its share of
the planted store (tests/helpers/repr_store.py) for steering vectors, PCA, layer diffs and
probes; rank 0 saves the merged results under OUT/<kind>. Also run with no launcher (one
process) for the reference. With STATE, every analysis commits its passes' state under
STATE/<kind> (each rank its own share).

usage: [torchrun --nproc_per_node W] repr_rank.py STORE OUT [STATE]
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
        state = sys.argv[3] if len(sys.argv) > 3 else None

        def kw(kind):
            folder = None if state is None else os.path.join(state, kind)
            return dict(block_rows=BLOCK, state_dir=folder, commit_rows=64)

        results = {
            "steering": an.steering_vectors(store, "a,b,c", g, "pos", "neg", pca=True, top_k=5, **kw("steering")),
            "pca": an.pca(store, "a,c", g, k=4, sample=30, **kw("pca")),
            "diff": an.layer_diff(store, "a", "b", g, top_k=5, **kw("diff")),
            "probes": an.probes(store, "a,b", g, "pos", "neg", epochs=2, **kw("probes")),
        }
        if not launched or dist.get_rank() == 0:
            for kind, res in results.items():
                res.save(os.path.join(out, kind))
    finally:
        if launched:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
