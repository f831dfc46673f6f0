"""Subprocess for the SAELens kill test: train_saelens on STORE's HOOK with checkpoints in CKPT
(48 steps of 256 rows, a TopK SAE, 3 checkpoints), then save the SAE's weights to OUT
(safetensors).

    python saelens_run.py STORE HOOK CKPT OUT [STOP]

With STOP, the process prints ``stopped STOP`` and stops itself (SIGSTOP) when the trainer
asks for batch STOP + 1, so the test SIGKILLs it at a known point: STOP batches trained,
the newest checkpoint before them on disk.
"""

import os
import signal
import sys

import torch
from sae_lens import TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from safetensors.torch import save_file

from actstore.integrations import saelens


def main() -> None:
    store, hook, ckpt, out = sys.argv[1:5]
    stop = int(sys.argv[5]) if len(sys.argv) > 5 else None
    if stop is not None:
        inner = saelens.SAELensDataProvider.__next__
        served = [0]

        def stopping(self):
            if served[0] == stop:
                print(f"stopped {stop}", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
                sys.exit("saelens_run: continued after stopping; the test should have killed it")
            served[0] += 1
            return inner(self)

        saelens.SAELensDataProvider.__next__ = stopping
    torch.manual_seed(1)
    sae = saelens.train_saelens(
        store,
        hook,
        TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4),
        SAETrainerConfig(
            total_training_samples=48 * 256,
            train_batch_size_samples=256,
            lr=3e-3,
            device="cpu",
            checkpoint_path=ckpt,
            n_checkpoints=3,
        ),
        threads=1,
    )
    save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, out)


if __name__ == "__main__":
    main()
