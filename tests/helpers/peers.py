"""Peer packages in tests: ``need(module)`` in place of ``pytest.importorskip(module)``.

A peer is a package actstore adapts to or checks its output against: sae-lens, eai-sparsify,
nnsight, dictionary-learning, steering-vectors, circuit-tracer, datasets (the HF datasets
integration) and gguf (it reads repeng's control-vector format back). Without one installed,
``need`` skips the test (or, at module level, the module), as ``pytest.importorskip`` does.

With ``ACTSTORE_REQUIRE_PEERS=1`` in the environment a missing peer is a failure instead, so a
CI run that is meant to check against every peer cannot pass by skipping them. Call ``need``
for each peer a check uses, inside that check: one peer missing then skips (or fails) only the
checks that use it. Platform packages (triton, accelerate, zarr, obstore, moto) keep
``pytest.importorskip``; ``tests/test_peers.py`` checks that no peer is skipped any other way.
"""

from __future__ import annotations

import os

import pytest

ENV = "ACTSTORE_REQUIRE_PEERS"
# Import names of the peers (what tests/test_peers.py looks for in a bare importorskip).
PEERS = (
    "sae_lens",
    "sparsify",
    "nnsight",
    "dictionary_learning",
    "steering_vectors",
    "circuit_tracer",
    "datasets",
    "gguf",
    "repeng",
    "sae_dashboard",
)


def required() -> bool:
    """Whether a missing peer fails the run (``ACTSTORE_REQUIRE_PEERS`` set, and not ``0``)."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def need(module: str, reason: str | None = None, minversion: str | None = None):
    """``module`` imported; if it cannot be, the test is skipped (``pytest.importorskip``,
    ``reason`` its message), or under ``ACTSTORE_REQUIRE_PEERS=1`` it fails saying so."""
    __tracebackhide__ = True  # a skip or failure is reported at the caller's line
    try:
        return pytest.importorskip(module, minversion=minversion, reason=reason)
    except pytest.skip.Exception as e:
        if not required():
            raise
        pytest.fail(f"{ENV}=1 and peer {module!r} is not usable: {e.msg}", pytrace=False)
