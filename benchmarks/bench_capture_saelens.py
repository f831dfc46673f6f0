"""Activation capture: actstore.capture against SAELens' CacheActivationsRunner, on the CPU.

    python benchmarks/bench_capture_saelens.py [--sequences N] [--repeats N] [--dir DIR]

What is compared: both tools capture ``blocks.1.hook_resid_post`` of the same
TransformerLens ``HookedTransformer`` over the same pre-tokenized token ids and write the
activations to disk:

- SAELens 6 ``CacheActivationsRunner`` (its default stored dtype, float32): one forward per
  batch through ``run_with_cache(stop_at_layer=2)``, activations gathered in an in-memory
  buffer, written as a Hugging Face ``datasets`` (Arrow) dataset with a ``token_ids`` column;
- ``actstore.capture`` with ``dtype="fp32"`` (lossless for this fp32 model) and with
  ``dtype="bf16"`` (its default), codec ``zstd``, ``durable=True`` (its default: files and
  commits are fsync'ed; SAELens does not fsync);
- forward only: ``model(tokens, stop_at_layer=2)`` over the same batches, nothing kept or
  written, as the ceiling both tools are bounded by.

How it is made fair:

- one model object (random weights from a fixed seed: no hub download is possible here),
  built once and handed to both tools; SAELens' ``load_model`` is patched to return it, so
  no variant pays for model construction;
- the same ``[sequences, 128]`` int64 token ids (uniform random ids, fixed seed), given to
  SAELens as a ``datasets.Dataset`` with an ``input_ids`` column (which it treats as
  pre-tokenized: no BOS added, rows cut to the context) and to actstore as a NumPy array
  with ``bos="none", eos="none"`` (each row is exactly one 128-token window);
- the same batch size (32 sequences) and the same fp32 model; both stop the forward pass
  after block 1; no shuffling (SAELens ``shuffle=False``);
- SAELens' buffer sized to the token budget (``buffer_size_gb`` such that one buffer holds
  exactly ``training_tokens``): with its default 2 GB buffer it would cache ~1M tokens
  whatever the budget, cycling the data;
- every variant first runs once untimed on a small budget (warm-up), then the timed runs go
  round-robin, the order rotating each round, each from an empty output directory after
  ``os.sync()``; the figure reported is the best (shortest) of the runs of each variant
  (3 by default: a shared machine only ever slows a run down), the median and every run
  are in the JSON. Wall time covers the whole call (for SAELens: constructing the runner,
  which builds its ActivationsStore, plus ``run()``; for actstore: ``capture()``).

Bytes per token: every file in the output directory (SAELens' consolidated Arrow files and
metadata; actstore's whole store: activations, token columns, statistics, manifests)
divided by the tokens stored. Correctness, checked untimed on the last run of each: the
first 256 stored rows (first two sequences) against ``run_with_cache`` of the same model,
and the stored token ids against the input. Note: random weights and random tokens make
the activations close to incompressible noise, so actstore's lossless codec gains little
here; real-model ratios are in codecs.json.

Results: benchmarks/results/capture_saelens.json (capture_saelens_quick.json with --quick).
"""

from __future__ import annotations

import os

# Offline, and no progress bars (SAELens' and datasets' tqdm bars); set before importing them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import datasets  # noqa: E402
import numpy as np  # noqa: E402
import sae_lens.cache_activations_runner as sl_runner  # noqa: E402
import torch  # noqa: E402
from sae_lens import CacheActivationsRunnerConfig  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

import actstore  # noqa: E402

HOOK = "blocks.1.hook_resid_post"
STOP_AT_LAYER = 2  # blocks 0 and 1: what both tools run for this hook
CONTEXT = 128
BATCH_SEQS = 32  # sequences per forward, both tools
SEQUENCES = 512  # 512 x 128 = 65,536 tokens
QUICK_SEQUENCES = 64
WARMUP_SEQUENCES = 32
CHECK_SEQS = 2  # sequences compared against run_with_cache
SEED = 0
MODEL_CFG = dict(
    n_layers=4,
    d_model=512,
    n_heads=8,
    d_head=64,
    d_mlp=2048,
    n_ctx=CONTEXT,
    d_vocab=5000,
    act_fn="gelu",
    normalization_type="LN",
    seed=SEED,
    device="cpu",
)
VARIANTS = ("saelens_fp32", "actstore_fp32", "actstore_bf16", "forward_only")


def build_model() -> HookedTransformer:
    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3: "HookedTransformer is deprecated"
        return HookedTransformer(HookedTransformerConfig(**MODEL_CFG)).eval()


def make_tokens(n_seq: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, MODEL_CFG["d_vocab"], size=(n_seq, CONTEXT), dtype=np.int64)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- the three ways of running the model ------------------------------------------------


def saelens_config(tokens: np.ndarray, out: Path, d_in: int) -> CacheActivationsRunnerConfig:
    """A CacheActivationsRunnerConfig whose single buffer holds exactly the token budget."""
    n_tokens = tokens.size
    bytes_per_token = d_in * 4  # float32, what SAELens uses to size its buffer
    cfg = CacheActivationsRunnerConfig(
        dataset_path="in-memory/random-token-ids",  # never loaded: override_dataset is given
        model_name="random-init-hooked-transformer",  # never loaded: load_model is patched
        model_class_name="HookedTransformer",
        hook_name=HOOK,
        d_in=d_in,
        training_tokens=n_tokens,
        context_size=CONTEXT,
        model_batch_size=BATCH_SEQS,
        new_cached_activations_path=str(out),
        shuffle=False,
        dtype="float32",
        device="cpu",
        prepend_bos=False,
        streaming=False,
        # Half a token of slack so that float rounding cannot drop the last batch.
        buffer_size_gb=(n_tokens * bytes_per_token + bytes_per_token // 2) / 1e9,
    )
    assert cfg.n_buffers == 1 and cfg.n_tokens_in_buffer == n_tokens, (cfg.n_buffers, cfg.n_tokens_in_buffer, n_tokens)
    return cfg


def run_saelens(model, tokens: np.ndarray, ds: datasets.Dataset, out: Path) -> dict:
    cfg = saelens_config(tokens, out, model.cfg.d_model)
    t0 = time.perf_counter()
    with mock.patch.object(sl_runner, "load_model", lambda **kw: model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer samples than training tokens": rows, not tokens; no epoch repeats
        runner = sl_runner.CacheActivationsRunner(cfg, override_dataset=ds)
        t1 = time.perf_counter()
        runner.run()
    t2 = time.perf_counter()
    return {"setup_s": t1 - t0, "run_s": t2 - t1, "wall_s": t2 - t0}


def run_actstore(model, tokens: np.ndarray, out: Path, dtype: str) -> dict:
    t0 = time.perf_counter()
    s = actstore.capture(
        model,
        HOOK,
        tokens,
        str(out),
        context=CONTEXT,
        batch_size=BATCH_SEQS,
        dtype=dtype,
        progress=False,
        bos="none",
        eos="none",
    )
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "summary": {
            k: s[k]
            for k in (
                "rows_this_run",
                "capture_seconds",
                "forward_seconds",
                "seconds",
                "tokens_per_s",
                "bytes_written",
                "store_wait_seconds",
            )
        },
    }


def run_forward(model, tokens: np.ndarray) -> dict:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(tokens), BATCH_SEQS):
            model(torch.from_numpy(tokens[lo : lo + BATCH_SEQS]), stop_at_layer=STOP_AT_LAYER)
    return {"wall_s": time.perf_counter() - t0}


# --- checks -----------------------------------------------------------------------------


def reference_acts(model, tokens: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.from_numpy(tokens[:CHECK_SEQS]), names_filter=HOOK)
    return cache[HOOK].reshape(CHECK_SEQS * CONTEXT, -1).float()


def compare(got: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> dict:
    got = got.float()
    err = (got - ref).abs()
    return {
        "rows_compared": int(ref.shape[0]),
        "allclose": bool(torch.allclose(got, ref, rtol=rtol, atol=atol)),
        "rtol": rtol,
        "atol": atol,
        "max_abs_err": float(err.max()),
        "max_rel_err": float((err / ref.abs().clamp_min(1e-6)).max()),
        "bit_exact": bool(torch.equal(got, ref)),
    }


def check_actstore(out: Path, tokens: np.ndarray, ref: torch.Tensor, dtype: str) -> dict:
    n = CHECK_SEQS * CONTEXT
    with actstore.open(str(out)) as s:
        got = s.read(HOOK, slice(0, n))
        tok = s.tokens(slice(0, s.rows))["token"].numpy()
        rows = s.rows
    # fp32: other batch shapes may change the last bits of the model's output; bf16 keeps
    # 8 significant bits, so rounding to nearest is off by at most 2^-8 of the value.
    rtol, atol = (1e-5, 1e-5) if dtype == "fp32" else (2.0**-8, 1e-5)
    out = {
        "tokens_stored": rows,
        "tokens_expected": int(tokens.size),
        "token_count_ok": rows == tokens.size,
        "token_ids_match_input": bool(np.array_equal(tok, tokens.reshape(-1))),
        f"first_{n}_rows_vs_run_with_cache": compare(got, ref, rtol, atol),
    }
    if dtype == "bf16":
        out[f"first_{n}_rows_equal_run_with_cache_rounded_to_bf16"] = bool(torch.equal(got, ref.bfloat16().float()))
    return out


def check_saelens(out: Path, tokens: np.ndarray, ref: torch.Tensor) -> dict:
    ds = datasets.load_from_disk(str(out))
    ds.set_format("torch", columns=[HOOK, "token_ids"])
    head = ds[:CHECK_SEQS]
    n_tok = len(ds) * CONTEXT
    ids = np.concatenate([np.asarray(r) for r in ds.with_format("numpy")["token_ids"]]).reshape(-1)
    return {
        "tokens_stored": n_tok,
        "tokens_expected": int(tokens.size),
        "token_count_ok": n_tok == tokens.size,
        "token_ids_match_input": bool(np.array_equal(ids, tokens.reshape(-1))),
        "stored_dtype": str(ds.features[HOOK].dtype),
        "stored_shape_per_row": list(ds.features[HOOK].shape),
        "columns": ds.column_names,
        f"first_{CHECK_SEQS * CONTEXT}_rows_vs_run_with_cache": compare(
            head[HOOK].reshape(CHECK_SEQS * CONTEXT, -1), ref, 1e-5, 1e-5
        ),
    }


# --- main -------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=None, help=f"sequences of {CONTEXT} tokens (default {SEQUENCES})")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_SEQUENCES} sequences, 1 repeat")
    ap.add_argument("--dir", default=None, help="scratch directory for the outputs (default: a new dir in $TMPDIR)")
    args = ap.parse_args(argv)
    n_seq = args.sequences or (QUICK_SEQUENCES if args.quick else SEQUENCES)
    repeats = 1 if args.quick else args.repeats
    if n_seq % BATCH_SEQS:
        ap.error(f"--sequences must be a multiple of {BATCH_SEQS} (SAELens caches whole batches)")

    meta = C.metadata()
    meta["versions"].update(
        {k.replace("-", "_"): C._version(k) for k in ("sae-lens", "transformer-lens", "datasets", "pyarrow")}
    )
    meta["machine"]["torch_threads"] = torch.get_num_threads()
    datasets.disable_progress_bars()

    model = build_model()
    tokens = make_tokens(n_seq)
    n_tokens = tokens.size
    d = model.cfg.d_model
    warm_tokens = tokens[:WARMUP_SEQUENCES]
    print(
        f"model: {MODEL_CFG['n_layers']} layers, d_model {d}, d_vocab {MODEL_CFG['d_vocab']}, fp32, random init; "
        f"hook {HOOK}; {n_seq} x {CONTEXT} = {n_tokens:,} tokens; batch {BATCH_SEQS}; "
        f"torch threads {torch.get_num_threads()}; {repeats} timed runs each",
        flush=True,
    )

    def as_dataset(t: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"input_ids": t.tolist()},
            features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))}),
        )

    ds_full, ds_warm = as_dataset(tokens), as_dataset(warm_tokens)
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="actstore-bench-capture-"))
    scratch.mkdir(parents=True, exist_ok=True)
    outs = {v: scratch / v for v in VARIANTS if v != "forward_only"}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    try:

        def fresh(path: Path):
            shutil.rmtree(path, ignore_errors=True)
            os.sync()  # no variant pays for another's writeback

        def call(name: str, t: np.ndarray, ds: datasets.Dataset):
            if name == "saelens_fp32":
                return run_saelens(model, t, ds, outs[name])
            if name.startswith("actstore_"):
                return run_actstore(model, t, outs[name], name.split("_")[1])
            return run_forward(model, t)

        # Warm-up: every code path once on a small budget (untimed).
        for name in VARIANTS:
            if name in outs:
                fresh(outs[name])
            call(name, warm_tokens, ds_warm)

        variants = {name: (lambda name=name: runs[name].append(call(name, tokens, ds_full))) for name in VARIANTS}
        setup = {name: (lambda name=name: fresh(outs[name])) for name in outs}
        setup["forward_only"] = os.sync
        C.interleaved(variants, repeats, setup=setup, warmup=0)

        # Sizes and checks on the last run of each (their outputs are still on disk).
        ref = reference_acts(model, tokens)
        checks = {"saelens_fp32": check_saelens(outs["saelens_fp32"], tokens, ref)}
        for dt in ("fp32", "bf16"):
            checks[f"actstore_{dt}"] = check_actstore(outs[f"actstore_{dt}"], tokens, ref, dt)
        on_disk = {name: dir_bytes(p) for name, p in outs.items()}
        files = {name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()) for name, p in outs.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    stored_dtype = {
        "saelens_fp32": checks["saelens_fp32"]["stored_dtype"],
        "actstore_fp32": "fp32",
        "actstore_bf16": "bf16",
        "forward_only": None,
    }
    figures = {}
    for name in VARIANTS:
        walls = [r["wall_s"] for r in runs[name]]
        best = min(range(len(walls)), key=walls.__getitem__)
        f = {
            "tokens_per_s": n_tokens / walls[best],
            "wall_s_best": walls[best],
            "wall_s_all": walls,
            "tokens_per_s_median": n_tokens / statistics.median(walls),
            "tokens_per_s_all": [n_tokens / w for w in walls],
            "stored_dtype": stored_dtype[name],
        }
        if name in outs:
            tok_stored = checks[name]["tokens_stored"]
            f.update(
                {
                    "bytes_on_disk": on_disk[name],
                    "tokens_stored": tok_stored,
                    "bytes_per_token": on_disk[name] / tok_stored,
                    "activation_bytes_per_token_uncompressed": d * (2 if name == "actstore_bf16" else 4),
                }
            )
        if name == "saelens_fp32":
            f.update(
                {"runner_setup_s_best_run": runs[name][best]["setup_s"], "run_s_best_run": runs[name][best]["run_s"]}
            )
        if name.startswith("actstore_"):
            sm = runs[name][best]["summary"]
            f.update(
                {
                    "actstore_reported_tokens_per_s_best_run": sm["tokens_per_s"],
                    "actstore_reported_capture_s_best_run": sm["capture_seconds"],
                    "actstore_reported_forward_s_best_run": sm["forward_seconds"],
                    "actstore_reported_store_wait_s_best_run": sm["store_wait_seconds"],
                    "actstore_reported_bytes_written_best_run": sm["bytes_written"],
                    "summaries_all": [r["summary"] for r in runs[name]],
                }
            )
        figures[name] = f

    sl = figures["saelens_fp32"]
    ratios = {}
    for dt in ("fp32", "bf16"):
        a = figures[f"actstore_{dt}"]
        ratios[f"actstore_{dt}_vs_saelens"] = {
            "tokens_per_s_actstore_over_saelens": a["tokens_per_s"] / sl["tokens_per_s"],
            "bytes_per_token_saelens_over_actstore": sl["bytes_per_token"] / a["bytes_per_token"],
        }
    for name in VARIANTS[:-1]:
        ratios[f"{name}_tokens_per_s_over_forward_only"] = (
            figures[name]["tokens_per_s"] / figures["forward_only"]["tokens_per_s"]
        )

    doc = {
        "benchmark": "capture_saelens",
        "meta": meta,
        "config": {
            "quick": args.quick,
            "repeats": repeats,
            "statistic": "best (shortest) of the timed runs; runs interleaved "
            "round-robin, order rotating each round, after an untimed warm-up",
            "warmup_tokens": int(warm_tokens.size),
            "tokens": n_tokens,
            "sequences": n_seq,
            "context": CONTEXT,
            "batch_size_sequences": BATCH_SEQS,
            "hook": HOOK,
            "d": d,
            "stop_at_layer": STOP_AT_LAYER,
            "model": {
                "class": "transformer_lens.HookedTransformer",
                "weights": f"random init, seed {SEED}",
                "dtype": "fp32",
                **{k: v for k, v in MODEL_CFG.items() if k != "device"},
            },
            "tokens_source": f"uniform random ids in [0, {MODEL_CFG['d_vocab']}), numpy default_rng({SEED}), int64",
            "saelens": {
                "runner": "sae_lens.CacheActivationsRunner(cfg, override_dataset=datasets.Dataset({'input_ids': ...}))",
                "load_model": "sae_lens.cache_activations_runner.load_model patched to return the shared model",
                "dtype": "float32",
                "shuffle": False,
                "prepend_bos": False,
                "model_batch_size": BATCH_SEQS,
                "training_tokens": n_tokens,
                "buffer": "one buffer of exactly training_tokens "
                "(buffer_size_gb = tokens x d x 4 B / 1e9, plus half a token)",
                "writes": "datasets Arrow files: activations [context, d] float32 + token_ids int32 per sequence; "
                "no fsync",
            },
            "actstore": {
                "call": "actstore.capture(model, hook, int64 array [sequences, 128], out, context=128, "
                "batch_size=32, dtype=..., progress=False, bos='none', eos='none')",
                "codec": "zstd (default)",
                "durable": "True (default: fsync on commit)",
            },
            "forward_only": f"model(tokens, stop_at_layer={STOP_AT_LAYER}) under torch.inference_mode, batches "
            f"of {BATCH_SEQS}",
            "output_dir": "a temporary directory on the same file system as /tmp; emptied and os.sync()'ed "
            "before each run",
            "files_written_last_run": files,
        },
        "units": {
            "tokens_per_s": "tokens captured (or run, for forward_only) per second of wall time of the whole call, "
            "best run",
            "tokens_per_s_median": "the same for the median run",
            "*_s*": "seconds",
            "bytes_per_token": "bytes of all files in the output directory / tokens stored",
            "activation_bytes_per_token_uncompressed": "d x itemsize of the stored dtype",
            "tokens_per_s_actstore_over_saelens": "throughput ratio (higher is better for actstore)",
            "bytes_per_token_saelens_over_actstore": "size ratio (higher is better for actstore)",
            "*_tokens_per_s_over_forward_only": "fraction of the forward-only throughput",
        },
        "figures": figures,
        "ratios": ratios,
        "checks": checks,
    }
    path = C.write_result("capture_saelens_quick" if args.quick else "capture_saelens", doc)

    print()
    print(f"{n_tokens:,} tokens, {HOOK}, d {d}; best of {repeats}; wall time of the whole call")
    tab = []
    for name in VARIANTS:
        f = figures[name]
        tab.append(
            [
                name,
                f["stored_dtype"] or "-",
                f"{f['tokens_per_s']:,.0f}",
                f"{f['wall_s_best']:.2f}",
                f"{f['bytes_per_token']:.1f}" if "bytes_per_token" in f else "-",
                f"{ratios[name + '_tokens_per_s_over_forward_only']:.2f}" if name != "forward_only" else "1.00",
            ]
        )
    print(C.fmt_table(tab, ["variant", "stored", "tokens/s", "wall s", "bytes/token", "x forward"]))
    print()
    for dt in ("fp32", "bf16"):
        r = ratios[f"actstore_{dt}_vs_saelens"]
        print(
            f"actstore {dt} vs SAELens: tokens/s x{r['tokens_per_s_actstore_over_saelens']:.2f}, "
            f"bytes/token SAELens/actstore x{r['bytes_per_token_saelens_over_actstore']:.2f}"
        )
    ok = []
    for name, c in checks.items():
        cmp = next(v for k, v in c.items() if k.endswith("_vs_run_with_cache"))
        ok.append(
            f"{name}: tokens {c['tokens_stored']:,}/{c['tokens_expected']:,}, ids "
            f"{'match' if c['token_ids_match_input'] else 'DIFFER'}, first rows "
            f"{'allclose' if cmp['allclose'] else 'NOT CLOSE'} (max abs err {cmp['max_abs_err']:.2g})"
        )
    print("checks: " + "; ".join(ok))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
