"""The measuring dispatch: on the first call for a (device, shape class, dtype), time each
candidate implementation of an op on the user's own device, keep the fastest, and cache the
choice in a JSON file so later calls and later processes skip the timing.

- ``choose(op, key, candidates, ...)``: ``candidates`` maps names to zero-argument callables
  that run the op once on the actual inputs. Each runs once to warm up (compilation,
  autotuning), then ``repeats`` times round-robin; the lowest median wins. ``timer`` is a
  zero-argument clock, injectable so the tests drive the choice on a CPU.
- The cache: ``$ACTSTORE_DISPATCH_CACHE``, else ``$XDG_CACHE_HOME/actstore/dispatch.json``
  (``~/.cache/...``), one entry per ``op|device|key`` with the choice and the medians (s).
- ``ACTSTORE_<OP>=<name>`` (e.g. ``ACTSTORE_TOPK_ENCODE=chunked``) forces a candidate.
- :func:`table` returns the cached entries (``actstore bench kernels`` prints them).

The choice is made once per key per machine: shapes are bucketed (:func:`shape_class`) so a
training run's batches share one entry.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import ActstoreError


class DispatchError(ActstoreError, ValueError):
    """A forced candidate that does not exist, or a damaged cache file."""


_memo: dict[str, str] = {}


def cache_path() -> Path:
    env = os.environ.get("ACTSTORE_DISPATCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "actstore" / "dispatch.json"


def device_name(t: torch.Tensor) -> str:
    if t.is_cuda:
        return torch.cuda.get_device_name(t.device).replace("|", "/")
    return t.device.type


def _pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def shape_class(**dims: int) -> str:
    """``d=4096,m=131072,...`` with every dimension rounded up to a power of two."""
    return ",".join(f"{k}={_pow2(v)}" for k, v in sorted(dims.items()))


def _read() -> dict:
    p = cache_path()
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DispatchError(f"the dispatch cache {p} is damaged ({e}): delete it, it will be measured again") from e
    return doc if isinstance(doc, dict) else {}


def _write(entry_key: str, entry: dict) -> None:
    p = cache_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = _read()
    doc[entry_key] = entry
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".dispatch-")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, p)  # readers in other processes see the old file or the new one, whole


def forced(op: str, names) -> str | None:
    """The candidate ``ACTSTORE_<OP>`` forces (checked against ``names``), or None."""
    f = os.environ.get(f"ACTSTORE_{op.upper()}", "").strip() or None
    if f is not None and f not in names:
        raise DispatchError(
            f"ACTSTORE_{op.upper()}={f!r} is not a candidate here: use one of {', '.join(names)}, or unset it"
        )
    return f


def choose(
    op: str,
    device: str,
    key: str,
    candidates: dict[str, Callable[[], object]],
    *,
    repeats: int = 3,
    timer: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> str:
    """The name of the candidate to run (see the module docstring)."""
    f = forced(op, candidates)
    if f is not None:
        return f
    entry_key = f"{op}|{device}|{key}"
    if entry_key in _memo and _memo[entry_key] in candidates:
        return _memo[entry_key]
    hit = _read().get(entry_key)
    if isinstance(hit, dict) and hit.get("choice") in candidates:
        _memo[entry_key] = hit["choice"]
        return hit["choice"]
    if len(candidates) == 1:
        return next(iter(candidates))
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up: compilation and autotuning are not timed
        fn()
    sync()
    for _ in range(repeats):
        for name, fn in candidates.items():  # round-robin, so drift hits every candidate alike
            t0 = timer()
            fn()
            sync()
            times[name].append(timer() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    choice = min(medians, key=medians.get)
    _memo[entry_key] = choice
    _write(entry_key, {"choice": choice, "median_s": medians, "repeats": repeats})
    return choice


def table() -> list[dict]:
    """The cached choices: ``[{"op", "device", "key", "choice", "median_s"}]``."""
    out = []
    for k, v in sorted(_read().items()):
        op, device, key = (k.split("|", 2) + ["", ""])[:3]  # the key itself holds "|"
        if isinstance(v, dict):
            choice, med = v.get("choice"), v.get("median_s")
            out.append({"op": op, "device": device, "key": key, "choice": choice, "median_s": med})
    return out
