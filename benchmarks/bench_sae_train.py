"""TopK SAE training on real all-MiniLM-L6-v2 activations: actstore's learning curve, and
its training step against SAELens' on the same batches.

Two measurements, in one process, on one hook of an existing store (default: the demo
store made by ``make demo``, hook ``encoder.layer.3``, d=384):

- ``curve``: ``actstore.sae.train`` (store -> shuffling loader -> step, AdamW, warmup and
  decay, decoder renormalization, AuxK bookkeeping) for ``--tokens`` tokens into a fresh
  temporary folder. Recorded: its log (tokens, FVU, L0, dead fraction at every
  ``--log-every`` steps; FVU is the training batch's, before that step's update), the
  first logged token count with FVU < 0.3, the final FVU, and end-to-end tokens/s (the
  wall clock around ``train()``, start-up and final save included; and the median of the
  log's per-interval tokens/s, which leaves them out).
- ``step``: one training step of each library on identical pre-read batches (read from the
  store, float32, scaled by sqrt(d) / mean_norm as the trainer's loader does), timed
  round-robin (A, B, A, B, ...; ``_common.interleaved``) for ``--steps`` repeats after one
  warm-up each; medians reported, and tokens/s = batch / median.
  actstore: ``sae.loss(x, dead_mask)`` + backward + ``remove_parallel_decoder_grad`` +
  AdamW step + ``normalize_decoder`` (what its trainer does per step).
  SAELens: ``TopKTrainingSAE.training_forward_pass(TrainStepInput(...))`` + backward +
  ``clip_grad_norm_(1.0)`` + Adam step + ``zero_grad`` (what ``SAETrainer._train_step``
  does; its fired-latent bookkeeping and LR scheduler are left out). Both get an all-False
  dead mask, so neither computes an AuxK term, as at the start of training.
  Same architecture (TopK, per-row k), d, latents, k, batch, float32, same device.

Results: benchmarks/results/sae_train_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from actstore.sae import SAEConfig, build, train  # noqa: E402


def run_curve(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_sae_train_") as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        summary = train(
            store=args.store,
            hook=args.hook,
            arch="topk",
            latents=args.latents,
            k=args.k,
            tokens=args.tokens,
            out=str(out),
            batch_size=args.batch,
            lr=args.lr,
            log_every=args.log_every,
            checkpoint_every=10**9,
            device=args.device,
            progress=False,
        )
        wall = time.perf_counter() - t0
        log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln]
    curve = [{k: r[k] for k in ("step", "tokens", "fvu", "l0", "dead_frac", "tokens_per_s")} for r in log]
    below = next((r["tokens"] for r in curve if r["fvu"] < 0.3), None)
    interval_tps = [r["tokens_per_s"] for r in curve[1:]] or [r["tokens_per_s"] for r in curve]
    return {
        "curve": curve,
        "tokens_to_fvu_below_0.3": below,
        "final_fvu": curve[-1]["fvu"],
        "final_l0": curve[-1]["l0"],
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "wall_s": wall,
        "end_to_end_tokens_per_s_wall": summary["tokens"] / wall,
        "end_to_end_tokens_per_s_log_median": statistics.median(interval_tps),
    }


def read_batches(args, dev) -> list[torch.Tensor]:
    s = actstore.open(args.store)
    d = int(s.read(args.hook, slice(0, 1)).shape[1])
    scale = math.sqrt(d) / float(s.stats(args.hook)["mean_norm"])
    starts = torch.randperm(int(s.rows) // args.batch, generator=torch.Generator().manual_seed(0))
    batches = []
    for b in starts[: args.batches].tolist():
        a = b * args.batch
        batches.append((s.read(args.hook, slice(a, a + args.batch)).float() * scale).to(dev).contiguous())
    return batches


def run_steps(args, dev) -> dict:
    from sae_lens.saes import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    batches = read_batches(args, dev)
    d = batches[0].shape[1]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    a_sae = build(SAEConfig("topk", d, args.latents, k=args.k), seed=0).to(dev).train()
    a_sae.normalize_decoder()
    a_opt = torch.optim.AdamW(a_sae.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    a_dead = torch.zeros(args.latents, dtype=torch.bool, device=dev)
    l_cfg = TopKTrainingSAEConfig(d_in=d, d_sae=args.latents, k=args.k, dtype="float32", device=str(dev))
    l_sae = TopKTrainingSAE(l_cfg).train()
    l_opt = torch.optim.Adam(l_sae.parameters(), lr=args.lr, betas=(0.9, 0.999))
    l_dead = torch.zeros(args.latents, dtype=torch.bool, device=dev)
    i = {"actstore": 0, "saelens": 0}
    last = {}

    def step_actstore():
        x = batches[i["actstore"] % len(batches)]
        i["actstore"] += 1
        res = a_sae.loss(x, dead_mask=a_dead)
        a_opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        a_sae.remove_parallel_decoder_grad()
        a_opt.step()
        a_sae.normalize_decoder()
        sync()
        last["actstore"] = (res["mse"].detach(), x)

    def step_saelens():
        x = batches[i["saelens"] % len(batches)]
        i["saelens"] += 1
        o = l_sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=l_dead, n_training_steps=i["saelens"], is_logging_step=False
            )
        )
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(l_sae.parameters(), 1.0)
        l_opt.step()
        l_opt.zero_grad()
        sync()
        last["saelens"] = (o.losses["mse_loss"].detach(), x)

    times = C.interleaved({"actstore": step_actstore, "saelens": step_saelens}, repeats=args.steps, warmup=1)
    res = {
        name: {**C.summary(ts), "tokens_per_s_at_median": args.batch / statistics.median(ts), "all_s": ts}
        for name, ts in times.items()
    }
    res["saelens_over_actstore_time_ratio"] = res["saelens"]["median_s"] / res["actstore"]["median_s"]
    res["saelens_over_actstore_min_time_ratio"] = res["saelens"]["min_s"] / res["actstore"]["min_s"]  # least loaded
    # sanity (both really train): FVU of each library's last timed step, its batch's MSE / total variance
    res["last_step_fvu"] = {k: float(mse / (x - x.mean(0)).pow(2).sum(1).mean()) for k, (mse, x) in last.items()}
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(C.REPO / "demo_store"))
    ap.add_argument("--hook", default="encoder.layer.3")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--latents", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tokens", type=int, default=600_000, help="tokens for the curve run")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per library (after 1 warm-up)")
    ap.add_argument("--batches", type=int, default=4, help="distinct pre-read batches, cycled")
    ap.add_argument("--skip-curve", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    meta = C.metadata()
    if dev.type == "cuda":
        meta["machine"]["gpu"] = torch.cuda.get_device_name(dev)
    import sae_lens

    meta["versions"]["sae_lens"] = sae_lens.__version__
    settings = {k: v for k, v in vars(args).items() if k != "no_write"}
    settings["torch_threads"] = torch.get_num_threads()

    print(
        f"step comparison: {args.steps} interleaved steps each, batch {args.batch}, d->m={args.latents}, "
        f"k={args.k}, {args.device}",
        flush=True,
    )
    steps = run_steps(args, dev)
    print(
        C.fmt_table(
            [
                [
                    n,
                    f"{steps[n]['median_s'] * 1e3:.1f}",
                    f"{steps[n]['min_s'] * 1e3:.1f}",
                    f"{steps[n]['max_s'] * 1e3:.1f}",
                    f"{steps[n]['tokens_per_s_at_median']:.0f}",
                ]
                for n in ("actstore", "saelens")
            ],
            ["step", "median ms", "min ms", "max ms", "tokens/s"],
        )
    )
    print(
        f"SAELens / actstore step time: {steps['saelens_over_actstore_time_ratio']:.2f} (medians), "
        f"{steps['saelens_over_actstore_min_time_ratio']:.2f} (minima); FVU at the last "
        "timed step: " + ", ".join(f"{k} {v:.3f}" for k, v in steps["last_step_fvu"].items()),
        flush=True,
    )

    curve = None
    if not args.skip_curve:
        print(f"\ncurve: actstore train() for {args.tokens} tokens ...", flush=True)
        curve = run_curve(args)
        print(
            C.fmt_table(
                [
                    [
                        r["tokens"],
                        f"{r['fvu']:.4f}",
                        f"{r['l0']:.1f}",
                        f"{r['dead_frac']:.3f}",
                        f"{r['tokens_per_s']:.0f}",
                    ]
                    for r in curve["curve"]
                ],
                ["tokens", "fvu", "l0", "dead_frac", "tokens/s"],
            )
        )
        print(
            f"tokens to FVU < 0.3: {curve['tokens_to_fvu_below_0.3']}; final FVU {curve['final_fvu']:.4f} "
            f"at {curve['tokens']} tokens; end-to-end {curve['end_to_end_tokens_per_s_wall']:.0f} tokens/s "
            f"(wall, {curve['wall_s']:.0f} s), {curve['end_to_end_tokens_per_s_log_median']:.0f} tokens/s "
            "(median of log intervals)"
        )

    doc = {"meta": meta, "settings": settings, "step_comparison": steps, "actstore_train": curve}
    if not args.no_write:
        print(f"\nwrote {C.write_result(f'sae_train_{dev.type}', doc)}")
    return doc


if __name__ == "__main__":
    main()
