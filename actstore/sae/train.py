"""``actstore.sae.train``: from a store to a trained SAE (``actstore train`` on the CLI).

A dictionary reads **source** rows and reconstructs **target** rows: an SAE has one hook
(``hook``, source = target); a transcoder reads ``source`` (``[B, d]``) and reconstructs
``target`` (``[B, d_out]``), both from one :class:`~actstore.ActivationLoader` over the two
hooks, so a batch holds the same rows of each (one shuffle). Each hook is normalized by its
own factor; the held-out split, resume and the metrics work the same for both.

One loop on every rank: an :class:`~actstore.ActivationLoader` batch (shuffled,
normalized to mean row norm sqrt(d)), the SAE's loss on the fused ops, backward, gradients
averaged over ranks (``torch.distributed`` all-reduce: gloo on CPU, NCCL on GPUs, started
by ``torchrun``), AdamW with linear warmup and a linear decay to 0 over the last
``decay_frac`` of the steps, then unit-norm decoder rows (topk, batchtopk, jumprelu).

Normalization and init from the training rows alone: the held-out rows (:func:`split`) must
not shape training, so the normalization factors (and ``standardize``'s mean and std) and the
init (decoder bias at the target's mean, a transcoder's or CLT's encoder centred on its
source's mean) come from :func:`training_stats`, never from the store's statistics of every
row. The store keeps those per commit and cannot leave rows out of them, so one pass reads the
held-out rows (at most 16384 by default, the evaluation reads them again at the end) and
takes them out of the store's statistics, exactly (:meth:`RunningStats.minus`); a held-out
set larger than the training set is read the other way round (the training rows). Cost,
measured on 2 CPU cores (bf16): 20 ms for 6,505 held-out rows of d=384 (a pass over the
123,600 training rows: 366 ms; one default training step at m=3072: 783 ms), 59 ms for 1,000
rows of 6 hooks of d=576. The evaluation's loaders normalize with the same statistics.

Dead latents: a latent that has not fired for ``dead_tokens`` tokens is dead; TopK and
BatchTopK train the dead ones with AuxK.

Metrics every ``log_every`` steps, on a tqdm bar and as JSON lines in ``OUT/log.jsonl``:
step, tokens, loss, fvu (of the target), l0, dead_frac, lr, tokens_per_s, for the
threshold archs dense_rows_frac (rows their encoder recomputed densely), and for
Matryoshka SAEs level_fvu (each nested prefix's FVU, innermost first; the held-out
evaluation reports it too).

The loop is three parts: :func:`_resume_or_init` (the SAE, AdamW and the counters, from
the newest checkpoint or fresh), :func:`_step` (one optimizer step on one batch) and
:func:`_checkpoint` (write the folder, then point ``latest.json`` at it). What differs per
arch is asked of the SAE (``uses_auxk``, ``renorm_decoder``, ``sync_state``), never
branched on its name.

Checkpoints (``OUT/ckpt-<step>/``, the newest named by ``OUT/latest.json``, which is
replaced atomically once the folder is complete): the SAE (unfolded), AdamW's state
(safetensors + JSON: no pickles), the trainer counters, and each rank's loader state and
threshold-encoder state (its candidate count and the counts behind ``dense_rows_frac``). A
run started again with the same ``OUT`` continues from the newest checkpoint and gives
the same weights, bit for bit, as a run that was never stopped. At the end ``OUT/sae/``
holds the SAE with the normalization folded in (it takes raw activations) and
``OUT/summary.json`` the final metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .. import api
from .._dist import group, init_if_launched, local_device, rank_world
from ..errors import SAEError
from ..loader import ActivationLoader
from ..store.reader import Store
from ..store.stats import RunningStats
from ..store.storage import fsync_path
from .base import SparseAutoencoder
from .config import (  # noqa: F401 - re-exported: the options lived here first
    ARCH_KEYS,
    DEFAULT_BATCH,
    DEFAULT_WARMUP_FRAC,
    EVAL_ROWS_FRAC,
    EVAL_ROWS_MAX,
    LR_BASE,
    SAEConfig,
    TrainConfig,
)
from .io import load, save, write_file, write_safetensors
from .layout import Layout, resolve
from .registry import build


@dataclass
class _Run:
    """What one run moves from step to step (and a checkpoint keeps)."""

    sae: SparseAutoencoder
    opt: torch.optim.Optimizer
    base_lr: float
    step: int
    tokens: int  # all ranks together
    since_fired: torch.Tensor  # [m] int64: tokens since each latent last fired (on any rank)


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """Warmup length in steps: ``warmup_steps`` when given, else ``warmup_frac`` of ``total``."""
    return cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_frac * total)


def _lr(cfg: TrainConfig, base: float, step: int, total: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup_steps(cfg, total)))
    decay_start = int(total * (1 - cfg.decay_frac))
    decay = 1.0 if step < decay_start else max(0.0, (total - step) / max(1, total - decay_start))
    return base * warm * decay


def default_lr(latents: int) -> float:
    return LR_BASE / math.sqrt(latents / 2**14)


def _device(name: str) -> torch.device:
    """``auto`` -> this rank's GPU or the CPU; a bare ``cuda`` is this rank's GPU
    (:func:`actstore._dist.local_device`, the rule capture and the loader follow too)."""
    dev = local_device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SAEError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu or auto")
    return dev


# -- checkpoints -------------------------------------------------------------------------------


def _save_optimizer(opt: torch.optim.Optimizer, path: Path, suffix: str = "") -> None:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                meta["state"][str(idx)][k] = v
    write_safetensors(path, f"optimizer{suffix}.safetensors", tensors)
    write_file(path, f"optimizer{suffix}.json", json.dumps(meta))


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, device, suffix: str = "") -> None:
    meta = json.loads((path / f"optimizer{suffix}.json").read_text())
    tensors = load_file(str(path / f"optimizer{suffix}.safetensors"))
    state = {}
    for idx, extra in meta["state"].items():
        st = dict(extra)
        for key, t in tensors.items():
            i, name = key.split(".", 1)
            if i == idx:
                st[name] = t if name == "step" else t.to(device)
        state[int(idx)] = st
    for g in meta["param_groups"]:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _new_sae(cfg: TrainConfig, store, loaders, lay: Layout | None = None, shard=None, dist=None) -> SparseAutoencoder:
    """A fresh dictionary for ``cfg``: sizes from the store, normalization factors from the
    loaders (``loaders[1]``: the paired store's), decoder bias at the target's mean (in the
    training scale); a transcoder's or CLT's encoder centred on its source's mean. The means
    are those the loaders normalize with (:meth:`ActivationLoader.norm_stats`: in
    :func:`train`, the training rows' alone, :func:`training_stats`)."""
    standardized = cfg.normalize == "standardize"  # zero-mean already
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    lay = lay or resolve(cfg, store, api.open)

    def scale(h, i=0):
        return loaders[i].scale_factors.get(h, 1.0)

    def mean(h, i=0):
        m = torch.as_tensor(loaders[i].norm_stats(h)["mean"], dtype=torch.float32)
        return torch.zeros_like(m) if standardized else m * scale(h, i)

    kind, src, tgt = lay.kind, lay.sources, lay.targets
    if kind == "crosscoder":
        half = len(src) // 2 if lay.paired is not None else len(src)
        which = [0 if b < half else 1 for b in range(len(src))]
        scfg = SAEConfig(
            cfg.arch, sum(store._hook(h).d for h in src), cfg.latents, k=cfg.k, activation=cfg.activation,
            sources=lay.names, source_scales=[scale(h, i) for h, i in zip(src, which)], **cfg.sae,
        )  # fmt: skip
        sae = build(scfg, seed=cfg.seed)
        sae.init_b_dec(torch.cat([mean(h, i) for h, i in zip(src, which)]))
        return sae
    if kind == "clt":
        widths = {store._hook(h).d for h in src}, {store._hook(h).d for h in tgt}
        if len(widths[0]) > 1 or len(widths[1]) > 1:
            raise SAEError(
                f"a CLT's sources (widths {sorted(widths[0])}) and targets ({sorted(widths[1])}) must each be one width"
            )
        scfg = SAEConfig(
            cfg.arch, widths[0].pop(), cfg.latents, k=cfg.k, d_out=widths[1].pop(), activation=cfg.activation,
            sources=src, targets=tgt, source_scales=[scale(h) for h in src], target_scales=[scale(h) for h in tgt],
            **cfg.sae,
        )  # fmt: skip
        sae = build(scfg, seed=cfg.seed, **({"shard": shard, "dist": dist} if shard else {}))
        sae.init_b_dec(torch.stack([mean(h) for h in tgt]))
        if not standardized:
            sae.center_encoder(torch.stack([mean(h) for h in src]))
        return sae
    s, t = src[0], tgt[0]
    extra = {}
    if t != s:
        extra = {"d_out": store._hook(t).d, "target": t, "scale_out": scale(t), "activation": cfg.activation}
    scfg = SAEConfig(
        cfg.arch, store._hook(s).d, cfg.latents, k=cfg.k, scale=scale(s), hook=s, widths=cfg.widths, **extra, **cfg.sae
    )
    sae = build(scfg, seed=cfg.seed)
    sae.init_b_dec(mean(t))
    if sae.cfg.is_transcoder and not standardized:
        sae.center_encoder(mean(s))
    return sae


def _config_doc(cfg: TrainConfig) -> dict:
    """``cfg`` as JSON-ready values, an open :class:`Store` given as a field written as its
    path (``dataclasses.asdict`` would deep-copy the store, thread queues and all)."""
    doc = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for k in ("store", "target_store", "paired_store"):
        if isinstance(doc[k], Store):
            doc[k] = str(doc[k].path)
    return json.loads(json.dumps(doc))


def _resume_or_init(
    cfg: TrainConfig, out: Path, store, loaders, dev, rank: int, lay: Layout | None = None, shard=None, dist=None
) -> _Run:
    """The run's state: from the checkpoint ``OUT/latest.json`` names (refused when the
    settings differ), or a new SAE (decoder bias at the training rows' mean, in the training scale).
    A latent-sharded CLT keeps each rank's shard (weights and AdamW state) in its own files."""
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    latest = out / "latest.json"
    resumed = latest.exists()
    if resumed:
        pointer = json.loads(latest.read_text())
        saved = pointer["train_config"]
        mine = _config_doc(cfg)
        diff = sorted(k for k in mine if k not in ("device", "threads") and mine[k] != saved.get(k))
        if diff:
            raise SAEError(
                f"{out} holds a run with different settings ({', '.join(diff)}): "
                "use a new --out, or the same settings to resume"
            )
        ck = out / pointer["checkpoint"]
        if shard:
            sae = load(ck / f"sae-rank{rank}", shard=shard, dist=dist).to(dev)
        else:
            sae = load(ck / "sae").to(dev)
        counters = json.loads((ck / "trainer.json").read_text())
        step, tokens = counters["step"], counters["tokens"]
        fired_file = f"trainer-rank{rank}.safetensors" if shard else "trainer.safetensors"
        since_fired = load_file(str(ck / fired_file))["tokens_since_fired"].to(dev)
        for i, ld in enumerate(loaders):
            ld.load_state_dict(json.loads((ck / f"loader{'-b' if i else ''}-rank{rank}.json").read_text()))
        enc = ck / f"encoder-rank{rank}.json"  # absent in checkpoints of older versions: start afresh
        if enc.exists():
            sae.load_encoder_state(json.loads(enc.read_text()))
    else:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        sae = _new_sae(cfg, store, loaders, lay, shard, dist).to(dev)
        step, tokens = 0, 0
        since_fired = torch.zeros(_total_latents(sae), dtype=torch.int64, device=dev)
    sae.train()
    base_lr = cfg.lr if cfg.lr is not None else default_lr(cfg.latents)
    opt = torch.optim.AdamW(sae.parameters(), lr=base_lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if resumed:
        _load_optimizer(opt, ck, dev, f"-rank{rank}" if shard else "")
    elif sae.renorm_decoder:
        sae.normalize_decoder()
    return _Run(sae, opt, base_lr, step, tokens, since_fired)


def _write_checkpoint(out: Path, run: _Run, loaders: list[ActivationLoader], dist, rank: int) -> Path:
    """Write ``ckpt-<step>/`` whole (every rank its loader state, rank 0 the rest; every rank
    its shard of a latent-sharded CLT); ranks meet before and after."""
    ck = out / f"ckpt-{run.step:08d}"
    sharded = getattr(run.sae, "sharded", False)
    if rank == 0:
        if ck.exists():  # left by a run killed while writing it
            shutil.rmtree(ck)
        ck.mkdir(parents=True)
    if dist is not None:
        dist.barrier()
    for i, ld in enumerate(loaders):
        write_file(ck, f"loader{'-b' if i else ''}-rank{rank}.json", json.dumps(ld.state_dict()))
    write_file(ck, f"encoder-rank{rank}.json", json.dumps(run.sae.encoder_state()))
    if sharded:
        save(run.sae, ck / f"sae-rank{rank}", fold_scale=False)
        _save_optimizer(run.opt, ck, f"-rank{rank}")
        write_safetensors(ck, f"trainer-rank{rank}.safetensors", {"tokens_since_fired": run.since_fired})
    if rank == 0:
        if not sharded:
            save(run.sae, ck / "sae", fold_scale=False)
            _save_optimizer(run.opt, ck)
            write_safetensors(ck, "trainer.safetensors", {"tokens_since_fired": run.since_fired})
        write_file(ck, "trainer.json", json.dumps({"step": run.step, "tokens": run.tokens}))
    if dist is not None:
        dist.barrier()
    return ck


def _point_latest(cfg: TrainConfig, out: Path, ck: Path, step: int) -> None:
    """Rank 0: replace ``latest.json`` by one naming ``ck`` (every file of it is durable by
    now), then delete the checkpoint it named before."""
    prev = json.loads((out / "latest.json").read_text())["checkpoint"] if (out / "latest.json").exists() else None
    doc = {"checkpoint": ck.name, "step": step, "train_config": _config_doc(cfg)}
    write_file(out, "latest.json", json.dumps(doc))
    if prev and prev != ck.name:
        shutil.rmtree(out / prev, ignore_errors=True)


def _checkpoint(cfg: TrainConfig, out: Path, run: _Run, loaders: list[ActivationLoader], dist, rank: int) -> None:
    """Write ``ckpt-<step>/``, then point ``latest.json`` at it and delete the older folder."""
    ck = _write_checkpoint(out, run, loaders, dist, rank)
    if rank == 0:
        _sync_log(out / "log.jsonl")
        _point_latest(cfg, out, ck, run.step)


# -- the loop ----------------------------------------------------------------------------------


def _all_reduce_grads(sae: SparseAutoencoder, dist) -> None:
    """Average the gradients over ranks: one all-reduce per gradient dtype, flattened (not
    one per parameter)."""
    world = dist.get_world_size()
    by_dtype = {}
    for p in sae.parameters():
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


def _step(cfg: TrainConfig, run: _Run, x: torch.Tensor, y, total: int, global_batch: int, dist) -> dict:
    """One optimizer step on this rank's batch ``x [batch_size, d]`` (and a transcoder's
    targets ``y [batch_size, d_out]``, else None; a CLT's ``[batch_size, L, .]``); returns
    the loss terms. A latent-sharded CLT's ranks hold the same batch and different latents:
    no gradient all-reduce (the output's all-reduce in the forward is its communication)."""
    sae, opt = run.sae, run.opt
    dead = run.since_fired >= cfg.dead_tokens
    res = sae.loss(x, dead_mask=dead if sae.uses_auxk else None, **({} if y is None else {"target": y}))
    opt.zero_grad(set_to_none=True)
    res["loss"].backward()
    fired = res["latents"].fired()
    if dist is not None and not getattr(sae, "sharded", False):  # a sharded CLT's ranks hold different latents
        _all_reduce_grads(sae, dist)
        f = fired.to(torch.int32)
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        fired = f > 0
        sae.sync_state(dist)
    if sae.renorm_decoder:
        sae.remove_parallel_decoder_grad()
    for g in opt.param_groups:
        g["lr"] = _lr(cfg, run.base_lr, run.step, total)
    opt.step()
    if sae.renorm_decoder:
        sae.normalize_decoder()
    run.since_fired += global_batch
    run.since_fired[fired] = 0
    run.step += 1
    run.tokens += global_batch
    return res


def _metrics(cfg: TrainConfig, run: _Run, res: dict, dist) -> dict:
    """The log line of this step, less ``tokens_per_s``: loss, fvu and l0 averaged over ranks."""
    # Matryoshka: each nested prefix's FVU, innermost first; a CLT: each layer's.
    levels = res.get("level_fvu", res.get("layer_fvu"))
    dev = run.since_fired.device
    # A sharded CLT gives its L0 over every rank's latents (the other terms are the same on every rank).
    l0 = res["l0"] if res.get("l0") is not None else torch.tensor(res["latents"].l0(), device=dev)
    dead = (run.since_fired >= cfg.dead_tokens).float().mean()
    vals = torch.cat(
        [
            torch.stack([res["loss"].detach().float(), res["fvu"].detach().float(), l0.float(), dead]),
            levels.float() if levels is not None else torch.zeros(0, device=dev),
        ]
    )
    if dist is not None:
        dist.all_reduce(vals)
        vals /= dist.get_world_size()
    if not getattr(run.sae, "sharded", False):
        vals[3] = dead  # data parallel: every rank tracks every latent
    key = "layer_fvu" if "layer_fvu" in res else "level_fvu"
    return {
        "step": run.step,
        "tokens": run.tokens,
        "loss": float(vals[0]),
        "fvu": float(vals[1]),
        "l0": float(vals[2]),
        **({key: [float(v) for v in vals[4:]]} if levels is not None else {}),
        "dead_frac": float(vals[3]),
        "lr": run.opt.param_groups[0]["lr"],
        **_dense_rows(run.sae),
    }


def _dense_rows(sae) -> dict:
    """This rank's share of rows its threshold encoder recomputed densely since the last line
    (``cand_k`` overflow, or dense by choice while most latents fire; none for topk/relu)."""
    c = sae.take_encode_counts()
    return {"dense_rows_frac": c["dense_rows"] / c["encode_rows"]} if c["encode_rows"] else {}


def _init_thresholds(cfg: TrainConfig, run: _Run, batch: torch.Tensor, dist) -> None:
    """At step 0 of a jumprelu/gated run: thresholds from the first batch's quantiles, so the
    first steps start near the target L0 instead of with about half the latents firing (theta
    0.001 at init: every row then took the dense fallback). Rank 0's values go to every rank."""
    l0 = cfg.init_l0 if cfg.init_l0 is not None else (cfg.k or 64)
    if not l0:
        return
    run.sae.init_from_batch(batch, min(float(l0), cfg.latents))
    if dist is not None:
        for p in run.sae.parameters():
            dist.broadcast(p.data, src=0)


def _keep_log_until(log_path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (the checkpoint resumed from; 0 when starting
    fresh), less the held-out line: the run writes them again."""
    if log_path.exists():
        lines = [
            ln
            for ln in log_path.read_text().splitlines()
            if ln and json.loads(ln)["step"] <= step and "eval" not in json.loads(ln)  # the eval comes again at the end
        ]
        # Replaced whole (temporary, fsync, rename): a crash here leaves the old log or the new one.
        write_file(log_path.parent, log_path.name, "".join(ln + "\n" for ln in lines))


def _sync_log(log_path: Path) -> None:
    """fsync ``OUT/log.jsonl``: its lines are appended unsynced; a checkpoint (and the end
    of the run) makes them durable before ``latest.json`` (``summary.json``) is written, so
    a power loss cannot leave a checkpoint whose log lines are lost (a resumed run does not
    write them again)."""
    if log_path.exists():
        fsync_path(log_path)


# -- held-out evaluation ----------------------------------------------------------------------


def split(cfg: TrainConfig, store) -> tuple[dict, dict | None, dict]:
    """The loader selections ``(train, eval, info)``: with ``eval_docs``, the documents with
    the highest ids go to evaluation; else the last ``eval_rows`` rows in store order
    (default: 5% of the rows, at most 16384). ``eval`` is None when nothing is set aside."""
    n = store.rows
    if cfg.eval_docs:
        ids = np.unique(store.tokens()["doc"].numpy())
        if cfg.eval_docs >= ids.size:
            raise SAEError(
                f"--eval-docs {cfg.eval_docs} sets aside every document of the store ({ids.size}): use fewer"
            )
        cut = int(ids[-cfg.eval_docs])
        return {"docs": (0, cut)}, {"docs": (cut, int(ids[-1]) + 1)}, {"eval_docs": cfg.eval_docs, "first_doc": cut}
    rows = cfg.eval_rows if cfg.eval_rows is not None else min(EVAL_ROWS_MAX, int(n * EVAL_ROWS_FRAC))
    if rows == 0:
        return {}, None, {"eval_rows": 0}
    if rows >= n:
        raise SAEError(f"--eval-rows {rows} sets aside every row of the store ({n}): use fewer")
    return {"rows": (0, n - rows)}, {"rows": (n - rows, n)}, {"eval_rows": rows}


STATS_BATCH = 4096  # rows per read of the statistics pass


def _pass_stats(store, hooks: list[str], selection: dict, threads) -> tuple[dict, int]:
    """``({hook: RunningStats}, rows)`` of the stored rows of ``selection``: one read in store
    order (on every rank the same rows, so every rank gets the same figures)."""
    ld = ActivationLoader(store, hooks, STATS_BATCH, shuffle=False, epochs=1, threads=threads, rank=0, world_size=1,
                          **selection)  # fmt: skip
    try:
        acc = {h: RunningStats(store._hook(h).d) for h in hooks}
        for batch in ld:
            for h in hooks:
                acc[h].update(batch[h] if isinstance(batch, dict) else batch)
        return acc, ld.rows
    finally:
        ld.close()


def training_stats(store, hooks, train: dict, held: dict | None, threads=None) -> dict[str, dict]:
    """Per hook, the statistics (:meth:`Store.stats` form) of the training rows alone, for the
    normalization and the decoder bias / encoder centring: the held-out rows must not shape
    training. ``{}`` when nothing is held out (the store's statistics are then the training
    rows').

    How: the store keeps statistics per commit, of every row; rows cannot be taken out of them
    without reading those rows. So one pass reads the held-out rows (at most 16384 by default,
    which the evaluation reads again at the end) and takes their statistics from the store's
    (:meth:`RunningStats.minus`, float64): the training rows' figures, exactly, for the cost
    of reading the smaller set. Where the held-out rows outnumber the training rows (a large
    ``eval_docs``), or the two selections do not cover the store between them, the pass reads
    the training rows instead. The store's statistics are of the values captured; the pass
    reads the stored ones: the two differ by the storage dtype's rounding (none for fp32, or
    for bf16 captured from a bf16 model), far below a part in a thousand in a mean."""
    if held is None:
        return {}
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    out, rows = _pass_stats(store, hooks, held, threads)
    train_rows = store.rows - rows
    if "rows" not in train:  # documents: count the training rows (a doc id below 0 is in neither set)
        probe = ActivationLoader(store, hooks, STATS_BATCH, shuffle=False, epochs=1, threads=threads, rank=0,
                                 world_size=1, **train)  # fmt: skip
        train_rows = probe.rows
        probe.close()
    if rows + train_rows == store.rows and rows <= train_rows:
        try:
            return {h: _without(store, h, out[h]).as_dict() for h in hooks}
        except ValueError:  # the store's statistics do not cover its rows: read the training rows
            pass
    out, _ = _pass_stats(store, hooks, train, threads)
    return {h: st.as_dict() for h, st in out.items()}


def _without(store, hook: str, held: RunningStats) -> RunningStats:
    """The store's statistics of ``hook`` less the held-out rows'; ValueError when the store's
    do not count its rows (each stored row once: finite ones in ``count``, the others among
    ``nonfinite_rows``, which also counts rows dropped at capture)."""
    total = store._merged_stats(hook)
    if not store.rows - total.nonfinite_rows <= total.count <= store.rows:
        raise ValueError(f"the statistics of {hook!r} count {total.count} rows, the store holds {store.rows}")
    return total.minus(held)


WINDOW_BYTES = 1 << 30  # a multi-hook run's shuffle window holds at most this many stored bytes


def _window(cfg: TrainConfig, lay: Layout, stores: list) -> int:
    """The loader's shuffle window in rows: ``cfg.buffer_rows``, but for a crosscoder or CLT
    at most ``WINDOW_BYTES`` of stored rows over all its hooks (and at least one batch): the
    loader holds 2-3 windows, and 65,536 rows of SmolLM2's 60 MLP hooks in bf16 are 4.5 GB
    each. SAEs and transcoders keep ``buffer_rows`` as given (their shuffles are unchanged)."""
    if lay.kind not in ("crosscoder", "clt"):
        return cfg.buffer_rows
    hooks = lay.loader_hooks()
    row_bytes = sum(st._hook(h).d * np.dtype(st._hook(h).dtype.stored).itemsize for st in stores for h in hooks)
    return max(cfg.batch_size, min(cfg.buffer_rows, WINDOW_BYTES // max(1, row_bytes)))


def _total_latents(sae) -> int:
    """The latents whose firing the trainer tracks on this rank (a CLT: every layer's)."""
    return getattr(sae, "total_latents", sae.cfg.m)


def _pairs(loaders: list[ActivationLoader], lay: Layout):
    """``(x, y)`` per step from the loaders (two for a two-model crosscoder, in lockstep)."""
    if len(loaders) == 1:
        for batch in loaders[0]:
            yield lay.assemble(batch)
    else:
        for a, b in zip(*loaders, strict=True):
            yield lay.assemble(a, b)


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, batches, dist=None, names: list[str] | None = None) -> dict:
    """FVU of the target (over the whole set: squared error / total variance about the set's
    mean), L0 (mean active latents per row) and the fraction of latents that never fire, on
    every ``(x, y)`` of ``batches`` (y None: the dictionary reconstructs x), summed over
    ranks. With ``names`` (a crosscoder's K blocks, a CLT's L targets) each block's FVU,
    ``block_fvu``, and ``fvu`` their mean; a CLT's active latents per row of each layer,
    ``layer_l0``. A latent-sharded CLT's ranks all see the same rows: only its latent counts
    are summed over them."""
    was_training = sae.training
    sae.eval()
    dev = next(sae.parameters()).device
    sharded = getattr(sae, "sharded", False)
    acc = None  # [rows, active, err^2 per level] float64, then sum y, sum y^2, sum err^2 per dim
    fired = torch.zeros(_total_latents(sae), dtype=torch.int32, device=dev)
    layers = getattr(sae, "n_layers", None)  # a CLT: active latents per layer too
    per_layer = torch.zeros(layers or 0, dtype=torch.float64, device=dev)
    for x, y in batches:
        y = (x if y is None else y).flatten(1)
        lat = sae.encode(x)
        yd = y.double()
        # Every level's squared error (several for Matryoshka); the last is the whole reconstruction.
        outs = [o.flatten(1).double() for o in sae.level_outputs(lat, x)]
        per_dim = (outs[-1] - yd).pow(2).sum(0)
        part = torch.cat(
            [
                torch.stack(
                    [
                        torch.tensor(float(y.shape[0]), dtype=torch.float64, device=dev),
                        torch.tensor(lat.l0() * lat.n, dtype=torch.float64, device=dev),
                        *[(o - yd).pow(2).sum() for o in outs],
                    ]
                ),
                yd.sum(0),
                yd.pow(2).sum(0),
                per_dim,
            ]
        )
        acc = part if acc is None else acc + part
        fired |= lat.fired().to(torch.int32)
        if layers:
            on = lat.cols[lat.vals.detach() != 0] // sae.m_local
            per_layer += torch.bincount(on, minlength=layers).double()
    if dist is not None:
        if sharded:  # same rows everywhere: only the latents differ
            active = torch.cat([acc[1:2], per_layer])
            dist.all_reduce(active)
            acc[1], per_layer = active[0], active[1:]
        else:
            dist.all_reduce(acc)
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
    sae.train(was_training)
    g = len(getattr(sae.cfg, "widths", None) or [None])  # levels: Matryoshka's widths, else one
    n, active = float(acc[0]), float(acc[1])
    errs = [float(v) for v in acc[2 : 2 + g]]
    d = (acc.numel() - 2 - g) // 3
    s1, s2, e2 = acc[2 + g : 2 + g + d], acc[2 + g + d : 2 + g + 2 * d], acc[2 + g + 2 * d :]
    var = s2 - s1.pow(2) / n
    total = max(float(var.sum()), 1e-12)
    dead = (fired == 0).float().mean()
    if dist is not None and sharded:
        dist.all_reduce(dead)
        dead /= dist.get_world_size()
    out = {
        "rows": int(n),
        "fvu": errs[-1] / total,
        **({"level_fvu": [e / total for e in errs]} if g > 1 else {}),
        "l0": active / n,
        "dead_frac": float(dead),
    }
    if names and len(names) > 1:
        # Each block's FVU, and their mean as the headline: a pooled FVU over blocks would
        # weigh each by its variance in the training scale (each hook normalized on its own),
        # so it would change with the normalization; the mean does not (and is the CLT's loss).
        w = d // len(names)
        out["block_fvu"] = {
            nm: float(e2[i * w : (i + 1) * w].sum() / var[i * w : (i + 1) * w].sum().clamp_min(1e-12))
            for i, nm in enumerate(names)
        }
        out["fvu"] = sum(out["block_fvu"].values()) / len(names)
    if layers:
        out["layer_l0"] = (per_layer / n).tolist()
    return out


def _check_store_hooks(cfg: TrainConfig, store) -> None:
    """One line for a target in another store (the hooks themselves: :func:`layout.resolve`)."""
    if cfg.target_store is not None:
        other = cfg.target_store if isinstance(cfg.target_store, Store) else api.open(cfg.target_store)
        if Path(str(other.path)).resolve() != Path(str(store.path)).resolve():
            rows = "" if other.rows == store.rows else f" ({other.rows} rows there, {store.rows} here)"
            raise SAEError(
                f"source and target come from different stores{rows}: one shuffle needs both hooks in one store; "
                "capture them in one run (--hooks SOURCE,TARGET)"
            )


def _eval_model(cfg: TrainConfig, store, selection: dict, out: Path, dev) -> dict:
    """The LM loss with the saved SAE (normalization folded in) spliced in, over the held-out
    rows' tokens (:mod:`actstore.sae.splice`), on rank 0: an SAE at its hook; a transcoder
    in place of the module it stands in for (``cfg.target_hook`` fed from ``cfg.source_hook``);
    a CLT in place of every target layer (its cfg's ``targets``, fed from its ``sources``)."""
    from .splice import lm_loss_increase, windows_from_rows  # deferred: loads the model machinery

    if "rows" in selection:
        cols = {k: v.numpy() for k, v in store.tokens(slice(*selection["rows"])).items()}
        keep = np.ones(cols["token"].size, dtype=bool)
    else:
        cols = {k: v.numpy() for k, v in store.tokens().items()}
        lo, hi = selection["docs"]
        keep = (cols["doc"] >= lo) & (cols["doc"] < hi)
    if (cols["token"][keep] < 0).all():
        raise SAEError(f"store {store.path} holds no token ids: --eval-model needs a store captured with tokens")
    prov = store.info().get("provenance") or {}
    context = int(prov.get("context_size") or (prov.get("capture") or {}).get("context") or 128)
    windows, n = [], 0
    for w in windows_from_rows(cols["token"][keep], cols["doc"][keep], cols["pos"][keep], context):
        if n >= cfg.eval_model_tokens:
            break
        windows.append(w[: cfg.eval_model_tokens - n])
        n += windows[-1].size
    windows = [w for w in windows if w.size >= 2]
    sae = load(out / "sae")  # its cfg names the source and target (cfg.source_hook, cfg.target_hook)
    hook = None if sae.cfg.is_clt else cfg.source_hook  # a CLT's cfg holds its hooks, one per layer
    return {"model": cfg.eval_model, **lm_loss_increase(cfg.eval_model, sae, windows, hook=hook, device=dev)}


def _progress_bar(cfg: TrainConfig, total: int, step: int):
    from tqdm import tqdm  # tqdm is an optional extra (actstore[capture]): imported only to show a bar

    return tqdm(total=total, initial=step, unit="step", desc=f"train {cfg.arch}", dynamic_ncols=True)


def train(cfg: TrainConfig | None = None, *, progress: bool = True, return_sae: bool = False, **kwargs):
    """Train an SAE (see the module docstring). Pass a :class:`TrainConfig` or its fields
    as keywords. Returns the summary (also in ``OUT/summary.json``), or
    ``(summary, sae)`` with ``return_sae`` (this rank's SAE, unfolded). Under ``torchrun``
    this joins the process group and leaves it open for the caller."""
    cfg = cfg or TrainConfig(**kwargs)
    init_if_launched()
    dist = group()
    rank, world = rank_world()
    out = Path(cfg.out)
    dev = _device(cfg.device)
    store = cfg.store if isinstance(cfg.store, Store) else api.open(cfg.store)
    _check_store_hooks(cfg, store)
    lay = resolve(cfg, store, api.open)
    # A latent-sharded CLT: every rank reads the whole batch (the loaders' rank 0 of 1) and
    # holds 1/world of the latents; otherwise data parallel, each rank its share of rows.
    shard = (rank, world) if cfg.shard_latents and world > 1 else None
    data_rank, data_world = (0, 1) if shard else (rank, world)
    train_rows, eval_rows, held_out = split(cfg, store)
    common = dict(device=dev, normalize=cfg.normalize, threads=cfg.threads, rank=data_rank, world_size=data_world)
    stores = [store] if lay.paired is None else [store, lay.paired]
    hooks = lay.loader_hooks()
    paired = dict(tokens=True) if lay.paired is not None else {}
    # The training rows' statistics: the normalization and the init take nothing from the
    # held-out rows; the evaluation's loaders normalize with them too (the training scale).
    norm = [training_stats(st, hooks, train_rows, eval_rows, cfg.threads) for st in stores]

    def loaders_over(selection: dict, **kw) -> list[ActivationLoader]:
        return [
            ActivationLoader(st, hooks, cfg.batch_size, **kw, **paired, **common, **selection, stats=ns)
            for st, ns in zip(stores, norm)
        ]

    loaders = loaders_over(
        train_rows, shuffle=True, seed=cfg.seed, epochs=None, drop_last=True, buffer_rows=_window(cfg, lay, stores)
    )
    global_batch = cfg.batch_size * data_world
    total = math.ceil(cfg.tokens / global_batch)
    run = _resume_or_init(cfg, out, store, loaders, dev, rank, lay, shard, dist)

    log_path = out / "log.jsonl"
    if rank == 0:
        _keep_log_until(log_path, run.step)
    bar = _progress_bar(cfg, total, run.step) if rank == 0 and progress else None
    t_last, tok_last = time.perf_counter(), run.tokens
    metrics = {}
    it = _pairs(loaders, lay)
    first = None
    if run.step == 0 and run.sae.act in ("jumprelu", "gated"):
        first = next(it)  # also the first step's batch: the init takes nothing from the stream
        _init_thresholds(cfg, run, first[0], None if shard else dist)
    while run.step < total:
        pair = first if first is not None else next(it)
        first = None
        res = _step(cfg, run, *pair, total, global_batch, dist)
        if run.step % cfg.log_every == 0 or run.step == total:
            metrics = _metrics(cfg, run, res, dist)
            now = time.perf_counter()  # after the metrics' device sync, so the rate counts the step's work
            metrics["tokens_per_s"] = (run.tokens - tok_last) / max(1e-9, now - t_last)
            t_last, tok_last = now, run.tokens
            if rank == 0:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
                if bar is not None:
                    bar.set_postfix(
                        fvu=f"{metrics['fvu']:.3f}",
                        l0=f"{metrics['l0']:.1f}",
                        dead=f"{metrics['dead_frac']:.3f}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}",
                    )
        if bar is not None:
            bar.update(1)
        if run.step % cfg.checkpoint_every == 0 or run.step == total:
            _checkpoint(cfg, out, run, loaders, dist, rank)
    if bar is not None:
        bar.close()
    for ld in loaders:
        ld.close()
    if eval_rows is not None:
        ev_loaders = loaders_over(eval_rows, shuffle=False, epochs=1)
        held_out.update(evaluate(run.sae, _pairs(ev_loaders, lay), dist, lay.names))
        for ld in ev_loaders:
            ld.close()
        if rank == 0:
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"step": run.step, "tokens": run.tokens, "eval": held_out}) + "\n")
    summary = {
        "steps": run.step,
        "tokens": run.tokens,
        "final": metrics,
        "eval": held_out,
        "lr": run.base_lr,
        "warmup_steps": warmup_steps(cfg, total),
        "out": str(out),
        "arch": cfg.arch,
        "source": lay.sources[0] if len(lay.sources) == 1 else lay.sources,
        "target": lay.targets[0] if len(lay.targets) == 1 else lay.targets,
        "latents": cfg.latents,
        "k": cfg.k,
        "world_size": world,
    }
    whole = run.sae.gathered() if shard else run.sae  # every rank takes part in the gather
    if rank == 0:
        save(whole, out / "sae")
        if cfg.eval_model and eval_rows is not None:
            summary["eval_model"] = _eval_model(cfg, store, eval_rows, out, dev)
            with open(log_path, "a") as fh:
                fh.write(
                    json.dumps({"step": run.step, "tokens": run.tokens, "eval_model": summary["eval_model"]}) + "\n"
                )
        _sync_log(log_path)
        write_file(out, "summary.json", json.dumps(summary, indent=1))
    if dist is not None:
        dist.barrier()
    return (summary, run.sae) if return_sae else summary
