"""circuit-tracer attribution graphs on SmolLM2-135M-Instruct from actstore exports, offline.

What it shows: a per-layer transcoder set in actstore's classes, exported by
``actstore.sae.to_circuit_tracer``, loads through circuit-tracer's own
``ReplacementModel.from_pretrained(model_folder, export_folder)`` (TransformerLens backend, the
model from its local folder), and ``circuit_tracer.attribute`` builds a graph whose
``compute_graph_scores`` (replacement, completeness) are recorded.

The transcoders are **fitted in seconds, not trained** (a path test, not a dictionary): for every
layer ``l`` (``model.layers.{l}.mlp:input`` -> ``model.layers.{l}.mlp``), ``--latents`` JumpReLU
latents with random encoders centred on the fit rows and thresholds where about ``--l0`` fire
per row (``init_from_batch``), decoders and ``b_dec`` the least-squares fit of the MLP output
on those codes. Variant ``skip``: a skip transcoder whose ``W_skip`` is first the least-squares
linear map of the MLP input to its output, the sparse part fitting what it leaves. Variant
``clt``: a cross-layer transcoder (``--clt-latents`` per layer), its decoders into target ``t``
from every layer ``s <= t`` fitted the same way. Fit rows:
the first ``--fit-tokens`` tokens of ``pydoc_data.topics`` (context 128, BOS rows dropped);
the held-out FVU is on the next 512 rows (mean over layers).

circuit-tracer 0.5.0 is installed with ``--no-deps`` beside huggingface-hub 2.x and
transformers 5 (it pins <1 and <=4.57.3); the two shims tests/sae/test_circuit_tracer.py
documents are applied here too.

    python benchmarks/bench_circuit_tracer_smollm2.py  # minutes on 2 cores -> results/circuit_tracer_smollm2.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import _version, metadata, write_result  # noqa: E402

from actstore.models import HookRecorder, resolve_hooks  # noqa: E402
from actstore.models.norms import detect_norms  # noqa: E402
from actstore.models.smollm2 import load_smollm2, smollm2_path  # noqa: E402
from actstore.sae import SAEConfig, build  # noqa: E402
from actstore.sae.circuit_tracer import to_circuit_tracer  # noqa: E402

SRC, TGT = "model.layers.{}.mlp:input", "model.layers.{}.mlp"
PROMPTS = [
    "The capital of France is",
    "Fact: Michael Jordan plays the sport of",
    "def add(a, b):\n    return a",
]
CONTEXT, HELD_OUT = 128, 512


def _shims(folder: str) -> None:
    import huggingface_hub.constants as hc
    import transformer_lens.loading_from_pretrained as tl_loading

    if not hasattr(hc, "HF_HUB_ENABLE_HF_TRANSFER"):  # removed in huggingface_hub 1.0; hf_utils imports it
        hc.HF_HUB_ENABLE_HF_TRANSFER = False
    if folder not in tl_loading.OFFICIAL_MODEL_NAMES:  # HookedTransformer.from_pretrained checks names first
        tl_loading.OFFICIAL_MODEL_NAMES.append(folder)


def _rows(model, tok, n_tokens: int) -> dict:
    """``{hook: [rows, d]}`` fp32 at every layer's MLP input and output over ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    ids = tok("\n\n".join(topics[k] for k in sorted(topics)), add_special_tokens=False).input_ids
    seqs = [ids[i : i + CONTEXT - 1] for i in range(0, n_tokens + HELD_OUT, CONTEXT - 1)]
    hooks = [h.format(i) for i in range(model.config.num_hidden_layers) for h in (SRC, TGT)]
    out: dict = {h: [] for h in hooks}
    with torch.no_grad(), HookRecorder(model, resolve_hooks(model, hooks), stop_early=False) as rec:
        for s in seqs:
            got = rec.run(lambda s=s: model(torch.tensor([[tok.bos_token_id, *s]])))
            for h in hooks:
                out[h].append(got[h][0, 1:].float())  # the BOS row is an outlier
    return {h: torch.cat(v) for h, v in out.items()}


def _fit(rows: dict, n_layers: int, d: int, m: int, l0: float, n_fit: int, skip: bool):
    tcs, fvus = [], []
    for i in range(n_layers):
        x, y = rows[SRC.format(i)], rows[TGT.format(i)]
        xf, yf, xh, yh = x[:n_fit], y[:n_fit], x[n_fit : n_fit + HELD_OUT], y[n_fit : n_fit + HELD_OUT]
        arch = "skip_transcoder" if skip else "transcoder"
        cfg = SAEConfig(arch, d, m, activation="jumprelu", d_out=d, hook=SRC.format(i), target=TGT.format(i))
        tc = build(cfg, seed=i)
        tc.center_encoder(xf.mean(0))
        tc.init_from_batch(xf, l0)
        ones = torch.ones(len(xf), 1)
        resid, bias = yf, torch.zeros(d)
        with torch.no_grad():
            if skip:
                w = torch.linalg.lstsq(torch.cat([xf, ones], 1), yf, driver="gelsd").solution
                tc.W_skip.copy_(w[:-1].T)
                bias = w[-1]
                resid = yf - xf @ w[:-1] - bias
            f = tc.encode(xf, dense=True).float()
            w = torch.linalg.lstsq(torch.cat([f, ones], 1), resid, driver="gelsd").solution
            tc.W_dec.copy_(w[:-1])
            tc.b_dec.copy_(w[-1] + bias)
            tc.eval()
            err = (tc.output(xh) - yh).pow(2).sum()
            fvus.append(float(err / (yh - yh.mean(0)).pow(2).sum()))
        tcs.append(tc)
    return tcs, sum(fvus) / len(fvus), (f != 0).float().sum(1).mean().item()


def _fit_clt(rows: dict, n_layers: int, d: int, m: int, l0: float, n_fit: int):
    """A CLT fitted the same way: per-layer random encoders and thresholds, then target ``t``'s
    decoders (from every layer ``s <= t``) and ``b_dec[t]`` by least squares on the codes."""
    x = torch.stack([rows[SRC.format(i)] for i in range(n_layers)], 1)  # [n, L, d]
    y = torch.stack([rows[TGT.format(i)] for i in range(n_layers)], 1)
    xf, yf, xh, yh = x[:n_fit], y[:n_fit], x[n_fit : n_fit + HELD_OUT], y[n_fit : n_fit + HELD_OUT]
    hooks = {"sources": [SRC.format(i) for i in range(n_layers)], "targets": [TGT.format(i) for i in range(n_layers)]}
    clt = build(SAEConfig("clt", d, m, activation="jumprelu", d_out=d, **hooks))
    clt.center_encoder(xf.mean(0))
    clt.init_from_batch(xf, l0)
    f = clt.encode(xf, dense=True).float()  # [n, L m], layer-major
    ones = torch.ones(len(xf), 1)
    with torch.no_grad():
        for t in range(n_layers):
            w = torch.linalg.lstsq(torch.cat([f[:, : (t + 1) * m], ones], 1), yf[:, t], driver="gelsd").solution
            clt.W_dec[t].copy_(w[:-1])
            clt.b_dec[t].copy_(w[-1])
        clt.eval()
        err = (clt.output(xh) - yh).pow(2).sum((0, 2))
        fvu = err / (yh - yh.mean(0)).pow(2).sum((0, 2))
    return clt, float(fvu.mean()), (f[:, -m:] != 0).float().sum(1).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit-tokens", type=int, default=2048)
    ap.add_argument("--latents", type=int, default=128)
    ap.add_argument("--l0", type=float, default=16)
    ap.add_argument("--clt-latents", type=int, default=32, help="CLT latents per layer")
    ap.add_argument("--clt-l0", type=float, default=4, help="CLT latents firing per layer and row")
    ap.add_argument("--batch", type=int, default=256, help="attribute's batch_size")
    ap.add_argument("--variants", default="plain,skip,clt")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    meta = metadata()
    meta["versions"].update(
        {p: _version(p) for p in ("circuit-tracer", "transformer-lens", "huggingface-hub", "nnsight")}
    )
    folder = str(smollm2_path())
    _shims(folder)
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores

    t0 = time.perf_counter()
    hf, tok = load_smollm2()
    n_layers, d = hf.config.num_hidden_layers, hf.config.hidden_size
    rows = _rows(hf, tok, args.fit_tokens)
    n_fit = len(rows[SRC.format(0)]) - HELD_OUT
    sites = resolve_hooks(hf, [SRC.format(i) for i in range(n_layers)])
    norms = detect_norms(hf, sites, lambda: hf(torch.tensor([[tok.bos_token_id, 504, 3575]])))
    capture_s = time.perf_counter() - t0

    class Store:  # what the export asks of a store: where each source hook sits relative to a norm
        def hook_norm(self, hook):
            return norms[hook]

    doc: dict = {
        "meta": meta,
        "setup": {
            "model": "SmolLM2-135M-Instruct (actstore.models.smollm2 folder), fp32, CPU",
            "backend": "transformerlens",
            "transcoders": "fitted, not trained: random JumpReLU encoders (thresholds at ~l0 firing), "
            "least-squares decoders (skip: least-squares W_skip first)",
            "fit_rows": n_fit,
            "held_out_rows": HELD_OUT,
            "l0_target": {"plain, skip": args.l0, "clt (per layer)": args.clt_l0},
            "attribute": {"max_n_logits": 10, "desired_logit_prob": 0.95, "batch_size": args.batch},
            "norm_record_layer0": norms[SRC.format(0)],
            "capture_s": round(capture_s, 1),
        },
        "variants": {},
        "units": {
            "*_s": "seconds (wall)",
            "fvu": "fraction of variance unexplained, held out, mean over layers",
            "replacement": "compute_graph_scores[0]",
            "completeness": "compute_graph_scores[1]",
        },
    }
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        if name == "clt":
            tcs, fvu, l0 = _fit_clt(rows, n_layers, d, args.clt_latents, args.clt_l0, n_fit)
        else:
            tcs, fvu, l0 = _fit(rows, n_layers, d, args.latents, args.l0, n_fit, name == "skip")
        fit_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"smollm2_{name}"
            t0 = time.perf_counter()
            to_circuit_tracer(tcs, out, model_name=folder, store=Store())
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            model = ReplacementModel.from_pretrained(folder, str(out), backend="transformerlens",
                                                     device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
            load_s = time.perf_counter() - t0
            graphs = []
            for prompt in PROMPTS:
                t0 = time.perf_counter()
                g = attribute(prompt, model, batch_size=args.batch)
                rep, comp = compute_graph_scores(g)
                graphs.append({
                    "prompt": prompt, "tokens": len(g.input_tokens), "features": len(g.selected_features),
                    "logits": len(g.logit_targets), "replacement": round(rep, 4), "completeness": round(comp, 4),
                    "attribute_s": round(time.perf_counter() - t0, 1),
                })  # fmt: skip
                print(name, graphs[-1], flush=True)
            model.reset_hooks(including_permanent=True)
            del model
        doc["variants"][name] = {
            "kind": "cross_layer_transcoder" if name == "clt" else "transcoder_set",
            "latents_per_layer": args.clt_latents if name == "clt" else args.latents,
            "feature_input_hook": "mlp.hook_in",
            "fvu": round(fvu, 4),
            "l0_last_layer_fit_rows": round(l0, 1),
            "fit_s": round(fit_s, 1),
            "export_s": round(export_s, 2),
            "load_s": round(load_s, 1),
            "graphs": graphs,
        }
    print(write_result("circuit_tracer_smollm2", doc))


if __name__ == "__main__":
    main()
