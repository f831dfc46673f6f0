"""Feature dashboards: actstore.analysis.run against SAEDashboard's SaeVisRunner, on the CPU.

    python benchmarks/bench_saedashboard.py [--tokens 4096,32768,98304] [--latents 128]
        [--repeats 5] [--sdv /tmp/sdv/bin/python] [--dir DIR] [--quick] [--tools T,...] [--no-write]

SAEDashboard (PyPI ``sae-dashboard`` 0.8.0) cannot be installed beside the pinned torch
2.13.0+cpu (it pulls torch 2.14.1 with CUDA and numpy 1.26), but it imports and runs beside
it when installed without its dependencies into a venv that sees the system packages::

    python -m venv --system-site-packages /tmp/sdv
    /tmp/sdv/bin/pip install --no-deps sae-dashboard==0.8.0 eindex-callum dataclasses-json \\
        marshmallow typing-inspect mypy-extensions matplotlib pillow cycler kiwisolver \\
        fonttools contourpy pyparsing

So this is the real SaeVisRunner, not a reimplementation; it runs in a subprocess of that
interpreter (``--sdv``), actstore in a subprocess of this one.

The setup (built once, untimed, in ``--dir``):

- model: a TransformerLens ``HookedTransformer`` from a config (4 layers, d_model 256, 4
  heads, vocabulary 49152), random weights from a fixed seed. Why not SmolLM2-135M: it is an
  HF Llama that TransformerLens converts only through ``from_pretrained`` with a hub name
  (config fetched online); converting by hand is possible but its 30 layers x d 576 forward
  would dominate both tools' time on 2 shared cores, and SAEDashboard reruns the model for
  every batch of 128 latents, so the comparison would mostly time the model. The activations
  are a real forward pass of real text all the same;
- tokens: Python's ``pydoc_data.topics`` (``actstore.demo.english_documents``) tokenized with
  SmolLM2's tokenizer (offline, ``actstore.models.smollm2``), documents joined by EOS and cut
  into ``[prompts, 128]`` windows;
- the model's weights, saved once, loaded by every child (SAEDashboard's and actstore's)
  before its timer starts;
- SAE: an actstore ``TopKSAE`` (d 256, 2048 latents, k 32, random init, unit-norm decoder
  rows, so SAEDashboard's ``fold_W_dec_norm`` would change nothing; SAELens 6 refuses that
  call for TopK SAEs, so the child checks the norms and skips it), written with
  ``actstore.sae.to_saelens`` and loaded by ``sae_lens.SAE.load_from_disk`` for SAEDashboard.

What is timed (wall clock from tokens to dashboard data; model, SAE and token loading and
imports are not), like with like: both sides run the model's forward over the tokens and
compute the logit tables:

- SAEDashboard: ``SaeVisRunner(SaeVisConfig(hook_point, features=range(latents),
  minibatch_size_features=128)).run(sae, model, tokens[:prompts])`` with its defaults
  otherwise (64 prompts per forward, no disk cache): per batch of 128 latents a forward
  pass over all the tokens, a dense ``[prompts, 128, 128]`` activation buffer, stats and
  quantiles, histograms, logit tables, top / quantile-group example sequences;
- actstore: the capture, then the analysis. ``actstore.capture(model, hook, tokens[:prompts],
  store, batch_size=64, dtype="fp32", bos="none", eos="none")`` (the forward, stopped after
  the hooked block, into a fresh store, durable as ``capture`` writes by default; store row
  ``p*128 + s`` is prompt p, position s), then ``actstore.analysis.run(store, sae, ["stats",
  "top", "bins", "contexts", "top_tokens", "lens"], model=model)``: one streaming pass over
  the stored rows, every latent encoded once per block, and the logit lens of the decoder
  directions through the model's unembedding (SAEDashboard's logit tables; top and bottom
  10). Twice: ``actstore_subset`` with ``latents=range(--latents)``, the same latents as
  SAEDashboard (the issue's comparison: ``speedup_median``, ``speedup_min``), and
  ``actstore`` over all 2048 latents (``speedup_all_latents_*``: 16x the work at the
  default 128). The results/saedashboard_cpu.json of the earlier script timed actstore's
  analysis of a store captured untimed, without the lens, over 2 repeats: superseded.

Peak memory, per child: the RSS just before the call (imports and inputs loaded), then the
peak RSS during the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``
just before the call, so the imports' transient peak is not counted); growth = peak -
before. The process's whole-life peak (``ru_maxrss``) is recorded too. Each tool runs at
several token counts to show how its memory grows with rows.

Check, before timing, at the smallest token count: for the first 16 latents both tools' max
activation (SAEDashboard's ``feature_stats.max`` and the first example of its top group;
actstore's ``latents/max`` and ``top``) must agree to 1e-4 relative, and the top example's
(prompt, position) must be the same row.

Repeats (at least 5; ``--quick`` may take fewer) go round-robin per token count (the order
rotates), each in a fresh subprocess and a fresh store and output folder; every figure is
reported as min, median and max of the repeats, and the speedups both of the medians and of
the minima (the least-loaded run of each). ``--tools`` runs a subset (without
``saedashboard`` there is no check and no speedup: a smoke run of actstore's side where
SAEDashboard is not installed). Results: benchmarks/results/saedashboard_cpu.json
(saedashboard_cpu_quick.json with --quick; ``--no-write``: none).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # run as the benchmark, not when a test imports it (the env would leak)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

HOOK = "blocks.1.hook_resid_post"
CONTEXT = 128
SEED = 0
MODEL_CFG = dict(
    n_layers=4,
    d_model=256,
    n_heads=4,
    d_head=64,
    d_mlp=1024,
    n_ctx=CONTEXT,
    d_vocab=49152,  # SmolLM2's tokenizer
    act_fn="gelu",
    normalization_type="LN",
    seed=SEED,
    device="cpu",
)
SAE_M, SAE_K = 2048, 32
JOBS = ["stats", "top", "bins", "contexts", "top_tokens", "lens"]  # lens: SAEDashboard's logit tables
CAPTURE_BATCH = 64  # prompts per forward: SaeVisConfig's minibatch_size_tokens default
MIN_REPEATS = 5
CHECK_LATENTS = 16
RTOL = 1e-4
TOP_ATOL = 1e-4  # SAEDashboard rounds the activations of its example sequences to 4 decimals
BUFFER = (5, 5)  # SAEDashboard's default context around an example (SeqMultiGroupConfig.buffer)


def peak_rss_mb() -> float:
    """The process's peak RSS since it started (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def start_memory() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM; ``/proc/self/clear_refs`` 5, Linux >= 4.0) so
    that the peak read after the call is the call's own, not the imports'; return the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def memory(rss_before: float) -> dict:
    """MB: RSS before the call, the peak during it (VmHWM), their difference, the process's peak."""
    peak = _status_mb("VmHWM")
    return {
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak,
        "rss_growth_mb": peak - rss_before,
        "process_peak_mb": peak_rss_mb(),
    }


def build_model():
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**MODEL_CFG)).eval()


# --- setup (parent, once) ---------------------------------------------------------------


def make_tokens(max_prompts: int):
    import numpy as np
    from transformers import AutoTokenizer

    from actstore.demo import english_documents
    from actstore.models.smollm2 import smollm2_path

    tok = AutoTokenizer.from_pretrained(str(smollm2_path()))
    tok.model_max_length = 1 << 30
    ids: list[int] = []
    for _, text in english_documents():
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id)
        if len(ids) >= max_prompts * CONTEXT:
            break
    n = min(len(ids) // CONTEXT, max_prompts)
    if n < max_prompts:
        raise SystemExit(f"pydoc_data.topics gives only {n} windows of {CONTEXT} tokens; ask for fewer tokens")
    return np.asarray(ids[: n * CONTEXT], dtype=np.int64).reshape(n, CONTEXT)


def prepare(work: Path, max_tokens: int) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from actstore.sae import SAEConfig, TopKSAE, save, to_saelens

    work.mkdir(parents=True, exist_ok=True)
    done = work / "inputs.json"
    want = {"max_tokens": max_tokens, "model": MODEL_CFG, "sae": [SAE_M, SAE_K], "hook": HOOK, "inputs": 2}
    if done.exists() and json.loads(done.read_text()) == want:
        return want
    for p in ("store", "sae_saelens", "sae_actstore"):
        shutil.rmtree(work / p, ignore_errors=True)
    tokens = make_tokens(max_tokens // CONTEXT)
    np.save(work / "tokens.npy", tokens)
    model = build_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "model.safetensors"))
    torch.manual_seed(SEED)
    sae = TopKSAE(SAEConfig(arch="topk", d=MODEL_CFG["d_model"], m=SAE_M, k=SAE_K, hook=HOOK))
    save(sae, work / "sae_actstore")
    to_saelens(sae, work / "sae_saelens")
    done.write_text(json.dumps(want))
    return want


# --- children ---------------------------------------------------------------------------


def child_sdash(work: Path, n_tokens: int, latents: int, out: Path) -> None:
    import numpy as np
    import torch
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE
    from safetensors.torch import load_file

    torch.set_grad_enabled(False)
    model = build_model()
    model.load_state_dict(load_file(str(work / "model.safetensors")))
    sae = SAE.load_from_disk(str(work / "sae_saelens"), device="cpu")
    # SaeVisRunner.run calls fold_W_dec_norm, which SAELens 6 refuses for a TopK SAE
    # (folding can change which k win). Our decoder rows are unit-norm, so folding is the
    # identity: checked here, then the call is skipped.
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), "decoder rows are not unit-norm"
    sae.fold_W_dec_norm = lambda: None
    tokens = torch.from_numpy(np.load(work / "tokens.npy")[: n_tokens // CONTEXT])
    cfg = SaeVisConfig(hook_point=HOOK, features=list(range(latents)), minibatch_size_features=128, verbose=False)
    import gc

    gc.collect()
    rss0 = start_memory()
    t0 = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    wall = time.perf_counter() - t0
    mem = memory(rss0)
    check = []
    for f in range(min(CHECK_LATENTS, latents)):
        top = data.feature_data_dict[f].sequence_data.seq_group_data[0].seq_data
        # A dead latent still gets 20 "top" examples, all 0: count it as having none, as actstore does.
        first = top[0] if top and max(top[0].feat_acts) > 0 else None
        check.append(
            {
                "latent": f,
                "max": float(data.feature_stats.max[f]),
                "frac_nonzero": float(data.feature_stats.frac_nonzero[f]),
                "top_value": max(first.feat_acts) if first else None,
                "top_row": first.original_index * CONTEXT + first.qualifying_token_index if first else None,
            }
        )
    out.write_text(json.dumps({"wall_s": wall, **mem, "check": check}))


def child_actstore(work: Path, n_tokens: int, latents: int, out: Path, subset: bool = False) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    import actstore
    from actstore import analysis
    from actstore.sae import load

    torch.set_grad_enabled(False)
    model = build_model()
    model.load_state_dict(load_file(str(work / "model.safetensors")))
    sae = load(work / "sae_actstore")
    tokens = np.load(work / "tokens.npy")[: n_tokens // CONTEXT]
    store_path = work / f"store_{os.getpid()}"
    dest = work / f"analysis_{os.getpid()}"
    for p in (store_path, dest):
        shutil.rmtree(p, ignore_errors=True)
    import gc

    gc.collect()
    rss0 = start_memory()
    t0 = time.perf_counter()
    # The forward into a store (as SAEDashboard's time holds its forwards), then the one pass.
    actstore.capture(
        model,
        HOOK,
        tokens,
        str(store_path),
        context=CONTEXT,
        batch_size=CAPTURE_BATCH,
        dtype="fp32",
        bos="none",
        eos="none",
        progress=False,
    )
    t_capture = time.perf_counter() - t0
    store = actstore.open(str(store_path))
    analysis.run(store, sae, JOBS, dest, model=model, latents=range(latents) if subset else None)
    wall = time.perf_counter() - t0
    mem = memory(rss0)
    store.close()
    res = analysis.open(dest)
    check = []
    for f in range(min(CHECK_LATENTS, latents)):
        v = res.latent(f)
        st, top = v.stats, v.top
        # SAEDashboard picks its examples only at positions BUFFER[0] + 1 .. CONTEXT - BUFFER[1] - 1
        # (it shows a window of context around each); compare with actstore's best such example.
        inner = [(v_, r) for v_, r in top if BUFFER[0] + 1 <= r % CONTEXT < CONTEXT - BUFFER[1]]
        check.append(
            {
                "latent": f,
                "max": st["max"],
                "frac_nonzero": st["density"],
                "top_value": inner[0][0] if inner else None,
                "top_row": inner[0][1] if inner else None,
                "top_examples": len(top),
            }
        )
    lens_latents = int((res.array("lens/top_ids")[:, 0] >= 0).sum()) if "lens/top_ids" in res else 0
    for p in (store_path, dest):
        shutil.rmtree(p, ignore_errors=True)
    out.write_text(
        json.dumps({"wall_s": wall, "capture_s": t_capture, "lens_latents": lens_latents, **mem, "check": check})
    )


RUN_KEYS = ("wall_s", "rss_before_mb", "rss_peak_mb", "rss_growth_mb", "process_peak_mb", "process_s")
CHILDREN = {
    "saedashboard": child_sdash,
    "actstore_subset": lambda *a: child_actstore(*a, subset=True),  # the same latents as SAEDashboard
    "actstore": child_actstore,  # every latent of the SAE
}


def spawn(tool: str, python: str, work: Path, n_tokens: int, latents: int) -> dict:
    out = work / f"result_{tool}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [python, __file__, "--child", tool, "--dir", str(work), "--n", str(n_tokens), "--latents", str(latents)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{tool} child failed (rc {p.returncode}):\n{p.stderr[-4000:]}")
    doc = json.loads(out.read_text())
    doc["process_s"] = time.perf_counter() - t0
    return doc


def check_same(a: list[dict], b: list[dict]) -> dict:
    bad = []
    for x, y in zip(a, b):
        for key, atol in (("max", 0.0), ("top_value", TOP_ATOL)):
            if x[key] is None or y[key] is None:
                if x[key] != y[key]:
                    bad.append((x["latent"], key, x[key], y[key]))
            elif abs(x[key] - y[key]) > atol + RTOL * max(abs(x[key]), abs(y[key]), 1e-6):
                bad.append((x["latent"], key, x[key], y[key]))
        if x["top_row"] != y["top_row"]:
            bad.append((x["latent"], "top_row", x["top_row"], y["top_row"]))
        if abs(x["frac_nonzero"] - y["frac_nonzero"]) > 1e-6:
            bad.append((x["latent"], "frac_nonzero", x["frac_nonzero"], y["frac_nonzero"]))
    return {"latents": len(a), "rtol": RTOL, "mismatches": bad, "ok": not bad}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tokens", default="4096,32768,98304", help="token counts, comma-separated")
    ap.add_argument("--latents", type=int, default=128, help="latents SAEDashboard computes (actstore: all 2048)")
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"at least {MIN_REPEATS} (--quick: any)")
    ap.add_argument("--sdv", default="/tmp/sdv/bin/python", help="the interpreter that has sae-dashboard")
    ap.add_argument("--dir", default="/tmp/actstore-bench-sdash")
    ap.add_argument("--quick", action="store_true", help="one small token count (4096)")
    ap.add_argument("--tools", default=",".join(CHILDREN), help=f"a subset of {','.join(CHILDREN)}")
    ap.add_argument("--no-write", action="store_true", help="print, write no result file")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.dir)
    if args.child:
        CHILDREN[args.child](work, args.n, args.latents, work / f"result_{args.child}.json")
        return 0

    import _common as C

    sizes = [4096] if args.quick else [int(x) for x in args.tokens.split(",")]
    repeats = args.repeats
    if repeats < MIN_REPEATS and not args.quick:
        ap.error(
            f"--repeats {repeats}: take at least {MIN_REPEATS} (a median of two runs 57.6 s and 15.8 s says little)"
        )
    tools = [t for t in args.tools.split(",") if t]
    if not tools or set(tools) - set(CHILDREN):
        ap.error(f"--tools {args.tools!r}: pick from {', '.join(CHILDREN)}")
    meta = C.metadata()  # before anything is measured
    t0 = time.perf_counter()
    inputs = prepare(work, max(sizes))
    print(f"setup (tokens, model weights, SAE) {time.perf_counter() - t0:.1f} s in {work}", flush=True)
    every = {"saedashboard": args.sdv, "actstore_subset": sys.executable, "actstore": sys.executable}
    pythons = {t: every[t] for t in every if t in tools}

    first = {t: spawn(t, pythons[t], work, sizes[0], args.latents) for t in pythons}
    for t in pythons:
        if t != "saedashboard" and first[t]["lens_latents"] == 0:
            raise SystemExit(f"{t}: the lens job gave no latent its logits; fix it before timing")
    if "saedashboard" in pythons and "actstore" in pythons:
        check = check_same(first["saedashboard"]["check"], first["actstore"]["check"])
        print(f"check at {sizes[0]} tokens, latents 0..{check['latents'] - 1}: {'ok' if check['ok'] else 'MISMATCH'}")
        if not check["ok"]:
            for m in check["mismatches"]:
                print("  ", m)
            return 1
    else:
        check = {"ok": None, "note": "not checked: saedashboard and actstore were not both run (--tools)"}
        print(check["note"])

    runs: dict[int, dict[str, list[dict]]] = {}
    for n in sizes:
        runs[n] = {t: [] for t in pythons}
        names = list(pythons)
        for r in range(repeats):
            for t in names[r % len(names) :] + names[: r % len(names)]:
                d = spawn(t, pythons[t], work, n, args.latents)
                runs[n][t].append(d)
                cap = f" (capture {d['capture_s']:.2f} s)" if "capture_s" in d else ""
                print(
                    f"  {n:>7} tokens  {t:<15} {d['wall_s']:8.2f} s{cap}  peak RSS {d['rss_peak_mb']:7.0f} MB",
                    flush=True,
                )

    rows, table = [], []
    for n in sizes:
        entry = {"tokens": n, "prompts": n // CONTEXT}
        for t in pythons:
            walls = [d["wall_s"] for d in runs[n][t]]
            s = C.summary(walls)
            entry[t] = {
                **s,
                "tokens_per_s": n / s["median_s"],
                **({"capture": C.summary([d["capture_s"] for d in runs[n][t]])} if t != "saedashboard" else {}),
                "rss_peak_mb": max(d["rss_peak_mb"] for d in runs[n][t]),
                "rss_before_mb": max(d["rss_before_mb"] for d in runs[n][t]),
                "rss_growth_mb": max(d["rss_growth_mb"] for d in runs[n][t]),
                "process_peak_mb": max(d["process_peak_mb"] for d in runs[n][t]),
                "runs": [{k: d[k] for k in RUN_KEYS} for d in runs[n][t]],
            }
        # Measured both ways: at equal latents (the comparison), and actstore doing
        # every latent of the SAE while SAEDashboard does its batch; of the medians and of the
        # minima (each tool's least-loaded run).
        speedups = {}
        if "saedashboard" in entry:
            sd = entry["saedashboard"]
            for t, key in (("actstore_subset", "speedup"), ("actstore", "speedup_all_latents")):
                if t in entry:
                    entry[f"{key}_median"] = sd["median_s"] / entry[t]["median_s"]
                    entry[f"{key}_min"] = sd["min_s"] / entry[t]["min_s"]
                    speedups[t] = f"{entry[f'{key}_median']:.1f}x ({entry[f'{key}_min']:.1f}x)"
        rows.append(entry)
        for t in pythons:
            e = entry[t]
            table.append(
                [
                    n,
                    t,
                    SAE_M if t == "actstore" else args.latents,
                    f"{e['min_s']:.2f} / {e['median_s']:.2f} / {e['max_s']:.2f}",
                    f"{e['tokens_per_s']:,.0f}",
                    f"{e['rss_peak_mb']:.0f}",
                    f"{e['rss_growth_mb']:.0f}",
                    speedups.get(t, ""),
                ]
            )
    header = [
        "tokens",
        "tool",
        "latents",
        "wall s min / median / max",
        "tokens/s (median)",
        "peak RSS MB",
        "growth MB",
        "speedup median (min)",
    ]
    print(C.fmt_table(table, header))
    doc = {
        "meta": meta,
        "setup": {
            "model": {"class": "transformer_lens.HookedTransformer", "random_init_seed": SEED, **MODEL_CFG},
            "hook": HOOK,
            "context": CONTEXT,
            "text": "pydoc_data.topics, SmolLM2-135M tokenizer, documents joined by EOS",
            "store_dtype": "fp32",
            "sae": {"arch": "topk", "d": MODEL_CFG["d_model"], "m": SAE_M, "k": SAE_K, "init": "random"},
            "saedashboard": {
                "version": "0.8.0",
                "install": "venv --system-site-packages, pip install --no-deps (see the docstring)",
                "latents": args.latents,
                "minibatch_size_features": 128,
                "minibatch_size_tokens": 64,
            },
            "actstore": {
                "capture": {"batch_size": CAPTURE_BATCH, "dtype": "fp32", "durable": True, "timed": True},
                "jobs": JOBS,
                "latents": SAE_M,
                "block_rows": 4096,
            },
            "tools": list(pythons),
            "inputs": inputs,
            "repeats": repeats,
        },
        "check": check,
        "results": rows,
        "notes": (
            "wall_s: SaeVisRunner.run (its forwards included) against actstore.capture + analysis.run with the "
            "lens job (capture_s: the capture's part); model, SAE and tokens are loaded before the timer. "
            "rss_peak is the peak RSS during the call (VmHWM reset just before it), rss_growth = rss_peak - RSS "
            "before the call. speedup_median / speedup_min compare equal tokens and equal latents "
            "(actstore_subset: latents=range(--latents)), of the medians / of the minima of the repeats; "
            "speedup_all_latents_*: actstore over all 2048 latents against SAEDashboard over --latents."
        ),
    }
    if args.no_write:
        return 0
    path = C.write_result("saedashboard_cpu_quick" if args.quick else "saedashboard_cpu", doc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
