"""All-layer capture for cross-layer transcoders (issue 23): SmolLM2-135M-Instruct's 30 MLP
inputs and 30 MLP outputs (60 hooks, d = 576) in one forward, against the forward alone;
the bytes per token in every storage dtype; the memory at two run lengths; CLT-Forge's
quoted figures beside ours, per stored value.

Model: ``python:actstore.models.smollm2:load_smollm2`` (fp32 on a CPU, as ``make demo``).
Text: Python's ``pydoc_data.topics``, tokenized once; windows of ``--context`` tokens (BOS
first, EOS between documents, as the tokenizer asks), ``--batch-size`` windows per forward,
BOS and special rows not stored (``drop="bos,special"``, as the demo), ``--tokens`` stored
tokens per run. Hooks: ``model.layers.*.mlp:input,model.layers.*.mlp``.

Timed variants, interleaved round-robin (``_common.interleaved``: ``--repeats`` rounds after
one warm-up, the order rotating), each a full pass over the same batches:

- ``forward_full``: ``model(input_ids, attention_mask)``, every layer and the LM head;
- ``forward_to_L29``: the same, ended after layer 29's MLP by one raising forward hook:
  where an all-layer capture stops, so the baseline (the final norm and the 49152-wide LM
  head never run in either);
- ``capture_<dtype>``: ``actstore.capture`` of the 60 hooks, the whole call (setup, the
  probe forwards, the store's creation and its durable commit included), for bf16 (the
  default; lossless for a bf16 model) and the lossy fp8 and int8 (per-row absmax scale).

Reported: seconds of every round (median, min, max, spread), stored tokens/s (at the median
and at the best round), each capture's time over ``forward_to_L29``'s (of the medians, of
the minima, the median of per-round ratios; the same for the capture loop alone, the
summary's ``capture_seconds`` without the setup, and for the process CPU seconds of all
threads, with ``OMP_WAIT_POLICY=PASSIVE`` so that they count work, not spinning: the figure
that another job on the machine moves least). Rounds are short (``--tokens`` 1024: 3
forwards of 4 x 128) and many, so the two sides of a per-round ratio run seconds apart:
another job on the 2 shared cores comes and goes in bursts, and moved single runs by 3-8x
while this was written.

Bytes (from the store's files on disk, the last round's store of each dtype; fp16 and fp32
are captured once more, untimed): activation bytes per token (every hook's ``acts`` and
``scales`` arrays), per hook (median, min, max; MLP inputs and outputs apart), the token
columns, the metadata (zarr.json and commit records: fixed, not per token), the ratio
against raw bf16 (2 x 30 x 576 x 2 = 69,120 B/token) and bytes per stored value (34,560
values a token). Error of each dtype against the fp32 store, per hook:
``||x_hat - x|| / ||x||`` and the noise as a fraction of the hook's (centred) variance.

CLT-Forge (``src/clt/training/compressed_activations_store.py`` at 52d380e, a docstring for
GPT-2 small, 12 layers x 768, 2 x 12 x 768 = 18,432 values a token: "float16: ~37 KB/token",
"int8 + zstd: ~5-8 KB/token"; estimates, not measurements there) is quoted as given, per
value; and its scheme is measured on our rows: int8 with one absmax scale per hook over the
run (its ``per_layer_scale``), zstd level 3 (its default) on the codes.

Memory: peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each run) over
the RSS at the reset, per timed run; then bf16 runs of ``--flat-tokens`` and 3x as many,
twice each, with one-chunk shards (``chunks_per_shard=1``: 2048 rows, so both runs write
whole shards, 1 and 3 at the default 2048 tokens) to show that the peak does not grow with
the tokens, with the RSS sampled every 20 ms and its peak in each third of the run (memory
that grew with the tokens would climb from third to third); and the bound, computed from
the schema: one shard of every array (the default layout: 64 chunks of ~2 MiB each, what a
run reaches after one shard of tokens) plus ``slots`` + 1 batches of fp32 activations.

    python benchmarks/bench_all_layer_capture.py            # ~10 min on 2 shared cores
    python benchmarks/bench_all_layer_capture.py --quick    # smoke run, writes *_quick.json

Writes ``benchmarks/results/all_layer_capture_cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before torch loads OpenMP: waiting threads sleep instead of spinning, so the process's CPU
# seconds count work, not waits. Another job on the 2 shared cores stretched 1024 tokens of
# forward from ~2.5 s to 13-33 s by the wall clock, and its CPU seconds with it (spinning);
# with PASSIVE six runs under load took 4.5-5.1 CPU seconds.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from actstore.capture.plan import default_policy, iter_batches, iter_windows  # noqa: E402
from actstore.demo import SMOLLM2_MODEL, english_documents  # noqa: E402
from actstore.models.smollm2 import D_MODEL, N_LAYERS, load_smollm2  # noqa: E402
from actstore.store.format import FLAG_PAD, make_schema, parse_flags  # noqa: E402

HOOKS = "model.layers.*.mlp:input,model.layers.*.mlp"
DROP = "bos,special"
TIMED = ("bf16", "fp8", "int8", "q16")
UNTIMED = ("fp16", "fp32")  # bytes and error only
RAW_BF16 = 2 * N_LAYERS * D_MODEL * 2  # 69,120 B/token
VALUES = 2 * N_LAYERS * D_MODEL  # 34,560 values a token
# CLT-Forge's docstring (12 layers x 768, "KB" = 1000 B: 18,432 fp16 values = 36,864 B = "~37 KB").
CLT_FORGE = {
    "source": "LLM-Interp/CLT-Forge src/clt/training/compressed_activations_store.py (commit 52d380e), docstring",
    "model": "GPT-2 small, 12 layers x 768",
    "values_per_token": 2 * 12 * 768,
    "quoted_KB_per_token": {"fp16": 37, "int8": 18.5, "int8_zstd": [5, 8], "int4_zstd": [3, 5]},
    "scheme": "int8 symmetric, one absmax scale per layer per file (per_layer_scale), zstd level 3",
}


# -- memory --------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> int:
    """Reset the kernel's peak RSS to the current RSS; returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_bytes()


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


class RssSampler:
    """Samples the RSS every ``every`` seconds on a thread, for :meth:`thirds`: the peak in
    each third of the run. A writer that kept what it wrote would climb from third to third;
    the peak of the whole run alone cannot tell that from a longer run meeting a higher
    transient (the maximum of more samples)."""

    def __init__(self, every: float = 0.02):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def thirds(self, start: int) -> list[int]:
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        edges = [t0 + (t1 - t0) * k / 3 for k in range(4)]
        return [
            max((r for t, r in self.samples if edges[k] <= t <= edges[k + 1]), default=start) - start for k in range(3)
        ]


def memory_bound(dtype: str, batch_rows: int, slots: int, chunks_per_shard: int | None = None) -> dict:
    """What the pipeline holds at most, in bytes: one shard of every array (the writer's buffer)
    and ``slots`` + 1 batches of fp32 activations (the one being computed, the ring's)."""
    hooks = {f"model.layers.{i}.mlp{s}": D_MODEL for i in range(N_LAYERS) for s in (":input", "")}
    kw = {} if chunks_per_shard is None else {"chunks_per_shard": chunks_per_shard}
    sch = make_schema(hooks, dtype, **kw)
    shard = sch.shard_rows * sum(np.dtype(a.dtype).itemsize * int(np.prod(a.row_shape)) for a in sch.arrays())
    batches = (slots + 1) * batch_rows * VALUES * 4
    return {
        "shard_rows": sch.shard_rows,
        "one_shard_all_arrays_bytes": shard,
        "batches_bytes": batches,
        "bound_bytes": shard + batches,
    }


# -- bytes on disk ---------------------------------------------------------------------------


def store_bytes(path: Path) -> dict:
    """Bytes of the store's files: per hook (acts + scales), token columns, metadata."""
    seg = path / "segments"
    per_hook: dict[str, int] = {}
    columns = meta = 0
    for f in path.rglob("*"):
        if not f.is_file():
            continue
        n = f.stat().st_size
        rel = f.relative_to(seg).parts if seg in f.parents else ()
        if len(rel) > 3 and rel[1] in ("acts", "scales") and rel[3] == "c":
            per_hook[rel[2]] = per_hook.get(rel[2], 0) + n
        elif len(rel) > 3 and rel[1] == "tokens" and rel[3] == "c":
            columns += n
        else:
            meta += n
    return {"per_hook": per_hook, "columns": columns, "metadata": meta}


def bytes_summary(b: dict, rows: int) -> dict:
    acts = sum(b["per_hook"].values())
    ins = [v / rows for k, v in b["per_hook"].items() if k.endswith(":input")]
    outs = [v / rows for k, v in b["per_hook"].items() if not k.endswith(":input")]
    allh = ins + outs
    return {
        "rows": rows,
        "hooks": len(b["per_hook"]),
        "acts_bytes_per_token": acts / rows,
        "total_bytes_per_token": (acts + b["columns"] + b["metadata"]) / rows,
        "columns_bytes_per_token": b["columns"] / rows,
        "metadata_bytes": b["metadata"],
        "acts_bytes_per_value": acts / rows / VALUES,
        "ratio_vs_raw_bf16": RAW_BF16 / (acts / rows),
        "per_hook_bytes_per_token": {
            "median": statistics.median(allh),
            "min": min(allh),
            "max": max(allh),
            "mlp_input_median": statistics.median(ins),
            "mlp_output_median": statistics.median(outs),
        },
    }


# -- error against fp32 ------------------------------------------------------------------------


def errors(ref: actstore.Store, other: actstore.Store) -> dict:
    """Per hook: relative L2 error and noise / centred variance of ``other`` against ``ref``."""
    rel, fvu = {}, {}
    for h in ref.hooks:
        x = ref.read(h).double()
        e = other.read(h).double() - x
        rel[h] = float(e.norm() / x.norm())
        fvu[h] = float((e**2).sum() / ((x - x.mean(0)) ** 2).sum())
    return _spread(rel, fvu)


def _spread(rel: dict, fvu: dict) -> dict:
    worst = max(rel, key=rel.get)
    return {
        "rel_l2_median": statistics.median(rel.values()),
        "rel_l2_max": rel[worst],
        "rel_l2_worst_hook": worst,
        "noise_over_variance_median": statistics.median(fvu.values()),
        "noise_over_variance_max": max(fvu.values()),
    }


def clt_forge_scheme(ref: actstore.Store) -> dict:
    """CLT-Forge's int8 (one absmax scale per hook over the run) + zstd level 3, on our rows."""
    from numcodecs import Zstd

    z = Zstd(level=3)
    nbytes, rel, fvu, zero = 0, {}, {}, {}
    for h in ref.hooks:
        x = ref.read(h).double()
        scale = float(x.abs().max()) / 127.0
        q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
        nbytes += len(z.encode(np.ascontiguousarray(q.numpy())))
        e = q.double() * scale - x
        rel[h] = float(e.norm() / x.norm())
        fvu[h] = float((e**2).sum() / ((x - x.mean(0)) ** 2).sum())
        zero[h] = float((q == 0).double().mean())  # one outlier sets the scale: most codes round to 0
    rows = ref.rows
    return {
        "acts_bytes_per_token": nbytes / rows,
        "acts_bytes_per_value": nbytes / rows / VALUES,
        "ratio_vs_raw_bf16": RAW_BF16 / (nbytes / rows),
        **_spread(rel, fvu),
        "zero_code_fraction_median": statistics.median(zero.values()),
        "zero_code_fraction_max": max(zero.values()),
    }


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024, help="stored tokens per timed run")
    ap.add_argument("--flat-tokens", type=int, default=2048, help="the memory runs: this many tokens and 3x")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4, help="windows per forward")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--dir", default=None, help="scratch folder for the stores (default: a new temporary one)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 tokens, 1 round")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    meta = C.metadata()  # before anything is measured
    meta["torch_threads"] = torch.get_num_threads()
    meta["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    if a.quick:
        a.tokens, a.repeats = 512, 1
    scratch = Path(a.dir or tempfile.mkdtemp(prefix="actstore-bench-all-layer-"))
    scratch.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, tok = load_smollm2()
    tok.model_max_length = 1 << 30  # whole documents are tokenized once; windows cut them
    docs = [tok(text, add_special_tokens=False)["input_ids"] for _, text in english_documents()]
    load_s = time.perf_counter() - t0
    policy = default_policy(tok, a.context)
    drop = parse_flags(DROP)

    def batches(tokens):
        return list(iter_batches(iter_windows(docs, policy), a.batch_size, max_tokens=tokens, drop_flags=drop))

    plan = batches(a.tokens)
    stored = sum(b.n_keep for b in plan)
    windows = sum(len(b.ids) for b in plan)
    print(
        f"SmolLM2 fp32 loaded in {load_s:.1f} s; {a.tokens} stored tokens = {len(plan)} batches of "
        f"{a.batch_size}x{a.context} ({windows * a.context} positions), 60 hooks; scratch {scratch}",
        flush=True,
    )

    class _Stop(Exception):
        pass

    def forward(stop: bool):
        def run():
            def raise_(*_):
                raise _Stop

            h = model.model.layers[N_LAYERS - 1].mlp.register_forward_hook(raise_) if stop else None
            try:
                with torch.inference_mode():
                    for b in plan:
                        ids = torch.from_numpy(b.ids)
                        mask = torch.from_numpy((b.flags != FLAG_PAD).astype(np.int64))
                        try:
                            model(input_ids=ids, attention_mask=mask)
                        except _Stop:
                            pass
            finally:
                if h is not None:
                    h.remove()

        return run

    summaries: dict[str, list[dict]] = {}  # every round's capture() summary (warm-up first)
    peaks: dict[str, list[int]] = {}
    cpu: dict[str, list[float]] = {}  # process CPU seconds, all threads (warm-up first)

    def capture(dtype: str, tokens: int = a.tokens, name: str | None = None, **kw):
        name = name or f"capture_{dtype}"
        path = scratch / name

        def run():
            s = actstore.capture(
                model,
                HOOKS,
                docs,
                str(path),
                tokenizer=tok,
                tokens=tokens,
                context=a.context,
                batch_size=a.batch_size,
                drop=DROP,
                dtype=dtype,
                progress=False,
                **kw,
            )
            summaries.setdefault(name, []).append(s)

        return run, path

    variants = {"forward_full": forward(False), f"forward_to_L{N_LAYERS - 1}": forward(True)}
    paths = {}
    for dt in TIMED:
        variants[f"capture_{dt}"], paths[dt] = capture(dt)

    def with_cpu(name, fn):
        def run():
            c = time.process_time()
            fn()
            cpu.setdefault(name, []).append(time.process_time() - c)

        return run

    variants = {n: with_cpu(n, f) for n, f in variants.items()}
    base: dict[str, int] = {}

    def setup(name):
        def go():
            if name.startswith("capture_"):
                shutil.rmtree(scratch / name, ignore_errors=True)
            base[name] = reset_peak()

        return go

    def teardown(name):
        def go():
            peaks.setdefault(name, []).append(peak_bytes() - base[name])

        return go

    t_timed = time.perf_counter()
    times = C.interleaved(
        variants,
        a.repeats,
        setup={n: setup(n) for n in variants},
        teardown={n: teardown(n) for n in variants},
        warmup=1,
        on_round=lambda d, t: print(f"  round {d}/{t} done ({time.perf_counter() - t_timed:.0f} s)", flush=True),
    )
    fwd = f"forward_to_L{N_LAYERS - 1}"
    # The stores hold the tokens the forward ran on, in order: the baseline did the same work.
    want = np.concatenate([b.ids.reshape(-1)[b.keep] for b in plan])
    for dt in TIMED:
        s = actstore.open(paths[dt])
        assert s.rows == stored and len(s.hooks) == 2 * N_LAYERS
        assert np.array_equal(s.tokens()["token"].numpy(), want), dt

    res = {}
    for k, v in times.items():
        sm = C.summary(v)
        res[k] = {
            **sm,
            "tokens_per_s": stored / sm["median_s"],
            "tokens_per_s_best": stored / sm["min_s"],
            "rounds_s": v,
            "cpu_s": cpu[k][1:],  # the warm-up round dropped, as in ``v``
            "peak_rss_over_start_bytes": peaks[k][1:],
        }
        if k.startswith("capture_"):
            runs = summaries[k][1:]
            for key in ("capture_seconds", "forward_seconds", "store_wait_seconds"):
                res[k][f"{key}_rounds"] = [r[key] for r in runs]

    def per_round(a: list[float], b: list[float]) -> float:
        return float(np.median([x / y for x, y in zip(a, b)]))

    ratios = {}
    for dt in TIMED:
        c = f"capture_{dt}"
        ratios[f"{c}_over_{fwd}"] = {
            "of_medians": res[c]["median_s"] / res[fwd]["median_s"],
            "of_minima": res[c]["min_s"] / res[fwd]["min_s"],
            "median_per_round": per_round(times[c], times[fwd]),
            # the capture loop alone (capture() less its setup: probe forwards, store creation)
            "loop_median_per_round": per_round(res[c]["capture_seconds_rounds"], times[fwd]),
            "cpu_median_per_round": per_round(res[c]["cpu_s"], res[fwd]["cpu_s"]),
        }
    ratios[f"{fwd}_over_forward_full"] = {
        "of_medians": res[fwd]["median_s"] / res["forward_full"]["median_s"],
        "of_minima": res[fwd]["min_s"] / res["forward_full"]["min_s"],
        "median_per_round": per_round(times[fwd], times["forward_full"]),
    }

    # Bytes of every dtype (fp16, fp32 captured once more), then the errors against fp32.
    print("bytes: fp16 and fp32 captures (untimed) ...", flush=True)
    for dt in UNTIMED:
        run, paths[dt] = capture(dt)
        shutil.rmtree(paths[dt], ignore_errors=True)
        run()
    nbytes = {dt: bytes_summary(store_bytes(paths[dt]), stored) for dt in (*TIMED, *UNTIMED)}
    print("errors against fp32 ...", flush=True)
    ref = actstore.open(paths["fp32"])
    errs = {dt: errors(ref, actstore.open(paths[dt])) for dt in ("fp16", *TIMED)}
    clt_ours = clt_forge_scheme(ref)

    # Memory flat in tokens: one-chunk shards, so both runs write whole shards as they go.
    flat: dict[str, dict] = {}
    if not a.quick:
        # Twice each, alternating: one run's peak moves by ~100 MiB (glibc arenas, thread timing),
        # against the 135 MiB that each shard kept in memory would add.
        print("memory: bf16 with one-chunk shards at 1x and 3x the tokens, twice ...", flush=True)
        for mult in (1, 3, 1, 3):
            name = f"flat_{mult}x"
            run, path = capture("bf16", tokens=mult * a.flat_tokens, name=name, chunks_per_shard=1)
            shutil.rmtree(path, ignore_errors=True)
            start = reset_peak()
            t = time.perf_counter()
            with RssSampler() as sampler:
                run()
            f = flat.setdefault(
                name,
                {"tokens": mult * a.flat_tokens, "peak_rss_over_start_bytes": [], "thirds_bytes": [], "seconds": []},
            )
            f["peak_rss_over_start_bytes"].append(peak_bytes() - start)
            f["thirds_bytes"].append(sampler.thirds(start))
            f["seconds"].append(time.perf_counter() - t)
            f["shards_written"] = len(list((path / "segments/rank00000/acts/model.layers.0.mlp/c").iterdir()))
            shutil.rmtree(path, ignore_errors=True)
    batch_rows = a.batch_size * a.context
    bounds = {
        "default_layout": {dt: memory_bound(dt, batch_rows, 3) for dt in (*TIMED, *UNTIMED)},
        "one_chunk_shards_bf16": memory_bound("bf16", batch_rows, 3, chunks_per_shard=1),
    }
    if a.dir is None:
        shutil.rmtree(scratch, ignore_errors=True)

    # -- print ---------------------------------------------------------------------------------
    rows = []
    for k, v in res.items():
        mib = max(v["peak_rss_over_start_bytes"]) / 2**20
        rows.append([k, f"{v['median_s']:.2f}", f"{v['spread']:.2f}", f"{v['tokens_per_s']:,.0f}", f"{mib:,.0f}"])
    print(C.fmt_table(rows, ["variant", "median s", "spread", "tokens/s", "peak MiB"]))
    for k, v in ratios.items():
        extra = "".join(f"   {x} {v[x]:.3f}" for x in ("loop_median_per_round", "cpu_median_per_round") if x in v)
        head = f"medians {v['of_medians']:.3f}  minima {v['of_minima']:.3f}  per round {v['median_per_round']:.3f}"
        print(f"{k:<38} {head}{extra}")
    rows = [
        [dt, f"{b['acts_bytes_per_token']:,.0f}", f"{b['acts_bytes_per_value']:.3f}", f"{b['ratio_vs_raw_bf16']:.2f}",
         f"{b['total_bytes_per_token']:,.0f}", f"{errs[dt]['rel_l2_median']:.2e}" if dt in errs else "-"]
        for dt, b in nbytes.items()
    ]  # fmt: skip
    rows.append(
        ["CLT-Forge scheme", f"{clt_ours['acts_bytes_per_token']:,.0f}", f"{clt_ours['acts_bytes_per_value']:.3f}",
         f"{clt_ours['ratio_vs_raw_bf16']:.2f}", "-", f"{clt_ours['rel_l2_median']:.2e}"]
    )  # fmt: skip
    print(C.fmt_table(rows, ["dtype", "acts B/token", "B/value", "x raw bf16", "total B/token", "rel err (median)"]))
    for k, v in flat.items():
        mib = ", ".join(f"{x / 2**20:,.0f}" for x in v["peak_rss_over_start_bytes"])
        thirds = "; ".join(", ".join(f"{x / 2**20:,.0f}" for x in th) for th in v["thirds_bytes"])
        print(f"{k}: {v['tokens']} tokens, {v['shards_written']} shards, peak RSS + {mib} MiB; by thirds {thirds}")

    doc = {
        "meta": meta,
        "benchmark": "all_layer_capture",
        "device": "cpu",
        "model": {
            "spec": SMOLLM2_MODEL,
            "layers": N_LAYERS,
            "d_model": D_MODEL,
            "dtype": "float32",
            "hooks": HOOKS,
            "hook_count": 2 * N_LAYERS,
        },
        "settings": {
            "tokens": a.tokens,
            "stored_tokens": stored,
            "context": a.context,
            "batch_size": a.batch_size,
            "forward_positions": windows * a.context,
            "drop": DROP,
            "codec": "zstd",
            "repeats": a.repeats,
            "warmup": 1,
            "durable": True,
            "data": "pydoc_data.topics (english_documents), tokenized once, in the demo's order",
        },
        "units": {
            "seconds": "s, wall clock, one full pass over the batches",
            "tokens_per_s": "stored tokens (BOS/EOS rows run but are not stored) / median seconds",
            "bytes": "bytes on disk (1 KB = 1000 B in the quoted figures)",
            "peak_rss_over_start_bytes": "VmHWM in the run minus the RSS at its start (clear_refs), per round",
            "thirds_bytes": "the highest RSS sample (every 20 ms) in each third of the run's time, minus the start",
            "rel_l2": "||x_hat - x|| / ||x|| per hook, against the fp32 store",
            "noise_over_variance": "sum (x_hat - x)^2 / sum (x - mean)^2 per hook",
        },
        "raw_bf16_bytes_per_token": RAW_BF16,
        "values_per_token": VALUES,
        "load_seconds": load_s,
        "timing": res,
        "ratios": ratios,
        "bytes": nbytes,
        "error_vs_fp32": errs,
        "clt_forge": {
            **CLT_FORGE,
            "quoted_bytes_per_value": {
                "fp16": 37e3 / CLT_FORGE["values_per_token"],
                "int8_zstd": [5e3 / CLT_FORGE["values_per_token"], 8e3 / CLT_FORGE["values_per_token"]],
            },
            "quoted_scaled_to_smollm2_bytes_per_token": {
                "fp16": 37e3 * VALUES / CLT_FORGE["values_per_token"],
                "int8_zstd": [x * VALUES / CLT_FORGE["values_per_token"] for x in (5e3, 8e3)],
            },
            "their_scheme_measured_on_our_rows": clt_ours,
        },
        "memory": {"flat_in_tokens": flat, "bounds": bounds, "slots": 3},
        "wall_seconds": time.perf_counter() - t0,
    }
    if not a.no_write:
        path = C.write_result("all_layer_capture_cpu" + ("_quick" if a.quick else ""), doc)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
