"""Two ranks under torchrun give the single pass's representation analyses byte for byte
(steering vectors, PCA, layer diffs, probes: tests/helpers/repr_rank.py), the two ranks
with their passes' state committed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import HELPERS, ROOT
from helpers.procs import torchrun
from helpers.repr_store import write_repr_store


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_ranks_give_the_single_pass(tmp_path):
    write_repr_store(tmp_path / "s")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS)])}
    one = subprocess.run([sys.executable, str(HELPERS / "repr_rank.py"), tmp_path / "s", tmp_path / "one"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    # The two ranks commit their shares' state as they go (tests/analysis/test_repr_resume.py resumes it).
    argv = [tmp_path / "s", tmp_path / "two", tmp_path / "state"]
    r = torchrun(HELPERS / "repr_rank.py", argv, nproc=2, port_base=30700, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "state" / "pca" / "pca.moments" / "1-of-2" / "state.json").exists()
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []
