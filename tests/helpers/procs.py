"""Real subprocesses for tests: ``torchrun`` jobs on this machine (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun(script: Path, args: list, nproc: int, port_base: int = 0, env: dict | None = None, timeout: int = 300):
    """Run ``script args...`` as ``nproc`` ranks under ``python -m torch.distributed.run``;
    returns the ``CompletedProcess`` (text output captured). The rendezvous port is one the
    kernel has just handed out (``port_base`` is kept for callers and ignored): tests run
    on several xdist workers at once, and fixed port ranges collided; one OpenMP thread per
    rank, so the ranks don't oversubscribe the cores."""
    from .s3 import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), str(script), *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
