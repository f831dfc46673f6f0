"""Real subprocesses for tests: ``torchrun`` jobs on this machine (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun(script: Path, args: list, nproc: int, port_base: int, env: dict | None = None, timeout: int = 300):
    """Run ``script args...`` as ``nproc`` ranks under ``python -m torch.distributed.run``;
    returns the ``CompletedProcess`` (text output captured). ``port_base`` keeps the
    rendezvous ports of different tests apart (plus this pid modulo 1000, so concurrent runs
    of one test do too); one OpenMP thread per rank, so the ranks don't oversubscribe the cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port_base + os.getpid() % 1000), str(script), *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
