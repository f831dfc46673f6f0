"""Transcoders and Matryoshka SAEs on SmolLM2-135M-Instruct layer 15: parity with
dictionary_learning, a training step against sparsify and SAELens, and quality.

Data (part ``data``, cached in ``--work``): ``actstore capture`` of SmolLM2-135M-Instruct
(``python:actstore.models.smollm2:load_smollm2``, fp32 on the CPU, as ``make demo``) at
``model.layers.15.mlp:input`` (the MLP's input: after the post-attention RMSNorm) and
``model.layers.15.mlp`` (its output) over all of Python's ``pydoc_data.topics`` (context
128, BOS and special tokens dropped, bf16 zstd: ~125k rows per hook, d = 576). Every part
reads this one store; rows are scaled as the trainer's loader does (``normalize="mean_norm"``:
each hook by sqrt(d) / its mean row norm), and "held-out" means the trainer's own split (the
last 5% of the rows, at most 16384), never trained on.

Parts (``--parts``, comma-separated; each ~2-10 min on 2 shared cores):

- ``parity``: actstore's Matryoshka BatchTopK loss (``matryoshka_loss="mean"``, the
  default) against the real ``dictionary_learning`` ``MatryoshkaBatchTopKTrainer.loss`` on
  one batch of stored rows of the MLP output, same weights (an actstore SAE trained for
  ``--parity-steps`` steps by the trainer's own step, copied into theirs), float32. Three
  dead sets: none; a random quarter of the latents marked dead; every latent marked dead.
  dictionary_learning counts this batch's firing before its AuxK, so ours gets
  ``dead & ~fired`` (tests/sae/test_matryoshka.py). Reported: max abs and relative
  difference of the loss and of every parameter's gradient, and SAELens' scale (``sum``)
  over ours (should be G^2).
- ``speed``: one training step, same stored rows, same shapes (batch ``--batch``,
  ``--latents`` m, ``--k``), float32, CPU, interleaved round-robin (``_common.interleaved``,
  ``--repeats`` rounds after one warm-up; median, min, max) on ``--time-batches`` pre-read
  batches, each library as its own trainer runs a step:
  (a) actstore's TopK transcoder (``mlp:input`` -> ``mlp``): the trainer's ``_step`` (loss
  with target, backward, AdamW with the lr schedule, firing counts; the parallel
  decoder-gradient removal and unit-norm decoder rows only where ``normalize_decoder`` is on,
  which transcoders leave off by default since e1b1ebc) against sparsify ``SparseCoder(576,
  SparseCoderConfig(transcode=True, k, num_latents=m))``: ``forward(x, y)``, loss ``fvu +
  auxk_alpha * auxk + multi_topk_fvu / 8`` (auxk_alpha 0 by default: no dead mask),
  backward, Adam step, zero_grad, scheduler step, firing counts; no decoder normalization
  (sparsify skips it for transcoders: ``normalize_decoder and not transcode``); its Triton
  decoder off (``SPARSIFY_DISABLE_TRITON=1``: a CPU run takes the eager embedding_bag).
  (b) actstore ``matryoshka_batchtopk`` (widths m/16, m/4, m) on the MLP output against
  SAELens ``MatryoshkaBatchTopKTrainingSAE`` (its defaults: ``rescale_acts_by_decoder_norm``,
  decoder init norm 0.1, TopK AuxK) ``training_forward_pass`` + firing bookkeeping +
  backward + ``clip_grad_norm_(1.0)`` + Adam step + zero_grad + scheduler step (what
  ``SAETrainer._train_step`` does). Steps/s and the time ratio (of the medians, of the
  minima, and the median of the per-round ratios).
  Then quality at equal steps: ``--train-steps`` steps of the same shuffled batches (the
  trainer's loader, seed 0) fed to every variant in lockstep (the order rotates per step;
  each step is timed, a second, longer timing), then held-out FVU of the target on the same
  held-out rows. Variants: actstore at the trainer's defaults (lr 8e-4/sqrt(m/2^14), warmup
  5%, linear decay over the last 20%); the baseline at actstore's lr and schedule
  (``same_lr``); the baseline at its own defaults: sparsify's default optimizer, Signum in
  a schedule-free wrapper (lr 5e-3/sqrt(m/2^14); evaluated on its averaged weights,
  ``optimizer.eval()``, as its checkpoints are; its Adam default is left out: 1000 warmup
  steps would keep it below its peak lr for the whole run); SAELens Adam at lr 3e-4,
  constant.
  BatchTopK codes are evaluated two ways: the inference form (each library's running
  threshold: actstore's eval mode, SAELens' JumpReLU export) and batch top-k over held-out
  batches of ``--batch`` rows.
- ``quality``: ``actstore.sae.train`` at equal latents and k (``--q-latents``, ``--k``,
  ``--q-tokens`` tokens, the trainer's defaults otherwise): a TopK transcoder
  (``mlp:input`` -> ``mlp``), a TopK skip transcoder, and a TopK SAE on the MLP output:
  held-out FVU of the MLP output, L0, dead fraction, and the LM loss with the
  reconstruction spliced in over held-out tokens (``eval_model=``, SmolLM2 fp32 on the
  CPU): clean, spliced, MLP output zeroed, and the share of the zero-ablation loss gap
  recovered. ``--no-eval-model-transcoders`` skips the splice for the transcoders (for a
  trainer whose ``eval_model`` splices SAEs only).

    python benchmarks/bench_dictionaries.py --parts data,parity,speed,quality [--work /tmp/actstore-dict]

Writes ``benchmarks/results/dictionaries_cpu.json``: each part's section with its own
``meta`` (the metadata is recorded before that part measures anything); a part run later
replaces its own section and keeps the others. The top-level ``meta`` is the last run's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # before sparsify is imported: no Triton on a CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from actstore import open as open_store  # noqa: E402
from actstore.capture import capture  # noqa: E402
from actstore.demo import SMOLLM2_MODEL, write_english_jsonl  # noqa: E402
from actstore.loader import ActivationLoader  # noqa: E402
from actstore.sae.train import TrainConfig, _lr, _resume_or_init, _step, default_lr, split, train  # noqa: E402

HOOK_IN = "model.layers.15.mlp:input"
HOOK_OUT = "model.layers.15.mlp"
RESULT = "dictionaries_cpu"
STORE_NAME = "smollm2_l15_mlp"


# -- data ----------------------------------------------------------------------------------


def prepare_store(work: Path) -> tuple[Path, dict]:
    """The store of both hooks, captured once into ``work`` (a ``done`` file marks it
    complete); returns its path and what the capture reported (or that it was cached)."""
    store = work / STORE_NAME
    done = work / f"{STORE_NAME}.done.json"
    if done.exists():
        return store, {**json.loads(done.read_text()), "cached": True}
    work.mkdir(parents=True, exist_ok=True)
    data = write_english_jsonl(str(work / "pydoc_topics.jsonl"))
    print(f"capturing SmolLM2-135M-Instruct {HOOK_IN}, {HOOK_OUT} over {data} into {store} ...", flush=True)
    t0 = time.perf_counter()
    s = capture(
        SMOLLM2_MODEL, f"{HOOK_IN},{HOOK_OUT}", data, str(store), context=128, batch_size=16, drop="bos,special"
    )
    info = {
        "model": SMOLLM2_MODEL,
        "hooks": [HOOK_IN, HOOK_OUT],
        "text": "pydoc_data.topics (all 79 documents), context 128, BOS and special tokens dropped, bf16 zstd",
        "rows": s["committed_rows"],
        "capture_seconds": time.perf_counter() - t0,
        "tokens_per_s": s["tokens_per_s"],
        "bytes_on_disk": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()),
    }
    done.write_text(json.dumps(info))
    return store, {**info, "cached": False}


def train_cfg(store: Path, out: Path, arch: str, m: int, k: int, tokens: int, batch: int, **kw) -> TrainConfig:
    """The trainer's config of one run (source/target for transcoders, hook otherwise)."""
    hooks = {"source": HOOK_IN, "target": HOOK_OUT} if "transcoder" in arch else {"hook": HOOK_OUT}
    return TrainConfig(
        store=str(store), arch=arch, latents=m, k=k, tokens=tokens, out=str(out), batch_size=batch, **hooks, **kw
    )


def loader_for(cfg: TrainConfig, store, selection: dict, *, shuffle: bool) -> ActivationLoader:
    """The trainer's loader (train: shuffled, seed, endless) or its held-out one."""
    hooks = cfg.source_hook if cfg.source_hook == cfg.target_hook else [cfg.source_hook, cfg.target_hook]
    return ActivationLoader(
        store,
        hooks,
        cfg.batch_size,
        shuffle=shuffle,
        seed=cfg.seed,
        epochs=None if shuffle else 1,
        drop_last=shuffle,
        buffer_rows=cfg.buffer_rows,
        device="cpu",
        normalize=cfg.normalize,
        **selection,
    )


def xy(batch, cfg: TrainConfig):
    """(source, target) of a loader batch; an SAE's target is its input."""
    if torch.is_tensor(batch):
        return batch, batch
    return batch[cfg.source_hook], batch[cfg.target_hook]


def held_out_batches(cfg: TrainConfig, store) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict]:
    """The trainer's held-out rows, read once: ``[(x, y)]`` in ``cfg.batch_size`` batches."""
    _, ev, info = split(cfg, store)
    ld = loader_for(cfg, store, ev, shuffle=False)
    out = [tuple(t.clone() for t in xy(b, cfg)) for b in ld]
    ld.close()
    return out, info


@torch.no_grad()
def held_out_fvu(predict, batches, m: int) -> dict:
    """FVU of the target over every held-out row (squared error / total variance about the
    set's mean, float64: the formula of the trainer's ``evaluate``), L0 and the share of
    latents that never fire. ``predict(x) -> (y_hat, active count, fired [m] bool)``."""
    err = act = 0.0
    n = 0
    s1 = s2 = None
    fired = torch.zeros(m, dtype=torch.bool)
    for x, y in batches:
        y_hat, active, f = predict(x)
        yd = y.double()
        err += float((y_hat.double() - yd).pow(2).sum())
        act += float(active)
        n += y.shape[0]
        s1 = yd.sum(0) if s1 is None else s1 + yd.sum(0)
        s2 = yd.pow(2).sum(0) if s2 is None else s2 + yd.pow(2).sum(0)
        fired |= f
    total = float((s2 - s1.pow(2) / n).sum())
    return {"fvu": err / total, "l0": act / n, "dead_frac": float((~fired).float().mean()), "rows": n}


def actstore_predict(sae):
    """Held-out predictions of an actstore dictionary in eval mode (BatchTopK: its threshold)."""

    def predict(x):
        lat = sae.encode(x)
        return sae.output(x, lat), lat.l0() * lat.n, lat.fired()

    return predict


def actstore_batch_topk_predict(sae):
    """An actstore BatchTopK code with the batch's top n*k (train mode) without moving its threshold."""

    def predict(x):
        keep = sae.threshold.clone()
        sae.train()
        try:
            lat = sae.encode(x)
        finally:
            sae.threshold.copy_(keep)
            sae.eval()
        return sae.output(x, lat), lat.l0() * lat.n, lat.fired()

    return predict


# -- parity --------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.detach().double(), b.detach().double()
    diff = (a - b).abs().max()
    return {"max_abs": float(diff), "max_rel": float(diff / b.abs().max().clamp_min(1e-30))}


def part_parity(args, store_path: Path) -> dict:
    import dictionary_learning
    import dictionary_learning.trainers.matryoshka_batch_top_k as mt

    m, k = args.latents, args.k
    widths = [m // 16, m // 4, m]
    work = Path(args.work) / "parity"
    shutil.rmtree(work, ignore_errors=True)
    store = open_store(str(store_path))
    cfg = train_cfg(
        store_path,
        work,
        "matryoshka_batchtopk",
        m,
        k,
        args.batch * (args.parity_steps + 1),
        args.batch,
        widths=",".join(map(str, widths)),
    )
    tr_sel, _, _ = split(cfg, store)
    ld = loader_for(cfg, store, tr_sel, shuffle=True)
    run = _resume_or_init(cfg, work, store, ld, torch.device("cpu"), 0)
    it = iter(ld)
    total = math.ceil(cfg.tokens / cfg.batch_size)
    for _ in range(args.parity_steps):  # off the init, by the trainer's own step
        _step(cfg, run, next(it), None, total, cfg.batch_size, None)
    x = next(it).clone()
    ld.close()
    sae = run.sae
    sizes = [w - lo for lo, w in zip([0, *widths[:-1]], widths)]
    d = x.shape[1]
    g = torch.Generator().manual_seed(1)
    # Every latent of a trained SAE fires somewhere in 2048 rows, so the aux term needs quiet
    # latents (as in tests/sae/test_matryoshka.py): a random quarter gets its encoder rows
    # scaled by 0.01 and encoder bias 0.05 (small positive pre-activations, outside the batch's
    # top n*k). The same modified weights go to both libraries.
    quiet = torch.rand(m, generator=g) < 0.25
    live_marked = ~quiet & (torch.rand(m, generator=g) < 0.25)
    cases = {  # name -> (quiet latents, latents marked dead)
        "no_dead": (None, torch.zeros(m, dtype=torch.bool)),
        "quiet_quarter_marked_dead": (quiet, quiet),
        "quiet_quarter_and_live_quarter_marked_dead": (quiet, quiet | live_marked),
    }
    base = {n: p.detach().clone() for n, p in sae.named_parameters()}
    out = {
        "setup": {
            "d": d,
            "m": m,
            "k": k,
            "widths": widths,
            "batch_rows": x.shape[0],
            "hook": HOOK_OUT,
            "weights": f"actstore matryoshka_batchtopk after {args.parity_steps} trainer steps (seed 0), copied",
            "dtype": "float32",
            "dictionary_learning": getattr(dictionary_learning, "__version__", C._version("dictionary-learning")),
        },
        "cases": {},
    }
    for name, (quiet_set, mask) in cases.items():
        with torch.no_grad():
            for n_, p in sae.named_parameters():
                p.copy_(base[n_])
            if quiet_set is not None:
                sae.W_enc[quiet_set] *= 0.01
                sae.b_enc[quiet_set] = 0.05
        tr = mt.MatryoshkaBatchTopKTrainer(
            steps=10, warmup_steps=1, activation_dim=d, dict_size=m, k=k, layer=15, lm_name="SmolLM2-135M-Instruct",
            group_fractions=[s / m for s in sizes], device="cpu", seed=0,
        )  # fmt: skip
        assert tr.group_sizes == sizes, (tr.group_sizes, sizes)
        with torch.no_grad():
            tr.ae.W_enc.copy_(sae.W_enc.t())
            tr.ae.W_dec.copy_(sae.W_dec)
            tr.ae.b_enc.copy_(sae.b_enc)
            tr.ae.b_dec.copy_(sae.b_dec)
        tr.num_tokens_since_fired[mask] = tr.dead_feature_threshold
        with torch.no_grad():
            fired = tr.ae.encode(x, use_threshold=False).sum(0) > 0
        theirs = tr.loss(x, step=0)
        sae.zero_grad(set_to_none=True)
        dead = mask & ~fired
        ours = sae.loss(x, dead_mask=dead)
        ours["loss"].backward()
        theirs.backward()
        grads = {
            "W_enc": _rel(sae.W_enc.grad, tr.ae.W_enc.grad.t()),
            "W_dec": _rel(sae.W_dec.grad, tr.ae.W_dec.grad),
            "b_enc": _rel(sae.b_enc.grad, tr.ae.b_enc.grad),
            "b_dec": _rel(sae.b_dec.grad, tr.ae.b_dec.grad),
        }
        sae.cfg.matryoshka_loss = "sum"
        with torch.no_grad():
            total_sum = sae.loss(x)["loss"]
        sae.cfg.matryoshka_loss = "mean"
        with torch.no_grad():
            mean_no_aux = sae.loss(x)["loss"]
        row = {
            "quiet_latents": 0 if quiet_set is None else int(quiet_set.sum()),
            "marked_dead": int(mask.sum()),
            "dead_given_to_actstore": int(dead.sum()),
            "dead_counted_by_dictionary_learning": int(tr.dead_features),
            "loss_actstore": float(ours["loss"].detach()),
            "loss_dictionary_learning": float(theirs.detach()),
            "loss": _rel(ours["loss"], theirs),
            "aux_fvu_actstore": float(ours["aux_fvu"].detach()),
            "grads": grads,
            "max_grad_rel": max(v["max_rel"] for v in grads.values()),
            "sum_over_mean_without_aux": float(total_sum / mean_no_aux),
        }
        out["cases"][name] = row
        print(
            f"parity {name:>20}: dead {row['dead_given_to_actstore']:>5} "
            f"(theirs {row['dead_counted_by_dictionary_learning']:>5}); "
            f"loss {row['loss_actstore']:.7f} vs {row['loss_dictionary_learning']:.7f}: "
            f"abs {row['loss']['max_abs']:.2e} "
            f"rel {row['loss']['max_rel']:.2e}; aux {row['aux_fvu_actstore']:.3g}; "
            f"grads max rel {row['max_grad_rel']:.2e}; "
            f"sum/mean {row['sum_over_mean_without_aux']:.4f} (G^2 = {len(widths) ** 2})",
            flush=True,
        )
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    return out


# -- speed ---------------------------------------------------------------------------------


class ActstoreRun:
    """An actstore dictionary trained by the trainer's own ``_step`` on batches given to it
    (its SAE, AdamW and counters from the trainer's ``_resume_or_init``)."""

    def __init__(self, cfg: TrainConfig, store, loader, total: int):
        self.cfg, self.total = cfg, total
        self.run = _resume_or_init(cfg, Path(cfg.out), store, loader, torch.device("cpu"), 0)

    def step(self, x, y):
        y = None if self.cfg.arch == "matryoshka_batchtopk" else y
        _step(self.cfg, self.run, x, y, self.total, x.shape[0], None)

    def evaluate(self, batches) -> dict:
        sae = self.run.sae
        sae.eval()
        res = {}
        if hasattr(sae, "threshold"):
            res["inference_threshold"] = held_out_fvu(actstore_predict(sae), batches, sae.cfg.m)
            res["batch_topk"] = held_out_fvu(actstore_batch_topk_predict(sae), batches, sae.cfg.m)
        else:
            res["topk"] = held_out_fvu(actstore_predict(sae), batches, sae.cfg.m)
        sae.train()
        return res


class SparsifyRun:
    """sparsify's transcoder trained as its ``Trainer.fit`` does one step (loss_fn fvu,
    grad_acc 1, micro_acc 1): first-batch bias init, forward, loss, backward, optimizer,
    scheduler, firing counts. ``optimizer``: ``adam`` (its lr rule and linear warmup/decay
    schedule unless ``lr_fn`` gives the lr of each step) or ``signum`` (its default)."""

    def __init__(self, d: int, m: int, k: int, total: int, optimizer: str = "adam", lr_fn=None, seed: int = 0):
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(seed)
        self.sae = SparseCoder(d, SparseCoderConfig(transcode=True, k=k, num_latents=m), "cpu", dtype=torch.float32)
        self.lr_fn, self.kind, self.n = lr_fn, optimizer, 0
        self.schedulers = []
        if optimizer == "adam":
            from transformers import get_linear_schedule_with_warmup

            self.lr = 2e-4 / (m / 2**14) ** 0.5
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr)
            if lr_fn is None:
                self.schedulers = [get_linear_schedule_with_warmup(self.opt, 1000, total)]
        else:
            from schedulefree import ScheduleFreeWrapper
            from sparsify.sign_sgd import SignSGD

            self.lr = 5e-3 / (m / 2**14) ** 0.5
            self.opt = ScheduleFreeWrapper(SignSGD([dict(params=self.sae.parameters(), lr=self.lr)]), momentum=0.95)
            self.opt.train()
        self.auxk_alpha = 0.0  # sparsify TrainConfig default
        self.since_fired = torch.zeros(m, dtype=torch.long)
        self.did_fire = torch.zeros(m, dtype=torch.bool)

    def step(self, x, y):
        sae = self.sae
        if self.n == 0:  # Trainer.fit's hook at global_step 0 (transcode): centre the pre-activations, b_dec = mean(y)
            sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = y.mean(0)
        if self.lr_fn is not None:
            for g in self.opt.param_groups:
                g["lr"] = self.lr_fn(self.n)
        out = sae(x=x, y=y, dead_mask=None)  # auxk_alpha 0: the trainer passes no dead mask
        loss = out.fvu + self.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        self.did_fire[out.latent_indices.flatten()] = True
        self.opt.step()
        self.opt.zero_grad()
        for s in self.schedulers:
            s.step()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[self.did_fire] = 0
            self.did_fire.zero_()
        self.n += 1

    def evaluate(self, batches) -> dict:
        if self.kind == "signum":
            self.opt.eval()  # the averaged weights: what its checkpoints save
        m = self.sae.num_latents

        def predict(x):
            o = self.sae(x=x, y=None)
            fired = torch.zeros(m, dtype=torch.bool)
            fired[o.latent_indices[o.latent_acts > 0]] = True
            return o.sae_out, float((o.latent_acts > 0).sum()), fired

        with torch.no_grad():
            res = {"topk": held_out_fvu(predict, batches, m)}
        if self.kind == "signum":
            self.opt.train()
        return res


class SAELensRun:
    """SAELens' Matryoshka BatchTopK SAE trained as ``SAETrainer._train_step`` does."""

    def __init__(self, d: int, m: int, k: int, widths: list[int], lr_fn=None, seed: int = 0):
        from sae_lens.saes.matryoshka_batchtopk_sae import (
            MatryoshkaBatchTopKTrainingSAE,
            MatryoshkaBatchTopKTrainingSAEConfig,
        )
        from sae_lens.training.optim import get_lr_scheduler

        torch.manual_seed(seed)
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=d, d_sae=m, k=k, matryoshka_widths=list(widths), dtype="float32", device="cpu"
        )
        self.sae = MatryoshkaBatchTopKTrainingSAE(cfg).train()
        self.lr = 3e-4  # LanguageModelSAERunnerConfig's default, scheduler "constant", no warmup/decay
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=(0.9, 0.999))
        self.sched = get_lr_scheduler("constant", self.opt, training_steps=10**6, lr=self.lr, warm_up_steps=0,
                                      decay_steps=0, lr_end=self.lr / 10, num_cycles=1)  # fmt: skip
        self.lr_fn, self.n, self.m = lr_fn, 0, m
        self.since_fired = torch.zeros(m)
        self.dead_feature_window = 1000  # its default (forward passes)

    def step(self, x, y=None):
        from sae_lens.saes.sae import TrainStepInput

        if self.lr_fn is not None:
            for g in self.opt.param_groups:
                g["lr"] = self.lr_fn(self.n)
        dead = self.since_fired > self.dead_feature_window
        o = self.sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x, dead_neuron_mask=dead, coefficients={}, n_training_steps=self.n, is_logging_step=False
            )
        )
        with torch.no_grad():
            firing = o.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            self.since_fired += 1
            self.since_fired[did_fire] = 0
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.sched.step()
        self.n += 1
        return o

    def evaluate(self, batches) -> dict:
        sae = self.sae
        m = self.m

        def predict_threshold(x):  # the JumpReLU export: keep activations above topk_threshold
            _, hidden_pre = sae.encode_with_hidden_pre(x)  # hidden_pre already rescaled by ||W_dec||
            act = torch.relu(hidden_pre)
            f = act * (act > sae.topk_threshold.to(act.dtype))
            return sae.decode(f), float((f > 0).sum()), (f > 0).any(0)

        def predict_batch(x):  # the training form: the batch's top n*k
            f, _ = sae.encode_with_hidden_pre(x)
            return sae.decode(f), float((f > 0).sum()), (f > 0).any(0)

        sae.eval()
        with torch.no_grad():
            res = {
                "inference_threshold": held_out_fvu(predict_threshold, batches, m),
                "batch_topk": held_out_fvu(predict_batch, batches, m),
                "topk_threshold": float(sae.topk_threshold),
            }
        sae.train()
        return res


def read_batches(loader, cfg: TrainConfig, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of ``loader`` as (source, target) copies."""
    out = []
    for b in loader:
        x, y = xy(b, cfg)
        out.append((x.clone(), y if y is x else y.clone()))
        if len(out) == n:
            break
    return out


def _time_pair(variants: dict, batches: list, repeats: int, batch: int) -> dict:
    """Interleaved timing of each variant's ``step(x, y)`` cycling over ``batches``."""
    idx = {n: 0 for n in variants}

    def caller(name):
        obj = variants[name]

        def call():
            x, y = batches[idx[name] % len(batches)]
            idx[name] += 1
            obj.step(x, y)

        return call

    times = C.interleaved({n: caller(n) for n in variants}, repeats=repeats, warmup=1)
    res = {
        n: {**C.summary(ts), "steps_per_s_at_median": 1 / statistics.median(ts), "all_s": ts} for n, ts in times.items()
    }
    for r in res.values():
        r["tokens_per_s_at_median"] = batch * r["steps_per_s_at_median"]
    return res


def _lockstep(runs: dict, loader, cfg: TrainConfig, steps: int) -> dict:
    """Feed the same ``steps`` shuffled batches to every run (order rotating each step); the
    seconds of each step of each run."""
    names = list(runs)
    secs = {n: [] for n in names}
    it = iter(loader)
    for s in range(steps):
        x, y = xy(next(it), cfg)
        r = s % len(names)
        for n in names[r:] + names[:r]:
            t0 = time.perf_counter()
            runs[n].step(x, y)
            secs[n].append(time.perf_counter() - t0)
        if (s + 1) % 50 == 0:
            print(f"  step {s + 1}/{steps}", flush=True)
    return {n: {**C.summary(v), "all_s": None} for n, v in secs.items()}


def _speed_pair(args, store_path: Path, pair: str) -> dict:
    torch.manual_seed(0)
    m, k, batch = args.latents, args.k, args.batch
    work = Path(args.work) / f"speed_{pair}"
    shutil.rmtree(work, ignore_errors=True)
    store = open_store(str(store_path))
    steps = args.train_steps
    widths = [m // 16, m // 4, m]
    arch = "matryoshka_batchtopk" if pair == "matryoshka" else "transcoder"
    extra = {"widths": ",".join(map(str, widths))} if pair == "matryoshka" else {}
    cfg = train_cfg(store_path, work / "a", arch, m, k, steps * batch, batch, **extra)
    tr_sel, _, _ = split(cfg, store)
    held, held_info = held_out_batches(cfg, store)
    total = math.ceil(cfg.tokens / cfg.batch_size)
    base_lr = default_lr(m)

    def same_lr(step):
        return _lr(cfg, base_lr, step, total)

    d = store._hook(cfg.source_hook).d

    def fresh():
        ld = loader_for(cfg, store, tr_sel, shuffle=True)
        if pair == "transcoder":
            runs = {
                "actstore": ActstoreRun(cfg, store, ld, total),
                "sparsify_adam_same_lr": SparsifyRun(d, m, k, total, "adam", lr_fn=same_lr),
                "sparsify_signum_default": SparsifyRun(d, m, k, total, "signum"),
            }
        else:
            runs = {
                "actstore": ActstoreRun(cfg, store, ld, total),
                "saelens_same_lr": SAELensRun(d, m, k, widths, lr_fn=same_lr),
                "saelens_default": SAELensRun(d, m, k, widths),
            }
        return ld, runs

    # (1) the step, timed on fresh models and pre-read batches (actstore vs the baseline's default step)
    timing = _speed_timing(args, pair, fresh, cfg, batch)
    shutil.rmtree(work, ignore_errors=True)

    # (2) equal steps on the same batches, then held-out FVU
    ld, runs = fresh()
    print(f"{pair}: {steps} steps of {batch} rows in lockstep for {', '.join(runs)} ...", flush=True)
    t0 = time.perf_counter()
    lock = _lockstep(runs, ld, cfg, steps)
    ld.close()
    wall = time.perf_counter() - t0
    quality = {}
    for n, r in runs.items():
        quality[n] = r.evaluate(held)
        main = quality[n].get("inference_threshold") or quality[n].get("topk")
        print(
            f"  {n:>24}: held-out FVU {main['fvu']:.4f} (L0 {main['l0']:.1f}, dead {main['dead_frac']:.3f})"
            + (
                f"; batch top-k form {quality[n]['batch_topk']['fvu']:.4f} (L0 {quality[n]['batch_topk']['l0']:.1f})"
                if "batch_topk" in quality[n]
                else ""
            )
            + f"; step median {lock[n]['median_s'] * 1e3:.0f} ms",
            flush=True,
        )
    lrs = {
        n: (
            {"lr": base_lr, "schedule": "actstore: warmup 5%, linear decay over the last 20%"}
            if n == "actstore" or n.endswith("same_lr")
            else {"lr": r.lr, "schedule": _default_schedule(n)}
        )
        for n, r in runs.items()
    }
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "setup": {
            "arch": arch,
            "source": cfg.source_hook,
            "target": cfg.target_hook,
            "d": d,
            "m": m,
            "k": k,
            "widths": widths if pair == "matryoshka" else None,
            "batch": batch,
            "dtype": "float32",
            "held_out": held_info,
            "train_steps": steps,
            "time_batches": args.time_batches,
        },
        "step_timing": timing,
        "equal_steps": {
            "steps": steps,
            "wall_s": wall,
            "lr": lrs,
            "held_out": quality,
            "step_seconds_during_training": lock,
        },
    }


def _speed_timing(args, pair: str, fresh, cfg: TrainConfig, batch: int) -> dict:
    """One step of actstore and of the baseline at the same lr, interleaved on fresh models
    and ``args.time_batches`` pre-read batches."""
    ld, runs = fresh()
    batches = read_batches(ld, cfg, args.time_batches)
    ld.close()
    timed_names = ["actstore", "sparsify_adam_same_lr" if pair == "transcoder" else "saelens_same_lr"]
    print(f"{pair}: timing one step, {args.repeats} interleaved rounds ...", flush=True)
    timing = _time_pair({n: runs[n] for n in timed_names}, batches, args.repeats, batch)
    base = timed_names[1]
    ratio = {
        f"{base}_over_actstore_time_median": timing[base]["median_s"] / timing["actstore"]["median_s"],
        f"{base}_over_actstore_time_min": timing[base]["min_s"] / timing["actstore"]["min_s"],
        # the two steps of a round ran back to back: the median of the per-round ratios moves
        # less when another job takes the cores for part of the run
        f"{base}_over_actstore_time_paired_median": statistics.median(
            b / a for a, b in zip(timing["actstore"]["all_s"], timing[base]["all_s"])
        ),
    }
    for n in timed_names:
        t = timing[n]
        print(
            f"  {n:>24}: median {t['median_s'] * 1e3:7.1f} ms  min {t['min_s'] * 1e3:7.1f}  max {t['max_s'] * 1e3:7.1f}"
            f"  -> {t['steps_per_s_at_median']:.2f} steps/s ({t['tokens_per_s_at_median']:.0f} rows/s)",
            flush=True,
        )
    print("  ratio " + ", ".join(f"{k_} {v:.2f}" for k_, v in ratio.items()), flush=True)
    return {**timing, **ratio}


def _default_schedule(name: str) -> str:
    return {
        "sparsify_adam_default": "sparsify Adam: 2e-4/sqrt(m/2^14), linear warmup 1000 steps, linear decay to 0",
        "sparsify_signum_default": "sparsify default: Signum, schedule-free (momentum 0.95), 5e-3/sqrt(m/2^14)",
        "saelens_default": "SAELens default: Adam 3e-4, constant, no warmup",
    }[name]


# -- quality -------------------------------------------------------------------------------


def part_quality(args, store_path: Path) -> dict:
    m, k, tokens = args.q_latents, args.k, args.q_tokens
    work = Path(args.work) / "quality"
    runs = {
        "transcoder": ("transcoder", {}),
        "skip_transcoder": ("skip_transcoder", {}),
        "sae_mlp_out": ("topk", {}),
    }
    out = {
        "setup": {
            "m": m,
            "k": k,
            "tokens": tokens,
            "eval_model": SMOLLM2_MODEL,
            "eval_model_tokens": args.q_eval_tokens,
            "activation": "topk",
            "defaults": "batch, lr, warmup, decay, held-out split: the trainer's",
        },
        "runs": {},
    }
    for name, (arch, extra) in runs.items():
        shutil.rmtree(work / name, ignore_errors=True)
        splice = args.eval_model_transcoders or "transcoder" not in arch
        cfg = train_cfg(
            store_path, work / name, arch, m, k, tokens, TrainConfig.__dataclass_fields__["batch_size"].default,
            eval_model=SMOLLM2_MODEL if splice else None, eval_model_tokens=args.q_eval_tokens,
            checkpoint_every=10**9, **extra,
        )  # fmt: skip
        print(f"quality {name}: train {arch} m={m} k={k} {tokens} tokens (eval_model: {splice}) ...", flush=True)
        t0 = time.perf_counter()
        s = train(cfg, progress=False)
        sec = time.perf_counter() - t0
        row = {
            "arch": arch,
            "source": s["source"],
            "target": s["target"],
            "steps": s["steps"],
            "lr": s["lr"],
            "seconds": sec,
            "train_fvu_last_batch": s["final"]["fvu"],
            "held_out": s["eval"],
            "eval_model": s.get("eval_model"),
        }
        out["runs"][name] = row
        em = row["eval_model"]
        print(
            f"  held-out FVU {s['eval']['fvu']:.4f} L0 {s['eval']['l0']:.1f} dead {s['eval']['dead_frac']:.3f}"
            + (
                f"; LM loss clean {em['clean']:.4f} spliced {em['spliced']:.4f} zero {em['zero_ablation']:.4f} "
                f"nats/token, recovered {em['recovered']:.4f} ({em['tokens']} tokens)"
                if em
                else "; no eval_model"
            )
            + f" ({sec:.0f} s)",
            flush=True,
        )
        shutil.rmtree(work / name, ignore_errors=True)
    return out


# -- main ----------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="data,parity,speed,quality", help="data, parity, speed, quality")
    ap.add_argument("--work", default="/tmp/actstore-dict", help="the store and scratch runs")
    ap.add_argument("--latents", type=int, default=4096, help="m of parity and speed")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2048, help="rows per step (the trainer's default)")
    ap.add_argument("--parity-steps", type=int, default=20)
    ap.add_argument(
        "--pairs",
        default="transcoder,matryoshka",
        help="speed: transcoder, matryoshka (each its own section of the results)",
    )
    ap.add_argument("--repeats", type=int, default=15, help="speed: timed interleaved rounds")
    ap.add_argument("--time-batches", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=300, help="speed: steps before the held-out FVU")
    ap.add_argument("--q-latents", type=int, default=4096)
    ap.add_argument("--q-tokens", type=int, default=300_000)
    ap.add_argument(
        "--q-eval-tokens",
        type=int,
        default=TrainConfig.__dataclass_fields__["eval_model_tokens"].default,
        help="quality: held-out tokens of the eval_model splice (the trainer's default)",
    )
    ap.add_argument(
        "--no-eval-model-transcoders", dest="eval_model_transcoders", action="store_false",
        help="quality: no eval_model splice for the transcoders",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = C.metadata()  # before anything is measured
    import dictionary_learning  # noqa: F401
    import sae_lens

    meta["versions"].update(
        {
            "sae_lens": sae_lens.__version__,
            "sparsify": C._version("eai-sparsify"),
            "dictionary_learning": C._version("dictionary-learning"),
            "schedulefree": C._version("schedulefree"),
        }
    )
    meta["torch_threads"] = torch.get_num_threads()
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"data", "parity", "speed", "quality"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    work = Path(args.work)
    store, data_info = prepare_store(work)
    with open_store(str(store)) as st:
        data_info.update({"store_rows": st.rows, "hooks_d": {h: st._hook(h).d for h in (HOOK_IN, HOOK_OUT)}})
    print(f"store {store}: {data_info['store_rows']} rows, {data_info['hooks_d']}", flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "no_write"}
    results = {}
    if "data" in parts:
        results["data"] = data_info
    if "parity" in parts:
        t0 = time.perf_counter()
        results["parity"] = {**part_parity(args, store), "part_seconds": time.perf_counter() - t0}
    if "speed" in parts:
        for pair in args.pairs.split(","):  # one section per pair: each can be rerun alone
            t0 = time.perf_counter()
            results[f"speed_{pair}"] = {**_speed_pair(args, store, pair), "part_seconds": time.perf_counter() - t0}
    if "quality" in parts:
        t0 = time.perf_counter()
        results["quality"] = {**part_quality(args, store), "part_seconds": time.perf_counter() - t0}
    if args.no_write:
        return
    path = C.RESULTS / f"{RESULT}.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("parts", {})
    for name, res in results.items():
        doc["parts"][name] = {"meta": meta, "settings": settings, **res}
    doc["meta"] = meta  # the same dict: write_result adds the end state to both
    doc["data"] = data_info
    doc["units"] = {
        "fvu": "fraction of variance unexplained of the target over the held-out rows (0 = perfect)",
        "l0": "active latents per row, mean",
        "dead_frac": "share of latents that fire on no held-out row",
        "*_s": "seconds",
        "steps_per_s_at_median": "optimizer steps per second (1 / median step time)",
        "tokens_per_s_at_median": "rows (tokens) per second at the median step time",
        "lm loss": "nats per predicted token (next-token cross-entropy)",
        "recovered": "(zero-ablation loss - spliced loss) / (zero-ablation loss - clean loss)",
    }
    print(f"wrote {C.write_result(RESULT, doc)}")


if __name__ == "__main__":
    main()
