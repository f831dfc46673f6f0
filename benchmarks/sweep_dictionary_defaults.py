"""The trainer's defaults for transcoders and Matryoshka SAEs, checked on SmolLM2 layer 15.

On the store of ``bench_dictionaries.py`` (SmolLM2-135M-Instruct ``model.layers.15.mlp:input``
and ``model.layers.15.mlp`` over ``pydoc_data.topics``, ~125k rows, d = 576; captured into
``--work`` on first use), small runs of ``actstore.sae.train`` (m = ``--latents``, k =
``--k``, ``--tokens`` tokens, the trainer's defaults otherwise: batch 2048, lr
8e-4/sqrt(m/2^14), warmup 5%, decay over the last 20%, dead after 1M tokens), each with
seeds ``--seeds``, every one scored on the same held-out rows (the trainer's split: the last
5% of the store). Groups:

- ``activation``: transcoder (``mlp:input`` -> ``mlp``) with activation topk, batchtopk and
  jumprelu (jumprelu's L0 is set by its l0_coef, not k: compare its L0 too);
- ``lr``: the TopK transcoder at 0.5x, 1x, 2x, 4x the default lr;
- ``matryoshka``: ``matryoshka_batchtopk`` on the MLP output, widths m/16, m/4, m, loss
  ``mean`` (dictionary_learning's scale, the default) against ``sum`` (SAELens'), at the
  default dead threshold (1M tokens: no latent can be dead within a 200k-token run, so AuxK
  never runs and the two differ only by the loss scale, which AdamW all but ignores). Trials
  with ``dead_tokens`` 100k and 20k gave the same figures to the last digit (no latent went
  that long without firing in a batch of 2048 rows); 4096 crashed ``mean`` on the CPU
  (see the report of this sweep: a non-contiguous index when exactly one latent is dead).
  Per-level held-out FVU (the reconstruction from the first w_i latents alone) besides the
  full one.

Recorded per run: held-out FVU of the target, L0, dead fraction (latents that fire on no
held-out row), the last training batch's FVU, steps, lr, seconds. Medians over seeds per
configuration. FVU is no timing: a CPU run is deterministic, so the seeds give the spread.
~15-25 min on 2 shared cores with the defaults.

    python benchmarks/sweep_dictionary_defaults.py [--tokens 200000] [--seeds 0,1,2] [--work /tmp/actstore-dict]

Writes ``benchmarks/results/dictionary_defaults_sweep.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from bench_dictionaries import HOOK_IN, HOOK_OUT, held_out_batches, prepare_store, train_cfg  # noqa: E402

from actstore import open as open_store  # noqa: E402
from actstore.sae.train import TrainConfig, default_lr, train  # noqa: E402


def configs(m: int) -> dict[str, tuple[str, str, dict]]:
    """name -> (group, arch, TrainConfig overrides)."""
    widths = f"{m // 16},{m // 4}"
    lr = default_lr(m)
    runs = {
        f"transcoder_{a}": ("activation", "transcoder", {"activation": a}) for a in ("topk", "batchtopk", "jumprelu")
    }
    for mult in (0.5, 2, 4):  # 1x is transcoder_topk
        runs[f"transcoder_topk_lr{mult}x"] = ("lr", "transcoder", {"activation": "topk", "lr": lr * mult})
    for loss in ("mean", "sum"):
        runs[f"matryoshka_{loss}"] = (
            "matryoshka",
            "matryoshka_batchtopk",
            {"widths": widths, "sae": {"matryoshka_loss": loss}},
        )
    return runs


@torch.no_grad()
def level_fvu(sae, batches) -> list[float]:
    """Held-out FVU of each Matryoshka level (eval mode: the inference threshold), over the set."""
    sae.eval()
    err = None
    n, s1, s2 = 0, None, None
    for x, _ in batches:
        lat = sae.encode(x)
        yd = x.double()
        e = torch.stack([(h.double() - yd).pow(2).sum() for h in sae.level_outputs(lat)])
        err = e if err is None else err + e
        n += x.shape[0]
        s1 = yd.sum(0) if s1 is None else s1 + yd.sum(0)
        s2 = yd.pow(2).sum(0) if s2 is None else s2 + yd.pow(2).sum(0)
    sae.train()
    total = float((s2 - s1.pow(2) / n).sum())
    return [float(v) / total for v in err]


def run_one(store: Path, work: Path, name: str, arch: str, over: dict, args, seed: int, held) -> dict:
    out = work / "runs" / f"{name}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    batch = TrainConfig.__dataclass_fields__["batch_size"].default
    cfg = train_cfg(
        store, out, arch, args.latents, args.k, args.tokens, batch, seed=seed, checkpoint_every=10**9, **over
    )
    t0 = time.perf_counter()
    s, sae = train(cfg, progress=False, return_sae=True)
    sec = time.perf_counter() - t0
    row = {
        "name": name,
        "seed": seed,
        "arch": arch,
        "config": over,
        "lr": s["lr"],
        "steps": s["steps"],
        "warmup_steps": s["warmup_steps"],
        "train_fvu_last_batch": s["final"]["fvu"],
        "train_dead_frac": s["final"]["dead_frac"],
        "eval_fvu": s["eval"]["fvu"],
        "eval_l0": s["eval"]["l0"],
        "eval_dead_frac": s["eval"]["dead_frac"],
        "eval_rows": s["eval"]["rows"],
        "seconds": sec,
    }
    if arch == "matryoshka_batchtopk":
        row["widths"] = sae.cfg.widths
        row["eval_level_fvu"] = level_fvu(sae, held)
    lv = f" levels {', '.join(f'{v:.3f}' for v in row['eval_level_fvu'])}" if "eval_level_fvu" in row else ""
    print(
        f"{name:>28} s{seed}: lr {s['lr']:.2e} steps {s['steps']}: held-out fvu {row['eval_fvu']:.4f} "
        f"l0 {row['eval_l0']:.1f} dead {row['eval_dead_frac']:.3f}{lv} (last batch {row['train_fvu_last_batch']:.3f}; "
        f"{sec:.0f} s)",
        flush=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/actstore-dict")
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=None, help="comma-separated config names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = C.metadata()  # before anything is measured
    meta["torch_threads"] = torch.get_num_threads()
    work = Path(args.work)
    store, data_info = prepare_store(work)
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = configs(args.latents)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    with open_store(str(store)) as st:
        rows_in_store = st.rows
        batch = TrainConfig.__dataclass_fields__["batch_size"].default
        held, held_info = held_out_batches(train_cfg(store, work / "x", "topk", args.latents, args.k, 1, batch), st)
    rows = []
    for seed in seeds:  # one seed of every configuration first: a cut-short sweep still compares them all
        for name, (_, arch, over) in todo.items():
            rows.append(run_one(store, work, name, arch, over, args, seed, held))

    summary = {}
    for name, (group, arch, _) in todo.items():
        rs = [r for r in rows if r["name"] == name]
        ev = [r["eval_fvu"] for r in rs]
        summary[name] = {
            "group": group,
            "seeds": len(rs),
            "eval_fvu_median": statistics.median(ev),
            "eval_fvu_min": min(ev),
            "eval_fvu_max": max(ev),
            "eval_l0_median": statistics.median(r["eval_l0"] for r in rs),
            "eval_dead_frac_median": statistics.median(r["eval_dead_frac"] for r in rs),
            "lr": rs[0]["lr"],
        }
        if arch == "matryoshka_batchtopk":
            summary[name]["eval_level_fvu_median"] = [
                statistics.median(r["eval_level_fvu"][i] for r in rs) for i in range(len(rs[0]["eval_level_fvu"]))
            ]
    print()
    print(
        C.fmt_table(
            [
                [
                    n,
                    s["group"],
                    s["seeds"],
                    f"{s['lr']:.2e}",
                    f"{s['eval_fvu_median']:.4f}",
                    f"[{s['eval_fvu_min']:.4f}, {s['eval_fvu_max']:.4f}]",
                    f"{s['eval_l0_median']:.1f}",
                    f"{s['eval_dead_frac_median']:.3f}",
                    ", ".join(f"{v:.3f}" for v in s.get("eval_level_fvu_median", [])),
                ]
                for n, s in summary.items()
            ],
            ["config", "group", "seeds", "lr", "held-out fvu (median)", "[min, max]", "l0", "dead", "levels"],
        )
    )
    if args.no_write:
        return
    doc = {
        "meta": meta,
        "setup": {
            "model": "SmolLM2-135M-Instruct",
            "hooks": [HOOK_IN, HOOK_OUT],
            "store_rows": rows_in_store,
            "data": data_info,
            "held_out": held_info,
            "latents": args.latents,
            "k": args.k,
            "tokens": args.tokens,
            "seeds": seeds,
            "defaults_now": {
                "batch_size": TrainConfig.__dataclass_fields__["batch_size"].default,
                "lr": default_lr(args.latents),
                "warmup_frac": TrainConfig.__dataclass_fields__["warmup_frac"].default,
                "dead_tokens": TrainConfig.__dataclass_fields__["dead_tokens"].default,
                "activation": "topk",
                "matryoshka_loss": "mean",
            },
        },
        "units": {
            "eval_fvu": "fraction of variance unexplained of the target over the held-out rows (0 = perfect)",
            "eval_level_fvu": "the same for the reconstruction from each Matryoshka prefix alone",
            "eval_l0": "active latents per held-out row, mean",
            "eval_dead_frac": "share of latents firing on no held-out row",
            "seconds": "wall seconds of the train() call",
        },
        "summary": summary,
        "runs": rows,
    }
    print(f"wrote {C.write_result('dictionary_defaults_sweep', doc)}")


if __name__ == "__main__":
    main()
