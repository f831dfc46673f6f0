"""Run ``actstore.sae.train`` with the settings of the trainer tests (one process or one
torchrun rank). Each rank writes the SHA-256 of its final parameters to
OUT/params-rank<r>.sha256 and prints ``done <steps>``.

``TRAIN_RUN_STOP=<point>:<step>`` (read only by this helper) makes the process stop itself
at a chosen point of the run: it prints ``stopped <point>:<step>`` and sends itself
SIGSTOP, so the test SIGKILLs it exactly there, never at a moment of the clock. Points
(wrappers around the trainer's own functions, no seam in its public API):

- ``step:N``: optimizer step N is done, its log line and checkpoint are not written;
- ``written:N``: checkpoint N's folder is complete, ``latest.json`` does not name it yet;
- ``ckpt:N``: checkpoint N is complete and ``latest.json`` names it.

ARCH is ``arch[:activation]``. Transcoders read "narrow" and reconstruct "wide" of the loader
store (helpers/loader_store.py); CLTs and crosscoders read a layer store
(helpers/layer_store.py): every layer's MLP input -> output, every layer's MLP output.
``TRAIN_RUN_SHARD=1`` shards a CLT's latents over the torchrun ranks; ``TRAIN_RUN_PAIRED=PATH``
gives a crosscoder its second store. ``TRAIN_RUN_COMM=1`` counts the bytes each rank's
collectives send or receive inside each loss call (forward and backward of one step) and writes
them, one number per step, to OUT/comm-rank<r>.json.

usage: train_run.py STORE OUT ARCH TOKENS
"""

import functools
import hashlib
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from actstore.sae import TrainConfig, train
from actstore.sae.config import CLT_ARCHS, TRANSCODER_ARCHS

# The module, not the function: ``actstore.sae.train`` the attribute is train() itself.
trainer = importlib.import_module("actstore.sae.train")

STOP_POINTS = {"step": "_step", "written": "_write_checkpoint", "ckpt": "_checkpoint"}


def stop_at(spec: str) -> None:
    """Wrap the trainer function of ``spec``'s point so that the process stops after the
    call that leaves the run at its step."""
    point, step = spec.split(":")
    name = STOP_POINTS[point]
    inner = getattr(trainer, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        result = inner(*args, **kwargs)
        run = next(a for a in args if isinstance(a, trainer._Run))
        if run.step == int(step):
            # grace: the loaders' threads run on before the stop, as before a real crash
            time.sleep(float(os.environ.get("ACTSTORE_KILL_GRACE", "0.3")))
            print(f"stopped {spec}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            sys.exit(f"train_run: continued after stopping at {spec}; the test should have killed it")
        return result

    setattr(trainer, name, wrapper)


def count_comm(out: Path) -> None:
    """Wrap the collectives a CLT step uses, counting the payload (the tensor's bytes) of
    each call made while a CLT's ``loss`` (forward, and the backward that follows it, whose
    collectives are none) runs."""
    from actstore.sae.clt import CrossLayerTranscoder

    steps: list[int] = []
    active = [False]

    def wrap(name, size):
        inner = getattr(dist, name)

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            if active[0]:
                steps[-1] += size(*args)
            return inner(*args, **kwargs)

        setattr(dist, name, wrapper)

    wrap("all_reduce", lambda t, *a, **k: t.numel() * t.element_size())
    wrap("all_gather", lambda parts, t, *a, **k: sum(p.numel() * p.element_size() for p in parts))
    loss = CrossLayerTranscoder.loss

    def counted(self, *args, **kwargs):
        steps.append(0)
        active[0] = True
        try:
            return loss(self, *args, **kwargs)
        finally:
            active[0] = False
            rank = dist.get_rank() if dist.is_initialized() else 0
            (out / f"comm-rank{rank}.json").write_text(json.dumps(steps))

    CrossLayerTranscoder.loss = counted


def main() -> None:
    store, out, arch, tokens = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    if os.environ.get("TRAIN_RUN_STOP"):
        stop_at(os.environ["TRAIN_RUN_STOP"])
    if os.environ.get("TRAIN_RUN_COMM"):
        out.mkdir(parents=True, exist_ok=True)
        count_comm(out)
    # ARCH[:ACTIVATION]: a transcoder reads "narrow" (d=20) and reconstructs "wide" (d=40).
    arch, _, act = arch.partition(":")
    if arch in TRANSCODER_ARCHS:
        hooks = {"source": "narrow", "target": "wide", "activation": act or None}
    elif arch in CLT_ARCHS:
        hooks = {
            "source": "model.layers.*.mlp:input",
            "target": "model.layers.*.mlp",
            "activation": act or None,
            "shard_latents": os.environ.get("TRAIN_RUN_SHARD") == "1",
        }
    elif arch == "crosscoder":
        paired = os.environ.get("TRAIN_RUN_PAIRED")
        hooks = {"hooks": "model.layers.1.mlp" if paired else "model.layers.*.mlp", "activation": act or None}
        hooks["paired_store"] = paired
    else:
        hooks = {"hook": "wide", "widths": "8,32" if arch == "matryoshka_batchtopk" else None}
    cfg = TrainConfig(
        store=store,
        **hooks,
        arch=arch,
        latents=64,
        k=None if (act or arch) in ("jumprelu", "gated", "relu") else 4,
        tokens=tokens,
        out=str(out),
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        checkpoint_every=3,
        log_every=2,
        dead_tokens=200,
        buffer_rows=256,
        threads=1,
    )
    summary, sae = train(cfg, progress=False, return_sae=True)
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
