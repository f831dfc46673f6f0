"""Cross-layer transcoders (CLTs) and layer crosscoders on SmolLM2-135M-Instruct layers 8-15:
against per-layer transcoders and per-hook SAEs at equal latents and L0, the CLT's sparse
training step against a dense-decode one, and the training memory at 8 and 16 layers.

Data (part ``data``, cached in ``--work``, default /tmp/actstore-clt): one ``actstore.capture``
of SmolLM2-135M-Instruct (``python:actstore.models.smollm2:load_smollm2``, fp32 on the CPU) at
16 hooks in one forward, ``model.layers.{l}.mlp:input`` (the MLP's input, after the
post-attention RMSNorm) and ``model.layers.{l}.mlp`` (its output) for l = 8..15, an explicit
list, over all of Python's ``pydoc_data.topics`` (context 128, BOS and special tokens dropped,
bf16 zstd; d = 576). Every part reads this one store; rows are scaled as the trainer's
loader does (``normalize="mean_norm"``: each hook by sqrt(d) / its mean row norm), and
"held-out" is the trainer's own split (the last 5% of the rows), never trained on.

Sizes (the defaults): m = 1024 latents and TopK k = 16 per layer (k/m = 1.6%, under the 3%
where actstore's CPU decode switches to a dense GEMM, so the CLT decodes sparsely), batch 512,
200 steps (102,400 tokens: about one pass over the ~107k training rows), float32, 2 threads.

Parts (``--parts``, comma-separated; the default runs all of them):

- ``clt``: ``actstore.sae.train`` of a TopK CLT (``arch="clt"``, ``source`` the 8 MLP inputs,
  ``target`` the 8 MLP outputs, ``--latents`` m per layer, ``--k`` per layer) against 8 TopK
  transcoders (``arch="transcoder"``, one per layer, m and k each): equal total latents (8 m),
  equal L0 (8 k per token), the same batch, steps and lr (the trainer's default lr depends on
  ``latents``, m for both), seed 0; the loaders' first batches are checked to hold the same
  rows. Reported: held-out FVU of each layer's MLP output (the CLT's ``block_fvu``; each
  transcoder's ``fvu``) and their mean, L0, dead fraction (per layer for the CLT, from its
  held-out codes), wall time of each ``train`` call (run one after the other: 4 transcoders,
  the CLT, 4 transcoders; the interleaved step timing is in ``speed``), parameters.
  Then the LM loss with all 8 MLP outputs replaced at once over the same held-out tokens
  (``--eval-model-tokens``; the trainer's ``eval_model`` step, ``_eval_model``): by the CLT, and
  by the 8 transcoders put together by this script as one block-diagonal CLT (decoder
  ``s -> t`` zero for ``s != t``; checked to give each transcoder's output), spliced by the
  same code; clean, spliced, all 8 zeroed, and the share of that gap recovered.
- ``crosscoder``: a TopK layer crosscoder over ``model.layers.{9,12,15}.mlp`` (m_total = 3 m,
  k_total = 3 k) against 3 TopK SAEs (m and k each), the same batch and steps, each at the
  trainer's default lr for its ``latents`` (the crosscoder's is 1/sqrt(3) of the SAEs'), and
  a crosscoder at the SAEs' lr. Reported: held-out FVU per hook (``block_fvu`` / ``fvu``), L0,
  dead fraction, wall time.
- ``speed``: one CLT training step (loss on real batches, backward, AdamW step; float32) of
  actstore's CLT (TopK encoders, one sparse decode per target) against the same model written
  here in plain PyTorch with the code densified to ``[B, L m]`` and multiplied by each target's
  stacked decoder ``[(l+1) m, d]``: ``dense_decode`` (actstore's TopK encoder op, so only the
  decode differs) and ``plain_pytorch`` (also the encoder: ``addmm`` + ``torch.topk`` with
  autograd, a dense encoder backward); and 8 actstore transcoders (fresh, seeds 0-7), one step
  each on the layer slices of the same batch. Same weights (the CLT after ``--warm-steps`` steps, copied),
  same batches, interleaved rounds (``_common.interleaved``, order rotating), medians. Before
  timing, the loss and every gradient of each variant are compared with actstore's on one
  batch. Also the decode alone (forward + backward of the 8 targets from a fixed code).
- ``memory``: peak RSS of a fresh subprocess per configuration running ``--mem-steps`` CLT
  training steps on **synthetic** rows (``torch.randn``, labelled so) at L = 8 and 16 layers:
  actstore's CLT, ``dense_decode`` and ``plain_pytorch``; with the RSS after imports and after
  building the model and AdamW, so the step's own memory is visible beside that of the
  parameters. The peak is ``VmHWM`` of ``/proc/self/status`` (reset before the steps), not
  ``getrusage().ru_maxrss``: on Linux a child inherits its parent's high-water mark through
  fork + exec (each child here started at the parent's ~6 GiB).

    PYTHONPATH=$PWD python benchmarks/bench_clt.py [--parts data,clt,crosscoder,speed,memory]

Writes ``benchmarks/results/clt_cpu.json``: each part's section with its own ``meta`` (taken
before the part measures anything); a part run later replaces its own section and keeps the
others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from actstore import open as open_store  # noqa: E402
from actstore.demo import SMOLLM2_MODEL  # noqa: E402
from actstore.loader import ActivationLoader  # noqa: E402
from actstore.ops import topk_encode  # noqa: E402
from actstore.ops.csr_decode import decode_choice  # noqa: E402
from actstore.sae.config import SAEConfig  # noqa: E402
from actstore.sae.io import load, save  # noqa: E402
from actstore.sae.registry import build  # noqa: E402
from actstore.sae.train import TrainConfig, _eval_model, default_lr, split, train  # noqa: E402

LAYERS = list(range(8, 16))
HOOKS_IN = [f"model.layers.{layer}.mlp:input" for layer in LAYERS]
HOOKS_OUT = [f"model.layers.{layer}.mlp" for layer in LAYERS]
CC_HOOKS = [f"model.layers.{layer}.mlp" for layer in (9, 12, 15)]
STORE_NAME = "smollm2_l8-15_mlp_in_out"
RESULT = "clt_cpu"
D = 576
SHARED_NOTE = (
    "2 CPU cores shared with other agents running test suites during this run: timings are "
    "medians of interleaved rounds (order rotating) where compared, and single wall times "
    "(train calls run one after the other) move with the load; see loadavg in meta"
)


# -- data ----------------------------------------------------------------------------------


def prepare_store(work: Path) -> tuple[Path, dict]:
    """The store of the 16 hooks (8 MLP inputs, 8 MLP outputs), captured in one forward into
    ``work`` once (a ``done`` file marks it complete); its path and what the capture reported
    (or that it was cached)."""
    from actstore.capture import capture  # deferred: the model machinery
    from actstore.demo import write_english_jsonl

    store = work / STORE_NAME
    done = work / f"{STORE_NAME}.done.json"
    if done.exists():
        return store, {**json.loads(done.read_text()), "cached": True}
    work.mkdir(parents=True, exist_ok=True)
    data = write_english_jsonl(str(work / "pydoc_topics.jsonl"))
    hooks = [h for pair in zip(HOOKS_IN, HOOKS_OUT) for h in pair]
    print(f"capturing SmolLM2-135M-Instruct {len(hooks)} hooks (layers 8-15) over {data} into {store} ...", flush=True)
    t0 = time.perf_counter()
    s = capture(SMOLLM2_MODEL, ",".join(hooks), data, str(store), context=128, batch_size=16, drop="bos,special")
    info = {
        "model": SMOLLM2_MODEL,
        "hooks": hooks,
        "text": "pydoc_data.topics (all 79 documents), context 128, BOS and special tokens dropped, bf16 zstd",
        "rows": s["committed_rows"],
        "capture_seconds": time.perf_counter() - t0,
        "tokens_per_s": s["tokens_per_s"],
        "bytes_on_disk": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()),
    }
    info["bytes_per_row"] = info["bytes_on_disk"] / max(1, info["rows"])
    info["bf16_bytes_per_row_uncompressed"] = len(hooks) * D * 2
    done.write_text(json.dumps(info))
    return store, {**info, "cached": False}


def _cfg(store: Path, out: Path, arch: str, m: int, k: int, steps: int, batch: int, **kw) -> TrainConfig:
    return TrainConfig(
        store=str(store), arch=arch, latents=m, k=k, tokens=steps * batch, batch_size=batch, out=str(out),
        checkpoint_every=10**9, **kw,
    )  # fmt: skip


def clt_cfg(store: Path, out: Path, m: int, k: int, steps: int, batch: int, **kw) -> TrainConfig:
    return _cfg(
        store, out, "clt", m, k, steps, batch, source=",".join(HOOKS_IN), target=",".join(HOOKS_OUT),
        activation="topk", **kw,
    )  # fmt: skip


def transcoder_cfg(store: Path, out: Path, i: int, m: int, k: int, steps: int, batch: int) -> TrainConfig:
    return _cfg(
        store, out, "transcoder", m, k, steps, batch, source=HOOKS_IN[i], target=HOOKS_OUT[i], activation="topk"
    )


def first_rows(cfg: TrainConfig, store, hooks: list[str], batches: int = 2) -> torch.Tensor:
    """The global row ids of the first ``batches`` training batches of the trainer's loader
    settings (shuffled, seed, the train split) over ``hooks``."""
    tr, _, _ = split(cfg, store)
    ld = ActivationLoader(
        store, hooks, cfg.batch_size, shuffle=True, seed=cfg.seed, epochs=None, drop_last=True,
        buffer_rows=cfg.buffer_rows, normalize=cfg.normalize, tokens=True, **tr,
    )  # fmt: skip
    out = []
    for b in ld:
        out.append(b["row"].clone())
        if len(out) == batches:
            break
    ld.close()
    return torch.cat(out)


def _run_train(name: str, cfg: TrainConfig) -> tuple[dict, object, float]:
    shutil.rmtree(cfg.out, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"  train {name} ({cfg.arch}, m={cfg.latents}, k={cfg.k}, {cfg.tokens} tokens) ...", flush=True)
    t0 = time.perf_counter()
    s, sae = train(cfg, progress=False, return_sae=True)
    sec = time.perf_counter() - t0
    s["loadavg_1min_at_start"] = load
    ev = s["eval"]
    print(
        f"    held-out FVU {ev['fvu']:.4f} L0 {ev['l0']:.1f} dead {ev['dead_frac']:.4f} ({sec:.0f} s, "
        f"{s['steps']} steps, lr {s['lr']:.3g})",
        flush=True,
    )
    return s, sae, sec


def _params(mod: nn.Module) -> int:
    return sum(p.numel() for p in mod.parameters())


@torch.no_grad()
def clt_layer_dead(sae, cfg: TrainConfig, store) -> dict:
    """Each layer's share of the CLT's latents that fire on no held-out row, and each layer's
    mean active latents per row, from its codes of the trainer's held-out rows."""
    _, ev, _ = split(cfg, store)
    ld = ActivationLoader(
        store, HOOKS_IN, 2048, shuffle=False, epochs=1, normalize=cfg.normalize, **ev
    )  # the held-out rows
    L, m = len(HOOKS_IN), cfg.latents
    fired = torch.zeros(L, m, dtype=torch.bool)
    active = torch.zeros(L, dtype=torch.float64)
    n = 0
    sae.eval()
    for b in ld:
        x = torch.stack([b[h] for h in HOOKS_IN], 1)
        lat = sae.encode(x)
        fired |= lat.fired().view(L, m)
        nz = lat.cols[lat.vals != 0] // m
        active += torch.bincount(nz, minlength=L).double()
        n += x.shape[0]
    ld.close()
    sae.train()
    return {
        "dead_frac_per_layer": [float(v) for v in (~fired).float().mean(1)],
        "l0_per_layer": [float(v) for v in active / n],
        "rows": n,
    }


def block_diagonal_clt(transcoders: list, m: int, k: int):
    """The 8 transcoders as one CLT whose decoders ``s -> t`` are zero for ``s != t``: layer
    ``t``'s encoder and decoder are transcoder ``t``'s, so the CLT's output at target ``t`` is
    transcoder ``t``'s (this script's code; it lets actstore's CLT splice put all 8 in at once)."""
    bd = build(SAEConfig("clt", D, m, k=k, d_out=D, activation="topk", sources=HOOKS_IN, targets=HOOKS_OUT), seed=0)
    with torch.no_grad():
        for t, tc in enumerate(transcoders):
            bd.W_enc[t].copy_(tc.W_enc)
            bd.b_enc[t].copy_(tc.b_enc)
            bd.b_dec[t].copy_(tc.b_dec)
            bd.W_dec[t].zero_()
            bd.W_dec[t][t * m : (t + 1) * m].copy_(tc.W_dec)
    return bd.eval()


@torch.no_grad()
def _check_block_diagonal(bd, transcoders: list, store, cfg: TrainConfig) -> float:
    """Max abs difference of the block-diagonal CLT's outputs from each transcoder's, on 512
    raw (unnormalized) held-out rows."""
    _, ev, _ = split(cfg, store)
    ld = ActivationLoader(store, HOOKS_IN, 512, shuffle=False, epochs=1, **ev)
    b = next(iter(ld))
    ld.close()
    x = torch.stack([b[h] for h in HOOKS_IN], 1)
    y = bd.output(x)
    return max(float((y[:, t] - tc.output(x[:, t])).abs().max()) for t, tc in enumerate(transcoders))


def _splices(args, ccfg: TrainConfig, store, transcoders: list, work: Path) -> dict:
    """The LM loss with all 8 layers' MLP outputs replaced at once, over the same held-out
    tokens (the trainer's ``_eval_model``: its windows, its splice): by the CLT (its saved,
    folded ``OUT/sae``) and by the 8 transcoders (as a block-diagonal CLT, this script's code)."""
    cfg = dataclasses.replace(ccfg, eval_model=SMOLLM2_MODEL, eval_model_tokens=args.eval_model_tokens)
    _, ev, _ = split(cfg, store)
    out = {}
    tc_dir = work / "transcoder_set"
    shutil.rmtree(tc_dir, ignore_errors=True)
    bd = block_diagonal_clt(transcoders, args.latents, args.k)
    save(bd, tc_dir / "sae")
    check = _check_block_diagonal(bd, transcoders, store, cfg)
    print(f"clt: the transcoders as a block-diagonal CLT: outputs within {check:.2e} (max abs) of theirs", flush=True)
    for name, folder in (("clt", Path(ccfg.out)), ("transcoders_x8", tc_dir)):
        print(f"clt: LM loss with {name} spliced in at layers 8-15 ({args.eval_model_tokens} tokens) ...", flush=True)
        t0 = time.perf_counter()
        em = _eval_model(cfg, store, ev, folder, torch.device("cpu"))
        em["seconds"] = time.perf_counter() - t0
        out[name] = em
        print(
            f"  clean {em['clean']:.4f} spliced {em['spliced']:.4f} zero {em['zero_ablation']:.4f} nats/token: "
            f"recovered {em['recovered']:.4f} ({em['tokens']} tokens, {em['seconds']:.0f} s)",
            flush=True,
        )
    shutil.rmtree(tc_dir, ignore_errors=True)
    return {
        "how": "actstore.sae.train._eval_model (the trainer's eval_model step) on the CLT's saved folder and on a "
        "folder holding the 8 transcoders as one block-diagonal CLT (built by this script: decoders s->t zero for "
        "s != t); both replace every MLP output of layers 8-15 in one forward (layer 16+ compute from the replaced "
        "outputs); zero ablation zeroes all 8",
        "model": SMOLLM2_MODEL,
        "block_diagonal_max_abs_diff": check,
        **out,
    }


def part_clt(args, store_path: Path) -> dict:
    m, k, steps, batch = args.latents, args.k, args.steps, args.batch
    work = Path(args.work) / "runs_clt"
    store = open_store(str(store_path))
    ccfg = clt_cfg(store_path, work / "clt", m, k, steps, batch)
    tcfgs = [transcoder_cfg(store_path, work / f"tc{layer}", i, m, k, steps, batch) for i, layer in enumerate(LAYERS)]
    # The trainer's loaders over 16 hooks (CLT) and 2 (a transcoder) must hand out the same rows.
    rows_clt = first_rows(ccfg, store, HOOKS_IN + HOOKS_OUT)
    rows_tc = first_rows(tcfgs[0], store, [HOOKS_IN[0], HOOKS_OUT[0]])
    same_rows = bool(torch.equal(rows_clt, rows_tc))
    print(
        f"clt: the first 2 batches of the CLT's and a transcoder's loaders hold the same rows: {same_rows}", flush=True
    )
    order = [("transcoder", i) for i in range(4)] + [("clt", None)] + [("transcoder", i) for i in range(4, 8)]
    tc_rows: list = [None] * 8
    tc_saved: list = [None] * 8
    clt_row = None
    for kind, i in order:
        if kind == "clt":
            s, sae, sec = _run_train("clt", ccfg)
            per_layer = clt_layer_dead(sae, ccfg, store)
            clt_row = {
                "seconds": sec,
                "steps": s["steps"],
                "tokens": s["tokens"],
                "lr": s["lr"],
                "loadavg_1min_at_start": s["loadavg_1min_at_start"],
                "held_out": s["eval"],
                "fvu_per_layer": [s["eval"]["block_fvu"][h] for h in HOOKS_OUT],
                "fvu_mean_of_layers": statistics.fmean(s["eval"]["block_fvu"][h] for h in HOOKS_OUT),
                "l0_total": s["eval"]["l0"],
                **per_layer,
                "params": _params(sae),
                "decoder_params": sum(w.numel() for w in sae.W_dec),
                "train_fvu_last_log": s["final"].get("fvu"),
            }
        else:
            s, sae, sec = _run_train(f"transcoder L{LAYERS[i]}", tcfgs[i])
            tc_saved[i] = load(Path(tcfgs[i].out) / "sae")  # normalization folded in: takes raw activations
            tc_rows[i] = {
                "seconds": sec,
                "steps": s["steps"],
                "lr": s["lr"],
                "loadavg_1min_at_start": s["loadavg_1min_at_start"],
                "held_out": s["eval"],
                "params": _params(sae),
            }
            shutil.rmtree(tcfgs[i].out, ignore_errors=True)
    splice = _splices(args, ccfg, store, tc_saved, work) if args.eval_model_tokens else None
    shutil.rmtree(ccfg.out, ignore_errors=True)
    store.close()
    tc = {
        "fvu_per_layer": [r["held_out"]["fvu"] for r in tc_rows],
        "fvu_mean_of_layers": statistics.fmean(r["held_out"]["fvu"] for r in tc_rows),
        "l0_per_layer": [r["held_out"]["l0"] for r in tc_rows],
        "l0_total": sum(r["held_out"]["l0"] for r in tc_rows),
        "dead_frac_per_layer": [r["held_out"]["dead_frac"] for r in tc_rows],
        "dead_frac_mean": statistics.fmean(r["held_out"]["dead_frac"] for r in tc_rows),
        "seconds_total": sum(r["seconds"] for r in tc_rows),
        "params_total": sum(r["params"] for r in tc_rows),
        "runs": {HOOKS_OUT[i]: r for i, r in enumerate(tc_rows)},
    }
    clt_row["dead_frac_mean_of_layers"] = statistics.fmean(clt_row["dead_frac_per_layer"])
    return {
        "setup": {
            "layers": LAYERS,
            "sources": HOOKS_IN,
            "targets": HOOKS_OUT,
            "m_per_layer": m,
            "k_per_layer": k,
            "total_latents_each": 8 * m,
            "l0_per_token_each": 8 * k,
            "activation": "topk",
            "batch": batch,
            "steps": steps,
            "tokens": steps * batch,
            "lr": f"trainer default for latents={m}: {default_lr(m):.6g} (both); warmup 5%, "
            "linear decay over the last 20%",
            "dtype": "float32",
            "seed": 0,
            "same_rows_first_two_batches": same_rows,
            "order": "transcoders L8-L11, the CLT, transcoders L12-L15 (one after the other)",
        },
        "clt": clt_row,
        "transcoders": tc,
        "clt_minus_transcoders_fvu_per_layer": [a - b for a, b in zip(clt_row["fvu_per_layer"], tc["fvu_per_layer"])],
        "eval_model": splice,
    }


# -- crosscoder ----------------------------------------------------------------------------


def part_crosscoder(args, store_path: Path) -> dict:
    m, k, steps, batch = args.latents, args.k, args.steps, args.batch
    K = len(CC_HOOKS)
    work = Path(args.work) / "runs_cc"
    sae_cfgs = [_cfg(store_path, work / f"sae{i}", "topk", m, k, steps, batch, hook=h) for i, h in enumerate(CC_HOOKS)]
    cc_cfg = _cfg(store_path, work / "cc", "crosscoder", K * m, K * k, steps, batch, hooks=",".join(CC_HOOKS),
                  activation="topk")  # fmt: skip
    cc_same = _cfg(store_path, work / "cc_lr", "crosscoder", K * m, K * k, steps, batch, hooks=",".join(CC_HOOKS),
                   activation="topk", lr=default_lr(m))  # fmt: skip
    runs = {}
    for name, cfg in (("sae0", sae_cfgs[0]), ("crosscoder", cc_cfg), ("sae1", sae_cfgs[1]),
                      ("crosscoder_at_sae_lr", cc_same), ("sae2", sae_cfgs[2])):  # fmt: skip
        s, sae, sec = _run_train(name, cfg)
        runs[name] = {
            "seconds": sec,
            "steps": s["steps"],
            "lr": s["lr"],
            "loadavg_1min_at_start": s["loadavg_1min_at_start"],
            "held_out": s["eval"],
            "params": _params(sae),
        }
        shutil.rmtree(cfg.out, ignore_errors=True)
    saes = [runs[f"sae{i}"] for i in range(K)]
    out = {
        "setup": {
            "hooks": CC_HOOKS,
            "sae_m": m,
            "sae_k": k,
            "crosscoder_m_total": K * m,
            "crosscoder_k_total": K * k,
            "activation": "topk (crosscoder: TopK over the concatenation, unit-norm decoder rows over it)",
            "batch": batch,
            "steps": steps,
            "lr": {
                "saes": default_lr(m),
                "crosscoder": default_lr(K * m),
                "crosscoder_at_sae_lr": default_lr(m),
            },
            "dtype": "float32",
            "order": "sae L9, crosscoder, sae L12, crosscoder at the SAEs' lr, sae L15",
        },
        "saes": {
            "fvu_per_hook": [r["held_out"]["fvu"] for r in saes],
            "fvu_mean": statistics.fmean(r["held_out"]["fvu"] for r in saes),
            "l0_total": sum(r["held_out"]["l0"] for r in saes),
            "dead_frac_mean": statistics.fmean(r["held_out"]["dead_frac"] for r in saes),
            "seconds_total": sum(r["seconds"] for r in saes),
            "runs": {h: saes[i] for i, h in enumerate(CC_HOOKS)},
        },
    }
    for name in ("crosscoder", "crosscoder_at_sae_lr"):
        r = runs[name]
        out[name] = {
            **r,
            "fvu_per_hook": [r["held_out"]["block_fvu"][h] for h in CC_HOOKS],
            "fvu_mean": statistics.fmean(r["held_out"]["block_fvu"][h] for h in CC_HOOKS),
            "l0_total": r["held_out"]["l0"],
            "dead_frac": r["held_out"]["dead_frac"],
        }
    return out


# -- the CLT in plain PyTorch (dense decode) ------------------------------------------------


class DenseCLT(nn.Module):
    """The TopK CLT of ``actstore.sae.clt`` (same parameters, same loss: ``mean_l FVU_l``, no
    AuxK) written in plain PyTorch with a dense decode: each layer's TopK code scattered into
    ``[n, m]``, the layers concatenated to ``[n, L m]`` and target ``l`` one GEMM of the first
    ``(l+1) m`` columns with its stacked decoder ``W_dec[l] [(l+1) m, d]``.

    ``encoder``: ``"actstore"`` (actstore's ``topk_encode`` op: the same encoder and backward
    as the CLT, so only the decode differs) or ``"torch"`` (``addmm`` + ``torch.topk`` + ReLU
    with autograd: a dense ``[n, m]`` encoder backward per layer)."""

    def __init__(self, L: int, m: int, k: int, d: int, d_out: int, encoder: str, src=None):
        super().__init__()
        self.L, self.m, self.k, self.encoder = L, m, k, encoder
        self.W_enc = nn.Parameter(torch.empty(L, m, d))
        self.b_enc = nn.Parameter(torch.zeros(L, m))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros((t + 1) * m, d_out)) for t in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d_out))
        if src is not None:
            self.copy_from(src)
        else:
            nn.init.uniform_(self.W_enc, -1 / math.sqrt(d), 1 / math.sqrt(d))

    @torch.no_grad()
    def copy_from(self, src) -> None:
        self.W_enc.copy_(src.W_enc)
        self.b_enc.copy_(src.b_enc)
        for a, b in zip(self.W_dec, src.W_dec):
            a.copy_(b)
        self.b_dec.copy_(src.b_dec)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        parts = []
        for s in range(self.L):
            if self.encoder == "actstore":
                v, i = topk_encode(x[:, s], self.W_enc[s], self.b_enc[s], self.k, None)
            else:
                pre = torch.addmm(self.b_enc[s], x[:, s], self.W_enc[s].t())
                v, i = pre.topk(self.k, dim=1)
                v = torch.relu(v)
            parts.append(torch.zeros(n, self.m, dtype=v.dtype, device=v.device).scatter(1, i, v))
        return torch.cat(parts, dim=1)  # [n, L m]

    def output(self, x: torch.Tensor) -> torch.Tensor:
        c = self.code(x)
        m = self.m
        return torch.stack([c[:, : (t + 1) * m] @ self.W_dec[t] for t in range(self.L)], dim=1) + self.b_dec

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> dict:
        y = target.float()
        err = self.output(x) - y
        mse = err.pow(2).sum(2).mean(0)
        var = (y - y.mean(0)).pow(2).sum(2).mean(0).clamp_min(1e-12)
        fvu = mse / var
        return {"loss": fvu.mean(), "fvu": fvu.mean(), "layer_fvu": fvu.detach()}


def clt_config(L: int, m: int, k: int) -> SAEConfig:
    src = [f"model.layers.{i}.mlp:input" for i in range(L)]
    tgt = [f"model.layers.{i}.mlp" for i in range(L)]
    return SAEConfig("clt", D, m, k=k, d_out=D, activation="topk", sources=src, targets=tgt)


def adamw(mod: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(mod.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)


class Stepper:
    """One training step of a model with a ``loss(x, target=y)``: zero_grad, loss, backward,
    AdamW step (what the trainer's ``_step`` does, less its bookkeeping), the same for every variant."""

    def __init__(self, model, lr: float):
        self.model, self.opt = model, adamw(model, lr)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        out = self.model.loss(x, target=y)
        out["loss"].backward()
        self.opt.step()
        return out


class TranscoderSet:
    """8 actstore transcoders, one step each on the layer slices ``x[:, l], y[:, l]``."""

    def __init__(self, L: int, m: int, k: int, lr: float):
        self.steppers = []
        for i in range(L):
            cfg = SAEConfig("transcoder", D, m, k=k, d_out=D, activation="topk", hook=HOOKS_IN[i % 8],
                            target=HOOKS_OUT[i % 8])  # fmt: skip
            self.steppers.append(Stepper(build(cfg, seed=i), lr))

    def step(self, x, y):
        for i, s in enumerate(self.steppers):
            s.step(x[:, i].contiguous(), y[:, i].contiguous())


def _grad_diff(a: nn.Module, b: nn.Module) -> dict:
    """Max abs and relative difference of every gradient of ``a`` against ``b`` (same names)."""
    out = {}
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        q = pb[name]
        ga, gb = p.grad.double(), q.grad.double()
        diff = float((ga - gb).abs().max())
        out[name.replace(".", "_")] = {"max_abs": diff, "max_rel": diff / max(float(gb.abs().max()), 1e-30)}
    return out


def read_clt_batches(store_path: Path, cfg: TrainConfig, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training batches of the trainer's loader as ``(x [B, L, d], y [B, L, d])``."""
    store = open_store(str(store_path))
    tr, _, _ = split(cfg, store)
    ld = ActivationLoader(
        store, HOOKS_IN + HOOKS_OUT, cfg.batch_size, shuffle=True, seed=cfg.seed, epochs=None, drop_last=True,
        buffer_rows=cfg.buffer_rows, normalize=cfg.normalize, **tr,
    )  # fmt: skip
    out = []
    for b in ld:
        out.append(
            (torch.stack([b[h] for h in HOOKS_IN], 1).clone(), torch.stack([b[h] for h in HOOKS_OUT], 1).clone())
        )
        if len(out) == n:
            break
    ld.close()
    store.close()
    return out


def _decode_only(args, clt, dense, x) -> dict:
    """Forward + backward of the 8 targets' decode from a fixed code: actstore's sparse decode
    (``sparse_decode`` of each target's prefix of the top form, the CLT's ``_partial``)
    against the densified code times each stacked decoder."""
    from actstore.ops import sparse_decode

    with torch.no_grad():
        lat = clt.encode(x)
    L, m = clt.n_layers, clt.m_local
    v0 = lat.vals.view(lat.n, -1).clone()
    i0 = lat.cols.view(lat.n, -1).clone()
    kk = v0.shape[1] // L
    g = torch.Generator().manual_seed(0)
    grad_out = torch.randn(x.shape[0], L, D, generator=g)

    def sparse():
        v = v0.clone().requires_grad_(True)
        outs = [
            sparse_decode(v[:, : (t + 1) * kk].contiguous(), i0[:, : (t + 1) * kk].contiguous(), clt.W_dec[t])
            for t in range(L)
        ]
        torch.autograd.backward(outs, [grad_out[:, t] for t in range(L)])

    def dense_():
        v = v0.clone().requires_grad_(True)
        c = torch.zeros(x.shape[0], L * m).scatter(1, i0, v)
        outs = [c[:, : (t + 1) * m] @ dense.W_dec[t] for t in range(L)]
        torch.autograd.backward(outs, [grad_out[:, t] for t in range(L)])

    for mod in (clt, dense):
        mod.zero_grad(set_to_none=True)
    sparse()
    dense_()
    diffs = {
        f"W_dec_{t}": float((clt.W_dec[t].grad - dense.W_dec[t].grad).abs().max() / dense.W_dec[t].grad.abs().max())
        for t in range(L)
    }
    times = C.interleaved({"actstore_sparse_decode": sparse, "dense_decode": dense_}, repeats=args.repeats, warmup=1)
    res = {n: C.summary(ts) | {"all_s": ts} for n, ts in times.items()}
    res["dense_over_sparse_time_median"] = res["dense_decode"]["median_s"] / res["actstore_sparse_decode"]["median_s"]
    res["grad_W_dec_max_rel_diff"] = max(diffs.values())
    return res


def part_speed(args, store_path: Path) -> dict:
    m, k, batch = args.latents, args.k, args.batch
    L = len(LAYERS)
    cfg = clt_cfg(store_path, Path(args.work) / "speed", m, k, 1000, batch)
    batches = read_clt_batches(store_path, cfg, args.time_batches + args.warm_steps)
    warm, timed = batches[: args.warm_steps], batches[args.warm_steps :]
    lr = default_lr(m)
    torch.manual_seed(0)
    clt = build(clt_config(L, m, k), seed=0)
    with torch.no_grad():  # the trainer's init from the first batch: b_dec the target means, encoders centred
        clt.init_b_dec(warm[0][1].mean(0))
        clt.center_encoder(warm[0][0].mean(0))
    a = Stepper(clt, lr)
    for x, y in warm:  # off the init (decoders zero there), by the same step
        a.step(x, y)
    variants_models = {
        "dense_decode": DenseCLT(L, m, k, D, D, "actstore", src=clt),
        "plain_pytorch": DenseCLT(L, m, k, D, D, "torch", src=clt),
    }
    # Same weights, same batch: loss and gradients of each variant against actstore's.
    x, y = timed[0]
    clt.zero_grad(set_to_none=True)
    ref = clt.loss(x, target=y)
    ref["loss"].backward()
    with torch.no_grad():
        lat = clt.encode(x)
        choices = []
        for t in range(L):
            kk = (t + 1) * k
            v = lat.vals.view(lat.n, -1)[:, :kk]
            i = lat.cols.view(lat.n, -1)[:, :kk].reshape(-1)
            rp = torch.arange(lat.n + 1) * kk
            choices.append(decode_choice(rp, i, v.reshape(-1), clt.W_dec[t]))
    check = {
        "loss_actstore": float(ref["loss"].detach()),
        "decode_backend_per_target": choices,
        "code_density_per_target": k / m,
    }
    for name, mod in variants_models.items():
        mod.zero_grad(set_to_none=True)
        out = mod.loss(x, target=y)
        out["loss"].backward()
        la, lb = float(ref["loss"].detach()), float(out["loss"].detach())
        g = _grad_diff(mod, clt)
        check[name] = {
            "loss": lb,
            "loss_abs_diff": abs(la - lb),
            "loss_rel_diff": abs(la - lb) / abs(la),
            "layer_fvu_max_abs_diff": float((out["layer_fvu"] - ref["layer_fvu"]).abs().max()),
            "grads": g,
            "grad_max_rel_diff": max(v["max_rel"] for v in g.values()),
        }
        print(
            f"speed check {name}: loss {lb:.8f} vs actstore {la:.8f} (rel {check[name]['loss_rel_diff']:.1e}); "
            f"gradients max rel diff {check[name]['grad_max_rel_diff']:.1e}",
            flush=True,
        )
        if check[name]["loss_rel_diff"] > 1e-5:
            raise SystemExit(f"{name} computes another loss than actstore's CLT: {lb} vs {la}")
    clt.zero_grad(set_to_none=True)
    print(f"speed: decode backend per target {choices} (density {k / m:.4f})", flush=True)

    steppers = {
        "actstore_clt": a,
        "dense_decode": Stepper(variants_models["dense_decode"], lr),
        "plain_pytorch": Stepper(variants_models["plain_pytorch"], lr),
        "actstore_transcoders_x8": TranscoderSet(L, m, k, lr),
    }
    idx = {n: 0 for n in steppers}
    cpu = {n: [] for n in steppers}  # process CPU seconds of each call (all threads), warm-up included

    def caller(name):
        def call():
            xb, yb = timed[idx[name] % len(timed)]
            idx[name] += 1
            c0 = time.process_time()
            steppers[name].step(xb, yb)
            cpu[name].append(time.process_time() - c0)

        return call

    print(f"speed: one step of {', '.join(steppers)}; {args.repeats} interleaved rounds ...", flush=True)
    times = C.interleaved({n: caller(n) for n in steppers}, repeats=args.repeats, warmup=1, collect="round")
    res = {}
    for n, ts in times.items():
        s = C.summary(ts)
        res[n] = {**s, "steps_per_s_at_median": 1 / s["median_s"], "rows_per_s_at_median": batch / s["median_s"],
                  "cpu_median_s": statistics.median(cpu[n][1:]), "all_s": ts, "all_cpu_s": cpu[n][1:]}  # fmt: skip
        print(
            f"  {n:>24}: median {s['median_s'] * 1e3:8.1f} ms (min {s['min_s'] * 1e3:.1f}, max {s['max_s'] * 1e3:.1f})"
            f" -> {res[n]['steps_per_s_at_median']:.2f} steps/s, {res[n]['rows_per_s_at_median']:.0f} rows/s; "
            f"CPU {res[n]['cpu_median_s'] * 1e3:.0f} ms",
            flush=True,
        )
    base = times["actstore_clt"]
    ratios = {"actstore_clt_over_actstore_clt_time_paired_median": 1.0}
    for n in ("dense_decode", "plain_pytorch", "actstore_transcoders_x8"):
        ratios[f"{n}_over_actstore_clt_time_median"] = res[n]["median_s"] / res["actstore_clt"]["median_s"]
        ratios[f"{n}_over_actstore_clt_time_paired_median"] = statistics.median(b / a_ for a_, b in zip(base, times[n]))
        ratios[f"{n}_over_actstore_clt_cpu_median"] = res[n]["cpu_median_s"] / res["actstore_clt"]["cpu_median_s"]
    print("  ratios " + ", ".join(f"{k_} {v:.2f}" for k_, v in ratios.items()), flush=True)
    print("speed: the decode alone (8 targets, forward + backward) ...", flush=True)
    dec = _decode_only(args, clt, variants_models["dense_decode"], x)
    print(
        f"  sparse {dec['actstore_sparse_decode']['median_s'] * 1e3:.1f} ms, "
        f"dense {dec['dense_decode']['median_s'] * 1e3:.1f} ms: "
        f"dense/sparse {dec['dense_over_sparse_time_median']:.2f}x",
        flush=True,
    )
    return {
        "setup": {
            "L": L,
            "m_per_layer": m,
            "k_per_layer": k,
            "d": D,
            "batch": batch,
            "dtype": "float32",
            "rows": "real: the trainer's shuffled training batches of the store (mean_norm scale)",
            "weights": f"actstore CLT after {args.warm_steps} steps (seed 0) from the trainer's init, "
            "copied to each variant",
            "step": "zero_grad, loss (mean_l FVU_l; no AuxK: no latent is dead yet), backward, AdamW step",
            "time_batches": len(timed),
            "repeats": args.repeats,
            "params_clt": _params(clt),
            "dense_code_bytes": batch * L * m * 4,
        },
        "check_same_loss": check,
        "step_timing": {**res, **ratios},
        "decode_only": dec,
    }


# -- memory --------------------------------------------------------------------------------


def _status_kib(*keys: str) -> dict:
    """``/proc/self/status`` fields in KiB (VmRSS: resident now; VmHWM: this address space's peak)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            out[name] = int(rest.split()[0])
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(spec: str) -> None:
    """Run in a fresh process: ``L,impl,m,k,batch,steps`` -> one JSON line of its memory.

    The peak is ``VmHWM`` of ``/proc/self/status``, not ``getrusage().ru_maxrss``: on Linux
    the latter carries the parent's high-water mark through fork + exec (a child of a 1.2 GiB
    parent reports at least 1.2 GiB), VmHWM belongs to the new address space."""
    L, impl, m, k, batch, steps = spec.split(",")
    L, m, k, batch, steps = int(L), int(m), int(k), int(batch), int(steps)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def make(L_, m_, k_):
        if impl == "actstore_clt":
            return build(clt_config(L_, m_, k_), seed=0)
        # built on its own: a copy from an actstore CLT would count both in the high-water mark
        return DenseCLT(L_, m_, k_, D, D, "actstore" if impl == "dense_decode" else "torch")

    # One tiny step first (L=2, m=64, 8 rows): the code paths' lazy imports and allocator pools
    # land in the "after imports" figure, not in the model's.
    tiny = make(2, 64, 4)
    Stepper(tiny, 1e-3).step(torch.randn(8, 2, D), torch.randn(8, 2, D))
    del tiny
    rss = {"after_imports_kib": _status_kib("VmRSS")["VmRSS"]}
    torch.manual_seed(0)
    model = make(L, m, k)
    with torch.no_grad():
        for w in model.W_dec:
            w.normal_(0, 0.01)
    st = Stepper(model, default_lr(m))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, L, D, generator=g)  # synthetic rows
    y = torch.randn(batch, L, D, generator=g)
    b = _status_kib("VmRSS", "VmHWM")
    rss["after_build_kib"], rss["peak_through_build_kib"] = b["VmRSS"], b["VmHWM"]
    rss["peak_reset_before_steps"] = _reset_peak()
    secs = []
    for _ in range(steps):
        t0 = time.perf_counter()
        st.step(x, y)
        secs.append(time.perf_counter() - t0)
    a = _status_kib("VmRSS", "VmHWM")
    rss["peak_during_steps_kib"] = a["VmHWM"]
    rss["after_steps_kib"] = a["VmRSS"]
    rss["peak_kib"] = max(a["VmHWM"], b["VmHWM"])
    rss["ru_maxrss_kib_at_start_inherited"] = inherited
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"rss": rss, "params": params, "param_bytes": params * 4, "step_s": secs}))


def part_memory(args) -> dict:
    m, k, batch = args.latents, args.k, args.batch
    rows = {}
    for L in (8, 16):
        for impl in ("actstore_clt", "dense_decode", "plain_pytorch"):
            spec = f"{L},{impl},{m},{k},{batch},{args.mem_steps}"
            env = {**os.environ, "BENCH_THREADS": str(torch.get_num_threads())}
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, __file__, "--memory-child", spec], capture_output=True, text=True, env=env, check=False
            )
            if p.returncode != 0:
                raise SystemExit(f"memory child {spec} failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["wall_s"] = time.perf_counter() - t0
            rs = r["rss"]
            r["peak_mib"] = rs["peak_kib"] / 1024
            r["peak_over_imports_mib"] = (rs["peak_kib"] - rs["after_imports_kib"]) / 1024
            r["steps_over_build_mib"] = (rs["peak_during_steps_kib"] - rs["after_build_kib"]) / 1024
            r["param_mib"] = r["param_bytes"] / 2**20
            # derived: what the steps took beyond the gradients and AdamW's two moments (3 x params)
            r["steps_beyond_grads_and_adamw_mib"] = r["steps_over_build_mib"] - 3 * r["param_mib"]
            rows[f"L{L}_{impl}"] = r
            print(
                f"memory L={L:>2} {impl:>14}: peak RSS {r['peak_mib']:7.0f} MiB "
                f"({r['peak_over_imports_mib']:6.0f} over the imports, {r['steps_over_build_mib']:6.0f} over "
                f"model+AdamW built; params {r['param_mib']:.0f} MiB); "
                f"step median {statistics.median(r['step_s']):.2f} s",
                flush=True,
            )
    return {
        "setup": {
            "rows": "SYNTHETIC: torch.randn [batch, L, 576] sources and targets (memory does not depend on the values)",
            "m_per_layer": m,
            "k_per_layer": k,
            "batch": batch,
            "steps": args.mem_steps,
            "dtype": "float32",
            "process": "a fresh python subprocess per configuration; RSS from /proc/self/status: VmRSS after the "
            "imports (and one tiny warm-up step), after building the model and AdamW; VmHWM (peak) through the build, "
            "then reset (clear_refs 5) and read after the steps. Not getrusage().ru_maxrss: on Linux a child inherits "
            "its parent's high-water mark through fork + exec (every child here read the parent's ~1.2 GiB)",
            "peak_mib": "max(peak through build, peak during steps)",
            "steps_over_build_mib": "peak during the steps minus RSS after build: the step's own working memory "
            "(activations, gradients, AdamW state allocated at the first step)",
            "weights": "each variant built on its own: encoders U(-1/sqrt(d), 1/sqrt(d)), decoders N(0, 0.01^2)",
        },
        "runs": rows,
    }


# -- main ----------------------------------------------------------------------------------


def _table(results: dict) -> None:
    """The summary tables of what was measured."""
    if "clt" in results:
        r = results["clt"]
        tc, clt = r["transcoders"], r["clt"]
        rows = [
            [f"L{layer}", f"{tc['fvu_per_layer'][i]:.4f}", f"{clt['fvu_per_layer'][i]:.4f}",
             f"{tc['dead_frac_per_layer'][i]:.3f}", f"{clt['dead_frac_per_layer'][i]:.3f}"]
            for i, layer in enumerate(LAYERS)
        ]  # fmt: skip
        rows.append(["mean", f"{tc['fvu_mean_of_layers']:.4f}", f"{clt['fvu_mean_of_layers']:.4f}",
                     f"{tc['dead_frac_mean']:.3f}", f"{clt['dead_frac_mean_of_layers']:.3f}"])  # fmt: skip
        print("\nheld-out FVU of the MLP outputs (8 TopK transcoders vs one TopK CLT, equal latents and L0):")
        print(C.fmt_table(rows, ["layer", "transcoders", "CLT", "dead tc", "dead CLT"]))
        print(
            f"L0 per token: transcoders {tc['l0_total']:.1f}, CLT {clt['l0_total']:.1f}; wall "
            f"{tc['seconds_total']:.0f} s (8 runs) vs {clt['seconds']:.0f} s; params "
            f"{tc['params_total'] / 1e6:.1f}M vs {clt['params'] / 1e6:.1f}M"
        )
        em = r.get("eval_model")
        if isinstance(em, dict):
            rows = [
                [n, f"{em[n]['clean']:.4f}", f"{em[n]['spliced']:.4f}", f"{em[n]['zero_ablation']:.4f}",
                 f"{em[n]['recovered']:.4f}", em[n]["tokens"]]
                for n in ("transcoders_x8", "clt")
            ]  # fmt: skip
            print("LM loss (nats/token) with the MLP outputs of layers 8-15 all replaced, held-out tokens:")
            print(C.fmt_table(rows, ["spliced", "clean", "spliced", "all 8 zeroed", "recovered", "tokens"]))
    if "crosscoder" in results:
        r = results["crosscoder"]
        a, b, c = r["saes"], r["crosscoder"], r["crosscoder_at_sae_lr"]
        rows = [
            [h, f"{a['fvu_per_hook'][i]:.4f}", f"{b['fvu_per_hook'][i]:.4f}", f"{c['fvu_per_hook'][i]:.4f}"]
            for i, h in enumerate(CC_HOOKS)
        ]
        rows.append(["mean", f"{a['fvu_mean']:.4f}", f"{b['fvu_mean']:.4f}", f"{c['fvu_mean']:.4f}"])
        print("\nheld-out FVU per hook (3 TopK SAEs vs one TopK crosscoder, equal total latents and L0):")
        print(C.fmt_table(rows, ["hook", "SAEs", "crosscoder", "crosscoder @SAE lr"]))
        print(
            f"wall: SAEs {a['seconds_total']:.0f} s (3 runs), crosscoder {b['seconds']:.0f} s; "
            f"dead: SAEs {a['dead_frac_mean']:.3f}, crosscoder {b['dead_frac']:.3f}"
        )
    if "speed" in results:
        t = results["speed"]["step_timing"]
        base = t["actstore_clt"]["median_s"]
        rows = [
            [n, f"{t[n]['median_s'] * 1e3:.1f}", f"{t[n]['steps_per_s_at_median']:.2f}",
             f"{t[n]['rows_per_s_at_median']:.0f}", f"{t[n]['median_s'] / base:.2f}",
             f"{t[n + '_over_actstore_clt_time_paired_median']:.2f}",
             f"{t[n]['cpu_median_s'] * 1e3:.0f}", f"{t[n]['spread']:.1f}"]
            for n in ("actstore_clt", "dense_decode", "plain_pytorch", "actstore_transcoders_x8")
        ]  # fmt: skip
        print("\nCLT training step (L=8), medians of interleaved rounds:")
        print(C.fmt_table(rows, ["variant", "ms/step", "steps/s", "rows/s", "time / actstore", "paired ratio",
                                 "CPU ms", "spread"]))  # fmt: skip
    if "memory" in results:
        rows = [
            [n, f"{r['peak_mib']:.0f}", f"{r['peak_over_imports_mib']:.0f}", f"{r['steps_over_build_mib']:.0f}",
             f"{r['steps_beyond_grads_and_adamw_mib']:.0f}", f"{r['param_mib']:.0f}"]
            for n, r in results["memory"]["runs"].items()
        ]  # fmt: skip
        print("\npeak RSS of CLT training steps (synthetic rows), MiB:")
        print(C.fmt_table(rows, ["config", "peak", "over imports", "steps over build", "beyond grads+AdamW", "params"]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="data,clt,crosscoder,speed,memory")
    ap.add_argument("--work", default="/tmp/actstore-clt", help="the store and scratch runs")
    ap.add_argument("--latents", type=int, default=1024, help="m per layer (CLT, transcoders, SAEs)")
    ap.add_argument(
        "--k", type=int, default=16, help="TopK k per layer (k/m = 1.6%%: under the CPU decode's 3%% dense cut)"
    )
    ap.add_argument("--batch", type=int, default=512, help="rows per step (every part)")
    ap.add_argument(
        "--steps",
        type=int,
        default=200,
        help="training steps of clt and crosscoder (200 x 512: one pass over the train rows)",
    )
    ap.add_argument(
        "--eval-model-tokens",
        type=int,
        default=16384,
        help="clt: held-out tokens of the LM-loss splice, at most (0: none)",
    )
    ap.add_argument("--repeats", type=int, default=30, help="speed: timed interleaved rounds")
    ap.add_argument("--time-batches", type=int, default=4)
    ap.add_argument("--warm-steps", type=int, default=20, help="speed: CLT steps before the check and timing")
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    torch.set_num_threads(args.threads)
    meta = C.metadata()  # before anything is measured
    meta["torch_threads"] = torch.get_num_threads()
    meta["machine"]["shared"] = SHARED_NOTE
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"data", "clt", "crosscoder", "speed", "memory"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    results = {}
    store = data_info = None
    if set(parts) & {"data", "clt", "crosscoder", "speed"}:
        store, data_info = prepare_store(Path(args.work))
        with open_store(str(store)) as st:
            data_info.update({"store_rows": st.rows, "store_hooks": list(st.hooks)})
        data_info["bytes_per_row"] = data_info["bytes_on_disk"] / max(1, data_info["rows"])
        data_info["bf16_bytes_per_row_uncompressed"] = 16 * D * 2
        print(f"store {store}: {data_info['store_rows']} rows, {len(data_info['store_hooks'])} hooks", flush=True)
        results["data"] = data_info
    for part in ("clt", "crosscoder", "speed", "memory"):
        if part not in parts:
            continue
        part_meta = {**meta, "loadavg_1_5_15_at_part_start": [round(v, 2) for v in os.getloadavg()]}
        t0 = time.perf_counter()
        fn = {"clt": part_clt, "crosscoder": part_crosscoder, "speed": part_speed}.get(part)
        res = fn(args, store) if fn else part_memory(args)
        results[part] = {
            **res,
            "part_seconds": time.perf_counter() - t0,
            "process_max_rss_mib_at_part_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "meta": part_meta,
        }
    _table(results)
    if args.no_write:
        return
    settings = {k: v for k, v in vars(args).items() if k not in ("no_write", "memory_child")}
    path = C.RESULTS / f"{RESULT}.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("parts", {})
    for name, res in results.items():
        doc["parts"][name] = {**res, "settings": settings}
    doc["meta"] = meta
    doc["units"] = {
        "fvu": "fraction of variance unexplained of a target over the held-out rows (0 = perfect), float64 sums",
        "fvu_mean_of_layers": "the plain mean of the per-layer FVUs (each layer weighs the same, as the CLT's loss)",
        "l0": "active latents per token (row), mean; l0_total: summed over the layers / hooks",
        "dead_frac": "share of latents that fire on no held-out row",
        "*_s, seconds": "seconds (wall clock)",
        "steps_per_s_at_median": "optimizer steps per second (1 / median step time)",
        "rows_per_s_at_median": "rows (tokens) per second at the median step time",
        "*_kib, *_mib": "resident set size, KiB / MiB (2^20 bytes)",
        "bytes_*": "bytes",
        "params": "parameters (float32 elements)",
    }
    doc["notes"] = {
        "shared_machine": SHARED_NOTE,
        "auxk": (
            f"the trainer's dead_tokens default ({TrainConfig.__dataclass_fields__['dead_tokens'].default:,} tokens) "
            f"exceeds the {args.steps * args.batch:,} training tokens: no latent was marked dead during training, "
            "so AuxK never engaged in any run (dead_frac is measured on the held-out rows afterwards)"
        ),
        "decode_path": (
            "on the CPU, actstore decodes a code densely when nnz > 3% of [n, m] (csr_decode.DENSE_DECODE_ABOVE); "
            "k/m = 16/1024 = 1.6% here, so the CLT, the transcoders and the SAEs all decode sparsely (the speed "
            "part records the backend of each target)"
        ),
        "eval_model": (
            "LM loss recovered (clt.eval_model) splices all 8 layers at once for both: the CLT through actstore's "
            "CLT splice, the 8 transcoders through the same splice as one block-diagonal CLT built by this script "
            "(not through actstore's per-transcoder splice, which replaces one layer)"
        ),
    }
    print(f"wrote {C.write_result(RESULT, doc)}")


if __name__ == "__main__":
    main()
