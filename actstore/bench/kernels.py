"""``actstore bench kernels``: the TopK SAE's encode, decode and training step, actstore's
ops against eager PyTorch, at a shape ``n x d``, ``m`` latents, ``k`` active.

- encode: ``actstore.ops.topk_encode`` against ``actstore.reference.topk_encode_reference``
  (dense pre-activations, ``torch.topk``); checked on the values and the reconstruction
  they give (robust to top-k near-ties);
- decode: ``actstore.ops.sparse_decode`` against the einsum reference;
- step: encode + decode + MSE + backward, checked on the loss and on each gradient, every
  tensor on its own (:func:`harness.check_same`): pooled into one norm, the loss was 99.97%
  of it at the default shape, so a step with an all-zero W_enc gradient passed.

Work is rows (rows/s). On a GPU the ops' dispatch runs; on a CPU the ops take their CPU
path (``topk_encode``: the reference), so the ratios say what a user gets there.

Two checks run before any timing. ``timed``: the variants that are timed, at the timed
shape. ``kernel``: the Triton kernels themselves (``backend="triton"``) against eager, so
that the kernels are never compared with the reference that a CPU (or the dispatch, which may
pick eager on a GPU) would run in their place: on CUDA at the timed shape; on a CPU under
``TRITON_INTERPRET=1`` at :data:`KERNEL_CHECK_SHAPE` (the interpreter runs ~10 ms per program
instance; a child process where the variable is not set already), with the tolerances of the
op tests (:data:`KERNEL_CHECK_RTOL`). Without Triton the result says that the kernels were
not checked.

:func:`dispatch_table`: after the timings, the measuring dispatch's cached choices
(``ops/_autotune.py``: op, device, shape class, choice, median ms per candidate), which the
suite's own calls fill on CUDA; on a CPU it says that the dispatch times only on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from ..ops import _autotune, _dispatch, sparse_decode, topk_encode
from ..reference.topk_sae import sparse_decode_reference, topk_encode_reference
from .harness import BenchError, check_same, compare, fmt_table

# Relative tolerance against eager (float32), per tensor (||got - ref|| / ||ref||): the
# kernels accumulate in float32 like the reference; TF32 products in a Triton dot and
# summation order leave ~1e-3, and a top-k near-tie that flips a selection moves a few rows
# of a gradient. A wrong index, bias, scale or a dropped gradient moves a tensor by O(1).
RTOL = {"encode": 2e-3, "decode": 1e-4, "step": 2e-2}
# The kernels under the interpreter against eager in float32 (tests/helpers/tolerances.py:
# DTYPE_TOL[float32] for values, GRAD_TOL[float32] for gradients; measured there: 7e-7 for
# values, 2.4e-5 for gradients, elementwise).
KERNEL_CHECK_RTOL = {"encode": 2e-5, "decode": 2e-5, "step": 1e-4}
# Small, and not powers of two (the masked tile edges): ~3 s of interpreter on a 2-core CPU.
KERNEL_CHECK_SHAPE = {"n": 48, "d": 40, "m": 320, "k": 6}
INTERPRET = "TRITON_INTERPRET"


def _inputs(n, d, m, k, dev):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(dev)
    W_enc = (torch.randn(m, d, generator=g) / d**0.5).to(dev).requires_grad_()
    b_enc = (0.1 * torch.randn(m, generator=g)).to(dev).requires_grad_()  # never test on zeros
    W_dec = (torch.randn(m, d, generator=g) / d**0.5).to(dev).requires_grad_()
    b_dec = (0.1 * torch.randn(d, generator=g)).to(dev).requires_grad_()
    return x, {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}


def _ops(x, params, k, dev, backend=None):
    """``{op: {"eager": fn, "actstore": fn}}``: each fn runs the op once and returns what the
    check compares. ``backend`` (``"triton"``): given to actstore's ops, else their dispatch."""
    W_enc, b_enc, W_dec, b_dec = params.values()
    kw = {} if backend is None else {"backend": backend}
    # Looked up at each call (module globals), so that a test can plant a wrong op.
    encs = {"eager": lambda *a: topk_encode_reference(*a), "actstore": lambda *a: topk_encode(*a, **kw)}
    decs = {"eager": lambda *a: sparse_decode_reference(*a), "actstore": lambda *a: sparse_decode(*a, **kw)}
    with torch.no_grad():
        v, i = topk_encode_reference(x, W_enc, b_enc, k)

    def sync(out=None):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    def encode(name):
        def fn():
            with torch.no_grad():
                vals, idx = encs[name](x, W_enc, b_enc, k)
                return sync({"values": vals, "reconstruction": sparse_decode_reference(vals, idx, W_dec, b_dec)})

        return fn

    def decode(name):
        def fn():
            with torch.no_grad():
                return sync(decs[name](v, i, W_dec, b_dec))

        return fn

    def step(name):
        def fn():
            for p in params.values():
                p.grad = None
            vals, idx = encs[name](x, W_enc, b_enc, k)
            loss = (decs[name](vals, idx, W_dec, b_dec) - x).pow(2).sum(1).mean()
            loss.backward()
            return sync({"loss": loss.detach(), **{f"{p}.grad": t.grad for p, t in params.items()}})

        return fn

    return {
        op: {name: make(name) for name in ("eager", "actstore")}
        for op, make in (("encode", encode), ("decode", decode), ("step", step))
    }


def _check(ops: dict, rtol: dict, progress, label: str) -> dict:
    """Every op's actstore variant against eager, each tensor on its own (BenchError on the
    first that differs): ``{op: {"reference", "rel_err", "rel_err_each", "rtol"}}``."""
    out = {}
    for op, fns in ops.items():
        names = [f"{op}_{name}" for name in fns]
        if progress:
            progress(f"kernels {op}: checking that {', '.join(names)} compute the same result ({label})")
        each = check_same({n: fn() for n, fn in zip(names, fns.values())}, rtol[op], each=True)
        out[op] = {
            "reference": f"{op}_eager",
            "rel_err": {v: max(e.values()) for v, e in each.items()},
            "rel_err_each": each,
            "rtol": rtol[op],
        }
    return out


def check_kernels(dev, n: int, d: int, m: int, k: int, progress=None) -> dict:
    """The Triton kernels (``backend="triton"``) against eager: on CUDA at ``n, d, m, k``, on a
    CPU under the interpreter at :data:`KERNEL_CHECK_SHAPE`. Returns ``{"backend", "shape",
    "ops": {op: check}}``, or ``{"skipped": reason}`` without Triton.

    Triton reads ``TRITON_INTERPRET`` when it is imported (its own ``tl`` helpers are jit
    functions too), so on a CPU where it is not set (the CLI) the check runs in a child
    process that sets it; where it is set (the tests) it runs here."""
    if dev.type == "cuda":
        shape, rtol, backend = {"n": n, "d": d, "m": m, "k": k}, RTOL, "triton"
    else:
        shape, rtol, backend = dict(KERNEL_CHECK_SHAPE), KERNEL_CHECK_RTOL, f"triton ({INTERPRET}=1)"
        if os.environ.get(INTERPRET) != "1":
            return _check_in_child(progress)
    if not _dispatch.triton_available():
        return {"skipped": "triton does not import: the kernels were not checked (the ops take the references)"}
    x, params = _inputs(**shape, dev=dev)
    ops = {
        op: {"eager": f["eager"], "triton": f["actstore"]}
        for op, f in _ops(x, params, shape["k"], dev, "triton").items()
    }
    checks = _check(ops, rtol, progress, f"the Triton kernels, {backend}, at n={shape['n']} m={shape['m']}")
    return {"backend": backend, "shape": shape, "ops": checks}


def _check_in_child(progress) -> dict:
    """:func:`check_kernels` on the CPU in a child Python with ``TRITON_INTERPRET=1``; its
    BenchError comes back as one here (its one line), its result as JSON on stdout."""
    if progress:
        progress(f"kernels: checking the Triton kernels in a child process with {INTERPRET}=1")
    code = "from actstore.bench.kernels import _child; _child()"
    env = {**os.environ, INTERPRET: "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    lines = proc.stderr.strip().splitlines()
    err = [ln for ln in lines if ln.startswith(_CHILD_ERROR)]
    if err:
        raise BenchError(err[-1][len(_CHILD_ERROR) :])
    raise BenchError(
        f"the kernel check's child process failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}"
    )


_CHILD_ERROR = "actstore-bench-kernel-check: "


def _child() -> None:
    """The child of :func:`_check_in_child`: the check on the CPU, its result as one JSON line."""
    try:
        res = check_kernels(torch.device("cpu"), **KERNEL_CHECK_SHAPE)
    except BenchError as e:
        print(_CHILD_ERROR + str(e), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(res))


def _kernel_entry(kernel: dict, op: str) -> dict:
    """One op's part of :func:`check_kernels`' result: backend, shape and its check."""
    if "skipped" in kernel:
        return kernel
    return {"backend": kernel["backend"], "shape": kernel["shape"], **kernel["ops"][op]}


def run(n: int = 4096, d: int = 768, m: int = 24576, k: int = 32, device="cpu", repeats: int = 5, progress=None, **_):
    dev = torch.device(device)
    # Every check before any timing: the kernels themselves, then what is timed.
    kernel = check_kernels(dev, n, d, m, k, progress)
    x, params = _inputs(n, d, m, k, dev)
    ops = _ops(x, params, k, dev)
    timed = _check(ops, RTOL, progress, "the timed variants")
    shape = {"n": n, "d": d, "m": m, "k": k, "device": str(dev)}
    if dev.type != "cuda":
        shape["actstore_ops"] = "CPU paths (topk_encode: the reference); the kernels are checked under the interpreter"
    return [
        compare(
            f"kernels {op}",
            {f"{op}_{name}": fn for name, fn in fns.items()},
            work=n / 1e6,
            unit="Mrows/s",
            ratios={f"{op}: actstore / eager": (f"{op}_actstore", f"{op}_eager")},
            checked={**timed[op], "kernel": _kernel_entry(kernel, op)},
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
