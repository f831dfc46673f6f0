"""``actstore bench kernels``: the TopK SAE's encode, decode and training step, actstore's
ops against eager PyTorch, at a shape ``n x d``, ``m`` latents, ``k`` active.

- encode: ``actstore.ops.topk_encode`` against ``actstore.reference.topk_encode_reference``
  (dense pre-activations, ``torch.topk``); checked on the values and the reconstruction
  they give (robust to top-k near-ties);
- decode: ``actstore.ops.sparse_decode`` against the einsum reference;
- step: encode + decode + MSE + backward, checked on the loss and every gradient.

Work is rows (rows/s). On a GPU the fused Triton kernels run; on a CPU the ops take their
CPU path, so the ratios say what a user gets there.

:func:`dispatch_table`: after the timings, the measuring dispatch's cached choices
(``ops/_autotune.py``: op, device, shape class, choice, median ms per candidate), which the
suite's own calls fill on CUDA; on a CPU it says that the dispatch times only on CUDA.
"""

from __future__ import annotations

import torch

from ..ops import _autotune, sparse_decode, topk_encode
from ..reference.topk_sae import sparse_decode_reference, topk_encode_reference
from .harness import check_same, compare, fmt_table

# Relative tolerance against eager (float32): the kernels accumulate in float32 like the
# reference; TF32 products in a Triton dot and summation order leave ~1e-3.
RTOL = {"encode": 2e-3, "decode": 1e-4, "step": 2e-2}


def run(n: int = 4096, d: int = 768, m: int = 24576, k: int = 32, device="cpu", repeats: int = 5, progress=None, **_):
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(dev)
    W_enc = (torch.randn(m, d, generator=g) / d**0.5).to(dev).requires_grad_()
    b_enc = torch.zeros(m, device=dev, requires_grad=True)
    W_dec = (torch.randn(m, d, generator=g) / d**0.5).to(dev).requires_grad_()
    b_dec = torch.zeros(d, device=dev, requires_grad=True)
    params = (W_enc, b_enc, W_dec, b_dec)

    def sync(out=None):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    encs = {"eager": topk_encode_reference, "actstore": topk_encode}
    decs = {"eager": sparse_decode_reference, "actstore": sparse_decode}
    with torch.no_grad():
        v, i = topk_encode_reference(x, W_enc, b_enc, k)

    def encode(name):
        def fn():
            with torch.no_grad():
                vals, idx = encs[name](x, W_enc, b_enc, k)
                return sync((vals, sparse_decode_reference(vals, idx, W_dec, b_dec)))

        return fn

    def decode(name):
        def fn():
            with torch.no_grad():
                return sync(decs[name](v, i, W_dec, b_dec))

        return fn

    def step(name):
        def fn():
            for p in params:
                p.grad = None
            vals, idx = encs[name](x, W_enc, b_enc, k)
            loss = (decs[name](vals, idx, W_dec, b_dec) - x).pow(2).sum(1).mean()
            loss.backward()
            return sync((loss.detach(), *(p.grad for p in params)))

        return fn

    shape = {"n": n, "d": d, "m": m, "k": k, "device": str(dev)}
    ops = {
        op: {f"{op}_{name}": make(name) for name in ("eager", "actstore")}
        for op, make in (("encode", encode), ("decode", decode), ("step", step))
    }
    checks = {}
    for op, fns in ops.items():  # every op checked before any is timed
        if progress:
            progress(f"kernels {op}: checking that {', '.join(fns)} compute the same result")
        errs = check_same({name: fn() for name, fn in fns.items()}, RTOL[op])
        checks[op] = {"reference": f"{op}_eager", "rel_err": errs, "rtol": RTOL[op]}
    return [
        compare(
            f"kernels {op}",
            fns,
            work=n / 1e6,
            unit="Mrows/s",
            ratios={f"{op}: actstore / eager": (f"{op}_actstore", f"{op}_eager")},
            checked=checks[op],
            repeats=repeats,
            params=shape,
            progress=progress,
        )
        for op, fns in ops.items()
    ]


def dispatch_entries() -> list[dict]:
    """The measuring dispatch's cached choices (``_autotune.table()``)."""
    return _autotune.table()


def dispatch_table(entries: list[dict], device) -> str:
    """The dispatch's choices as a table, below a line that says where they come from."""
    if torch.device(device).type == "cuda":
        head = f"dispatch: the candidates timed on this machine's first call per shape class ({_autotune.cache_path()})"
    else:
        head = (
            "dispatch: times its candidates on CUDA only; on this CPU the ops take their defaults (topk_encode: "
            "reference; sparse_decode: by density; encoder_grads: as the forward ran). Cached entries "
            f"({_autotune.cache_path()}):"
        )
    if not entries:
        return head + "\n  none"
    rows = []
    for e in entries:
        med = e["median_s"] if isinstance(e["median_s"], dict) else {}
        times = ", ".join(f"{name} {t * 1e3:,.3g}" for name, t in sorted(med.items(), key=lambda kv: kv[1]))
        rows.append([e["op"], e["device"], e["key"], e["choice"], times or "-"])
    return head + "\n" + fmt_table(rows, ["op", "device", "dtypes | shape class", "choice", "median ms"])
