"""``actstore bench``: benchmark capture, the store, the loader and the SAE kernels on this machine.

Each suite (``capture``, ``store``, ``loader``, ``kernels``: one module each) builds its
own inputs, checks that every variant computes the same result (:func:`harness.check_same`),
then times the variants interleaved round-robin and reports medians with the spread, the
rate in the suite's unit and the ratios against its baseline (:func:`harness.compare`).
:func:`run` runs some of them after taking the metadata (machine, versions) first.
The scripts in ``benchmarks/`` use the same harness.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import _lazy

if TYPE_CHECKING:  # the same names, imported at once: for type checkers and the API docs (mkdocstrings
    # reads the source statically and follows these imports; they never run)
    from .harness import BenchError, check_same, check_sizes, compare, metadata, table

# Imported on first use (actstore/_lazy.py): ``actstore bench --help`` needs only the suites' names.
_lazy.attach(
    __name__,
    {
        ".": ("capture", "kernels", "loader", "store"),
        ".harness": ("BenchError", "check_same", "check_sizes", "compare", "metadata", "table"),
    },
)


class _Suites(Mapping):
    """Suite name -> its ``run`` function; the names are known at once, a suite's module (and
    torch) is imported when its function is asked for."""

    NAMES = ("capture", "store", "loader", "kernels")

    def __getitem__(self, name):
        if name not in self.NAMES:
            raise KeyError(name)
        return importlib.import_module(f".{name}", __name__).run

    def __iter__(self):
        return iter(self.NAMES)

    def __len__(self):
        return len(self.NAMES)


SUITES = _Suites()


def device(name: str):
    """The ``torch.device`` to benchmark on; one line when it is not there."""
    import torch  # deferred, as the suites

    from .._dist import local_device
    from .harness import BenchError

    dev = local_device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"device {name!r} is not there: torch sees no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BenchError(
                f"device {name!r} is not there: torch sees {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type != "cpu":
        raise BenchError(f"device {name!r} is not supported by actstore bench: use cpu, cuda or cuda:N")
    return dev


def run(suites, device_name: str = "auto", progress=None, options: dict | None = None) -> dict:
    """Run ``suites`` (names of :data:`SUITES`) with ``options`` (each suite takes the
    keywords it knows) and return ``{"meta", "results": [compare() dicts]}``, plus
    ``"dispatch"`` (the cached dispatch choices, ``_autotune.table()``) with ``kernels``."""
    from . import kernels
    from .harness import BenchError, metadata

    dev = device(device_name)
    meta = metadata(dev)  # before the first measurement
    results = []
    for name in suites:
        if name not in SUITES:
            raise BenchError(f"unknown bench suite {name!r}: use {', '.join(SUITES)} or all")
        out = SUITES[name](device=dev, progress=progress, **(options or {}).get(name, {}))
        results += out if isinstance(out, list) else [out]
    doc = {"meta": meta, "results": results}
    if "kernels" in suites:  # the measuring dispatch's choices, which the kernel suite's calls fill on CUDA
        doc["dispatch"] = kernels.dispatch_entries()
    return doc


__all__ = ["SUITES", "BenchError", "check_same", "check_sizes", "compare", "device", "metadata", "run", "table"]
