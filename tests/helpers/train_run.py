"""Run ``actstore.sae.train`` with the settings of the trainer tests (one process or one
torchrun rank). Prints ``ready`` once the first checkpoint exists, so a test knows when
killing it is interesting; each rank writes the SHA-256 of its final parameters to
OUT/params-rank<r>.sha256.

usage: train_run.py STORE OUT ARCH TOKENS
"""

import hashlib
import sys
import threading
import time
from pathlib import Path

import torch

from actstore.sae import TrainConfig, train


def main() -> None:
    store, out, arch, tokens = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    cfg = TrainConfig(store=store, hook="wide", arch=arch, latents=64, k=4 if "topk" in arch else None,
                      tokens=tokens, out=str(out), batch_size=32, lr=3e-3, warmup_steps=5, checkpoint_every=3,
                      log_every=2, dead_tokens=200, buffer_rows=256, threads=1)

    def announce():
        while not (out / "latest.json").exists():
            time.sleep(0.01)
        print("ready", flush=True)
    threading.Thread(target=announce, daemon=True).start()
    summary, sae = train(cfg, progress=False, return_sae=True)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    (out / f"params-rank{rank}.sha256").write_text(h.hexdigest())
    print("done", summary["steps"], flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
