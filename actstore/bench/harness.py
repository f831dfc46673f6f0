"""The timing harness of ``actstore bench`` and of the scripts in ``benchmarks/``.

- :func:`interleaved`: time several variants round-robin (the order rotates each round),
  so that the noise of a shared machine hits all of them alike;
- :func:`summary`: the median of the rounds, with the best, the worst and the spread;
- :func:`check_same`: before any timing, every variant's output against the first one's,
  each tensor on its own, a :class:`BenchError` naming the first variant (and tensor) that differs;
- :func:`machine`, :func:`versions`: what a result is comparable by (taken before the first
  measurement);
- :func:`compare`: check, then time, then figures (``rate`` = work / median seconds, in the
  suite's unit) and ratios, as one JSON-ready dict; :func:`fmt_table` prints it.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata as _md
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..api import open as open_store
from ..errors import ActstoreError


class BenchError(ActstoreError, ValueError):
    """A benchmark that cannot run as asked (a device that is not there), or a variant that
    computes something other than the reference."""


def wall_time(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn`` by the wall clock. A caller on a GPU syncs inside ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    setup: dict[str, Callable[[], object]] | None = None,
    teardown: dict[str, Callable[[], object]] | None = None,
    warmup: int = 1,
    measure: Callable[[Callable[[], object]], float] = wall_time,
    on_round: Callable[[int, int], None] | None = None,
    collect: str = "variant",
) -> dict[str, list[float]]:
    """Time every variant ``repeats`` times, round-robin (the order rotates each round), so
    that background load affects all variants alike. ``setup[name]`` / ``teardown[name]``
    run untimed before / after each timed call; ``warmup`` untimed rounds come first.
    ``measure(fn)`` gives the seconds of one round of a variant: by default one call by the
    wall clock; on CUDA e.g. ``triton.testing.do_bench`` (its median of many calls, synced).
    ``on_round(done, total)`` is called after each round (progress). ``collect``: a full
    ``gc.collect()`` before each variant's call (``"variant"``) or once per round
    (``"round"``: a collection takes ~0.5 s with torch and transformers loaded, which
    dominates small shapes). Returns ``{name: [seconds per round]}``."""
    setup, teardown = setup or {}, teardown or {}
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        if collect == "round":
            gc.collect()
        for name in names[k:] + names[:k]:
            if name in setup:
                setup[name]()
            if collect == "variant":
                gc.collect()
            dt = measure(variants[name])
            if name in teardown:
                teardown[name]()
            if r >= warmup:
                times[name].append(dt)
        if on_round is not None:
            on_round(r + 1, warmup + repeats)
    return times


def summary(seconds: list[float]) -> dict:
    """The median of the repeats, with the best run (``min_s``), the worst and the spread
    beside it: ``spread`` = (max - min) / median, 0 for a quiet machine; a large one says
    the figures moved during the run (rerun, or read the paired ratios)."""
    med = statistics.median(seconds)
    return {
        "median_s": med,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "spread": (max(seconds) - min(seconds)) / med if med > 0 else 0.0,
        "repeats": len(seconds),
    }


def gbps(nbytes: int, seconds: float) -> float:
    """Decimal GB/s."""
    return nbytes / seconds / 1e9


def fmt_table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------------


def check_sizes(suite: str, **sizes) -> None:
    """A :class:`BenchError` (one line, naming the option as the CLI spells it) for a size
    that is not a positive integer: checked before a suite writes anything, so that a bad
    ``--rows`` is neither torch's traceback nor a temporary store left behind."""
    for name, value in sizes.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise BenchError(f"bench {suite}: {flag} must be a positive integer, got {value!r}")


def open_user_store(suite: str, path, hook: str | None, rows: int | None, default_rows: int, d: int | None = None):
    """The user's store (``--store``), the hook to bench and the rows to use, checked.

    ``hook`` None: the store's only hook (several: a one-line error listing them). ``rows``
    None: the first ``min(store rows, default_rows)`` rows, so that the default run reads a
    bounded amount of a large store; more than the store holds is an error. ``d``, when
    given, must be the hook's width. The store is only read, never written or removed.
    Returns ``(store, hook spec, rows)``."""
    st = open_store(path)
    try:
        if hook is None:
            if len(st.hooks) != 1:
                raise BenchError(f"bench {suite}: store {path} has hooks {', '.join(st.hooks)}: pick one with --hook")
            hook = st.hooks[0]
        spec = st._hook(hook)  # UnknownHookError, one line, naming the hooks there are
        if d is not None and d != spec.d:
            raise BenchError(f"bench {suite}: --d {d} differs from hook {spec.name!r}'s width {spec.d}; leave --d out")
        if not st.rows:
            raise BenchError(f"bench {suite}: store {path} has no committed rows: capture or append activations first")
        n = min(st.rows, default_rows) if rows is None else int(rows)
        if n > st.rows:
            raise BenchError(f"bench {suite}: --rows {n} is more than the {st.rows} rows of store {path}; use fewer")
    except BaseException:
        st.close()
        raise
    return st, spec, n


# -- correctness -------------------------------------------------------------------------------


def _as_float(t) -> torch.Tensor:
    if isinstance(t, (bytes, bytearray, memoryview)):
        t = np.frombuffer(bytes(t), dtype=np.uint8)
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    return t.detach().to("cpu", torch.float64)


def _named(o, name: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of an output with their names: a dict's keys, ``[i]`` for a list's items
    (``"loss"``, ``"grads[2]"``); a lone tensor has the name ``""``."""
    if isinstance(o, dict):
        return [t for k in sorted(o) for t in _named(o[k], f"{name}.{k}" if name else str(k))]
    if isinstance(o, (list, tuple)):
        return [t for i, x in enumerate(o) for t in _named(x, f"{name}[{i}]")]
    return [(name, _as_float(o))]


def check_same(outputs: dict[str, object], rtol: float = 0.0, each: bool = False) -> dict:
    """Every variant's output against the first one's (the reference): same shapes, and each
    tensor on its own within ``||out - ref|| <= rtol * ||ref||`` (``rtol`` 0: bit for bit in
    float64). An output is a tensor, an array, bytes, or a tuple/list/dict of them; the
    tensors of one output are never pooled into one norm, where a large one (a loss) would
    hide a wrong small one (a gradient). Returns ``{variant: worst relative error}``, or with
    ``each`` ``{variant: {tensor name: relative error}}``; raises :class:`BenchError` naming
    the first variant, and the tensor, that differs."""
    names = list(outputs)
    ref_name = names[0]
    ref = _named(outputs[ref_name])
    errs = {}
    for name in names[1:]:
        got = _named(outputs[name])
        if [n for n, _ in got] != [n for n, _ in ref] or any(g.shape != r.shape for (_, g), (_, r) in zip(got, ref)):
            raise BenchError(
                f"variant {name} gives outputs of other shapes than {ref_name} "
                f"({[tuple(g.shape) for _, g in got]} vs {[tuple(r.shape) for _, r in ref]}); fix it before timing"
            )
        per = {}
        for (tname, g), (_, r) in zip(got, ref):
            num = float((g - r).pow(2).sum()) ** 0.5
            den = float(r.pow(2).sum()) ** 0.5
            err = num / den if den > 0 else num
            if not err <= rtol:
                what = f"{tname}: " if tname else ""
                raise BenchError(
                    f"variant {name} computes a different result from {ref_name} ({what}relative error {err:.3g}, "
                    f"allowed {rtol:.0g}); fix it before timing"
                )
            per[tname or "output"] = err
        errs[name] = per if each else max(per.values(), default=0.0)
    return errs


# -- metadata ------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def machine(device: torch.device | None = None) -> dict:
    """CPU, memory, platform, load and (on CUDA) the GPU: what two machines differ by."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    gpu = None
    if device is not None and device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "loadavg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
    }


def versions() -> dict:
    import actstore
    from actstore import _native

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "numcodecs": _version("numcodecs"),
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "actstore": actstore.__version__,
        "actstore_native": _native.HAVE_NATIVE,
    }


def metadata(device: torch.device | None = None) -> dict:
    """Date, machine, versions and the command line; taken before the first measurement."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "versions": versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


# -- one comparison ------------------------------------------------------------------------------


def compare(
    suite: str,
    variants: dict[str, Callable[[], object]],
    *,
    work: float | dict[str, float],
    unit: str,
    ratios: dict[str, tuple[str, str]],
    outputs: dict[str, Callable[[], object]] | None = None,
    rtol: float = 0.0,
    repeats: int = 5,
    warmup: int = 1,
    setup: dict | None = None,
    teardown: dict | None = None,
    measure: Callable = wall_time,
    params: dict | None = None,
    progress: Callable[[str], None] | None = None,
    checked: dict | None = None,
) -> dict:
    """Check that the variants agree (``outputs[name]()`` gives each one's result; the
    first is the reference), then time them round-robin, then report each variant's
    median seconds (with best, worst, spread) and ``rate`` = its work / median seconds in
    ``unit`` (``work`` per call, one figure or per variant), and ``ratios`` ``{label: (a,
    b)}`` = rate of a / rate of b, both of the median and the median of the per-round ratios.
    ``checked``: the check already done by the caller (``{"reference", "rel_err", "rtol"}``),
    when a suite checks all its comparisons before timing any."""
    say = progress or (lambda _msg: None)
    check = checked
    if outputs:
        say(f"{suite}: checking that {', '.join(outputs)} compute the same result")
        errs = check_same({k: fn() for k, fn in outputs.items()}, rtol)
        check = {"reference": next(iter(outputs)), "rel_err": errs, "rtol": rtol}
    say(f"{suite}: timing {', '.join(variants)} ({repeats} rounds, interleaved)")
    times = interleaved(
        variants,
        repeats,
        setup=setup,
        teardown=teardown,
        warmup=warmup,
        measure=measure,
        on_round=lambda done, total: say(f"{suite}: round {done}/{total}"),
        collect="round",
    )
    per = work if isinstance(work, dict) else {k: work for k in variants}
    figs = {}
    for name, secs in times.items():
        sm = summary(secs)
        figs[name] = {**sm, "rate": per[name] / sm["median_s"], "unit": unit}
    out_ratios = {}
    for label, (a, b) in ratios.items():
        paired = [(per[a] / ta) / (per[b] / tb) for ta, tb in zip(times[a], times[b])]
        out_ratios[label] = {
            "of_medians": figs[a]["rate"] / figs[b]["rate"],
            "median_of_rounds": statistics.median(paired),
            "min": min(paired),
            "max": max(paired),
        }
    return {
        "suite": suite,
        "params": params or {},
        "check": check or {"reference": None, "rel_err": {}, "rtol": rtol},
        "variants": figs,
        "ratios": out_ratios,
    }


def table(result: dict) -> str:
    """A readable table of one :func:`compare` result, with its ratios below."""
    rows = []
    for name, f in result["variants"].items():
        rows.append(
            [
                name,
                f"{f['rate']:,.4g} {f['unit']}",
                f"{f['median_s'] * 1e3:,.2f}",
                f"{f['min_s'] * 1e3:,.2f}",
                f"{f['spread']:.0%}",
            ]
        )
    text = fmt_table(rows, [result["suite"], "rate (median)", "median ms", "best ms", "spread"])
    for label, r in result["ratios"].items():
        per_round = f"per round {r['median_of_rounds']:.3g}x, {r['min']:.3g}-{r['max']:.3g}"
        text += f"\n  {label}: {r['of_medians']:.3g}x ({per_round})"
    check = result.get("check") or {}
    if check.get("reference") and check.get("rel_err"):
        text += f"\n  checked against {check['reference']}: {_worst(check)}"
    kernel = check.get("kernel")
    if kernel:
        if "skipped" in kernel:
            text += f"\n  kernels not checked: {kernel['skipped']}"
        else:
            shape = " ".join(f"{k}={v}" for k, v in kernel["shape"].items())
            text += (
                f"\n  kernels checked, {kernel['backend']} at {shape}, against {kernel['reference']}: {_worst(kernel)}"
            )
    return text


def _worst(check: dict) -> str:
    err = max(check["rel_err"].values())
    return f"worst relative error {err:.2g}, each tensor on its own (allowed {check['rtol']:.0g})"
