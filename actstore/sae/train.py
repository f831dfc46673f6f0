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


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                meta["state"][str(idx)][k] = v
    write_safetensors(path, "optimizer.safetensors", tensors)
    write_file(path, "optimizer.json", json.dumps(meta))


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, device) -> None:
    meta = json.loads((path / "optimizer.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
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


def _new_sae(cfg: TrainConfig, store, loader: ActivationLoader) -> SparseAutoencoder:
    """A fresh SAE for ``cfg``: sizes from the store, normalization factors from the loader,
    decoder bias at the target's mean (in the training scale)."""
    src, tgt = cfg.source_hook, cfg.target_hook
    scale = loader.scale_factors.get(src, 1.0)
    scale_out = loader.scale_factors.get(tgt, 1.0)
    extra = {}
    if tgt != src:
        extra = {"d_out": store._hook(tgt).d, "target": tgt, "scale_out": scale_out, "activation": cfg.activation}
    scfg = SAEConfig(
        cfg.arch, store._hook(src).d, cfg.latents, k=cfg.k, scale=scale, hook=src, widths=cfg.widths, **extra, **cfg.sae
    )
    sae = build(scfg, seed=cfg.seed)
    standardized = cfg.normalize == "standardize"  # zero-mean already
    mean = torch.as_tensor(store.stats(tgt)["mean"], dtype=torch.float32)
    sae.init_b_dec(mean * scale_out if not standardized else torch.zeros_like(mean))
    if sae.cfg.is_transcoder and not standardized:
        sae.center_encoder(torch.as_tensor(store.stats(src)["mean"], dtype=torch.float32) * scale)
    return sae


def _resume_or_init(cfg: TrainConfig, out: Path, store, loader: ActivationLoader, dev: torch.device, rank: int) -> _Run:
    """The run's state: from the checkpoint ``OUT/latest.json`` names (refused when the
    settings differ), or a new SAE (decoder bias at the data mean, in the training scale)."""
    latest = out / "latest.json"
    resumed = latest.exists()
    if resumed:
        pointer = json.loads(latest.read_text())
        saved = pointer["train_config"]
        mine = json.loads(json.dumps(dataclasses.asdict(cfg)))
        diff = sorted(k for k in mine if k not in ("device", "threads") and mine[k] != saved.get(k))
        if diff:
            raise SAEError(
                f"{out} holds a run with different settings ({', '.join(diff)}): "
                "use a new --out, or the same settings to resume"
            )
        ck = out / pointer["checkpoint"]
        sae = load(ck / "sae").to(dev)
        counters = json.loads((ck / "trainer.json").read_text())
        step, tokens = counters["step"], counters["tokens"]
        since_fired = load_file(str(ck / "trainer.safetensors"))["tokens_since_fired"].to(dev)
        loader.load_state_dict(json.loads((ck / f"loader-rank{rank}.json").read_text()))
        enc = ck / f"encoder-rank{rank}.json"  # absent in checkpoints of older versions: start afresh
        if enc.exists():
            sae.load_encoder_state(json.loads(enc.read_text()))
    else:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        sae = _new_sae(cfg, store, loader).to(dev)
        step, tokens = 0, 0
        since_fired = torch.zeros(cfg.latents, dtype=torch.int64, device=dev)
    sae.train()
    base_lr = cfg.lr if cfg.lr is not None else default_lr(cfg.latents)
    opt = torch.optim.AdamW(sae.parameters(), lr=base_lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if resumed:
        _load_optimizer(opt, ck, dev)
    elif sae.renorm_decoder:
        sae.normalize_decoder()
    return _Run(sae, opt, base_lr, step, tokens, since_fired)


def _write_checkpoint(out: Path, run: _Run, loader: ActivationLoader, dist, rank: int) -> Path:
    """Write ``ckpt-<step>/`` whole (every rank its loader state, rank 0 the rest); ranks
    meet before and after."""
    ck = out / f"ckpt-{run.step:08d}"
    if rank == 0:
        if ck.exists():  # left by a run killed while writing it
            shutil.rmtree(ck)
        ck.mkdir(parents=True)
    if dist is not None:
        dist.barrier()
    write_file(ck, f"loader-rank{rank}.json", json.dumps(loader.state_dict()))
    write_file(ck, f"encoder-rank{rank}.json", json.dumps(run.sae.encoder_state()))
    if rank == 0:
        save(run.sae, ck / "sae", fold_scale=False)
        _save_optimizer(run.opt, ck)
        write_file(ck, "trainer.json", json.dumps({"step": run.step, "tokens": run.tokens}))
        write_safetensors(ck, "trainer.safetensors", {"tokens_since_fired": run.since_fired})
    if dist is not None:
        dist.barrier()
    return ck


def _point_latest(cfg: TrainConfig, out: Path, ck: Path, step: int) -> None:
    """Rank 0: replace ``latest.json`` by one naming ``ck`` (every file of it is durable by
    now), then delete the checkpoint it named before."""
    prev = json.loads((out / "latest.json").read_text())["checkpoint"] if (out / "latest.json").exists() else None
    doc = {"checkpoint": ck.name, "step": step, "train_config": dataclasses.asdict(cfg)}
    write_file(out, "latest.json", json.dumps(doc))
    if prev and prev != ck.name:
        shutil.rmtree(out / prev, ignore_errors=True)


def _checkpoint(cfg: TrainConfig, out: Path, run: _Run, loader: ActivationLoader, dist, rank: int) -> None:
    """Write ``ckpt-<step>/``, then point ``latest.json`` at it and delete the older folder."""
    ck = _write_checkpoint(out, run, loader, dist, rank)
    if rank == 0:
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
    targets ``y [batch_size, d_out]``, else None); returns the loss terms."""
    sae, opt = run.sae, run.opt
    dead = run.since_fired >= cfg.dead_tokens
    res = sae.loss(x, dead_mask=dead if sae.uses_auxk else None, **({} if y is None else {"target": y}))
    opt.zero_grad(set_to_none=True)
    res["loss"].backward()
    fired = res["latents"].fired()
    if dist is not None:
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
    levels = res.get("level_fvu")  # Matryoshka: the FVU of each nested prefix, innermost first
    vals = torch.cat(
        [
            torch.stack(
                [
                    res["loss"].detach().float(),
                    res["fvu"].detach().float(),
                    torch.tensor(res["latents"].l0(), device=run.since_fired.device),
                ]
            ),
            levels.float() if levels is not None else torch.zeros(0, device=run.since_fired.device),
        ]
    )
    if dist is not None:
        dist.all_reduce(vals)
        vals /= dist.get_world_size()
    return {
        "step": run.step,
        "tokens": run.tokens,
        "loss": float(vals[0]),
        "fvu": float(vals[1]),
        "l0": float(vals[2]),
        **({"level_fvu": [float(v) for v in vals[3:]]} if levels is not None else {}),
        "dead_frac": float((run.since_fired >= cfg.dead_tokens).float().mean()),
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
        log_path.write_text("".join(ln + "\n" for ln in lines))


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


def _source_target(batch, cfg: TrainConfig):
    """``(x, y)`` of a loader batch: a tensor for an SAE (y None), a dict for a transcoder."""
    if torch.is_tensor(batch):
        return batch, None
    return batch[cfg.source_hook], batch[cfg.target_hook]


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, loader: ActivationLoader, dist=None, cfg: TrainConfig | None = None) -> dict:
    """FVU of the target (over the whole set: squared error / total variance about the set's
    mean), L0 (mean active latents per row) and the fraction of latents that never fire, on
    every row ``loader`` yields (summed over ranks). A transcoder's loader yields its source
    and target hooks (``cfg`` names them); an SAE's, one tensor."""
    was_training = sae.training
    sae.eval()
    dev = next(sae.parameters()).device
    m = sae.cfg.m
    acc = None  # [err^2, rows, active] float64, then sum y and sum y^2 per dim
    fired = torch.zeros(m, dtype=torch.int32, device=dev)
    for batch in loader:
        x, y = _source_target(batch, cfg) if cfg is not None else (batch, None)
        y = x if y is None else y
        lat = sae.encode(x)
        xd = y.double()
        # Every level's squared error (several for Matryoshka); the last is the whole reconstruction.
        outs = sae.level_outputs(lat, x)
        part = torch.cat(
            [
                torch.stack(
                    [
                        torch.tensor(float(x.shape[0]), dtype=torch.float64, device=dev),
                        torch.tensor(lat.l0() * lat.n, dtype=torch.float64, device=dev),
                        *[(o.double() - xd).pow(2).sum() for o in outs],
                    ]
                ),
                xd.sum(0),
                xd.pow(2).sum(0),
            ]
        )
        acc = part if acc is None else acc + part
        fired |= lat.fired().to(torch.int32)
    if dist is not None:
        dist.all_reduce(acc)
        dist.all_reduce(fired, op=dist.ReduceOp.MAX)
    sae.train(was_training)
    g = len(sae.cfg.widths or [None])  # levels: Matryoshka's widths, else one
    n, active = float(acc[0]), float(acc[1])
    errs = [float(v) for v in acc[2 : 2 + g]]
    d = (acc.numel() - 2 - g) // 2
    s1, s2 = acc[2 + g : 2 + g + d], acc[2 + g + d :]
    total = max(float((s2 - s1.pow(2) / n).sum()), 1e-12)
    return {
        "rows": int(n),
        "fvu": errs[-1] / total,
        **({"level_fvu": [e / total for e in errs]} if g > 1 else {}),
        "l0": active / n,
        "dead_frac": float((fired == 0).float().mean()),
    }


def _check_store_hooks(cfg: TrainConfig, store) -> None:
    """One line for a hook the store lacks, or a target in another store."""
    for role, name in (("hook" if cfg.hook else "source", cfg.source_hook), ("target", cfg.target_hook)):
        if name not in store.hooks:
            raise SAEError(f"{role} {name!r} is not in the store (it has {', '.join(store.hooks)}): pick one of those")
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
    in place of the module it stands in for (``cfg.target_hook`` fed from ``cfg.source_hook``)."""
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
    return {"model": cfg.eval_model, **lm_loss_increase(cfg.eval_model, sae, windows, hook=cfg.source_hook, device=dev)}


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
    hooks = cfg.source_hook if cfg.source_hook == cfg.target_hook else [cfg.source_hook, cfg.target_hook]
    train_rows, eval_rows, held_out = split(cfg, store)
    common = dict(device=dev, normalize=cfg.normalize, threads=cfg.threads, rank=rank, world_size=world)
    loader = ActivationLoader(
        store,
        hooks,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        epochs=None,
        drop_last=True,
        buffer_rows=cfg.buffer_rows,
        **common,
        **train_rows,
    )
    global_batch = cfg.batch_size * world
    total = math.ceil(cfg.tokens / global_batch)
    run = _resume_or_init(cfg, out, store, loader, dev, rank)

    log_path = out / "log.jsonl"
    if rank == 0:
        _keep_log_until(log_path, run.step)
    bar = _progress_bar(cfg, total, run.step) if rank == 0 and progress else None
    t_last, tok_last = time.perf_counter(), run.tokens
    metrics = {}
    it = iter(loader)
    first = None
    if run.step == 0 and run.sae.act in ("jumprelu", "gated"):
        first = next(it)  # also the first step's batch: the init takes nothing from the stream
        _init_thresholds(cfg, run, _source_target(first, cfg)[0], dist)
    while run.step < total:
        batch = first if first is not None else next(it)
        first = None
        res = _step(cfg, run, *_source_target(batch, cfg), total, global_batch, dist)
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
            _checkpoint(cfg, out, run, loader, dist, rank)
    if bar is not None:
        bar.close()
    loader.close()
    if eval_rows is not None:
        ev_loader = ActivationLoader(store, hooks, cfg.batch_size, shuffle=False, epochs=1, **common, **eval_rows)
        held_out.update(evaluate(run.sae, ev_loader, dist, cfg))
        ev_loader.close()
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
        "source": cfg.source_hook,
        "target": cfg.target_hook,
        "latents": cfg.latents,
        "k": cfg.k,
        "world_size": world,
    }
    if rank == 0:
        save(run.sae, out / "sae")
        if cfg.eval_model and eval_rows is not None:
            summary["eval_model"] = _eval_model(cfg, store, eval_rows, out, dev)
            with open(log_path, "a") as fh:
                fh.write(
                    json.dumps({"step": run.step, "tokens": run.tokens, "eval_model": summary["eval_model"]}) + "\n"
                )
        write_file(out, "summary.json", json.dumps(summary, indent=1))
    if dist is not None:
        dist.barrier()
    return (summary, run.sae) if return_sae else summary
