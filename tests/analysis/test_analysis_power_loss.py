"""The analysis checkpoints under power loss: crash at every durable step of a feature pass
and of a representation analysis (tests/helpers/power_loss.py), rebuild the disk as
only-synced and as metadata-ordered, rerun, and get the uncrashed run's output: the same
bytes for the feature output, the same arrays for the representation result.

A crash never leaves an output that reads as finished but is not: either ``zarr.json`` of
the output is absent (the rerun goes on from the state folder) or every file of it is the
uncrashed run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import actstore.analysis as an
from helpers.analysis_store import BLOCK, JOBS, relu_sae
from helpers.power_loss import count_steps, crash_each_step, sample_size, verdict
from helpers.repr_kill_job import run as repr_run
from helpers.repr_store import write_repr_store

DEFAULT_SAMPLE = 20  # per flow (the feature pass has ~300 points); ACTSTORE_POWER_LOSS_SAMPLE=all: every one


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _enumerate(tmp_path, flow, outcome, check) -> list[str]:
    """``flow(base, ctx)`` runs the operation with its files under ``base``; ``outcome(base)``
    what a finished run left; ``check(base, where)`` the invariants of a crashed one."""
    total = count_steps(tmp_path / "count", flow)
    assert total > 20, f"only {total} steps recorded"
    want = outcome(tmp_path / "count")

    def verify(base, where, ctx):
        check(base, where)
        flow(base, ctx)
        assert outcome(base) == want, f"{where}: the rerun's output differs from the uncrashed run"

    bad, missed = crash_each_step(tmp_path, flow, verify, total=total, sample=sample_size(DEFAULT_SAMPLE))
    assert not missed, f"crash points {missed} were never reached: the runs differ in length"
    return bad


@pytest.mark.slow
def test_feature_pass_resumes_byte_identically_after_power_loss(planted, tmp_path):
    path, _ = planted

    def flow(base, ctx):
        an.run(path, relu_sae(), JOBS, base / "out", block_rows=BLOCK, commit_rows=1)

    def check(base, where):
        out = base / "out"
        if (out / "zarr.json").exists():  # it says finished: then every job's file must be there
            assert (out / "_state").exists() is False, f"{where}: a finished output kept its state folder"

    bad = _enumerate(tmp_path, flow, lambda base: files(base / "out"), check)
    assert not bad, verdict(bad)


@pytest.fixture(scope="module")
def repr_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("plr") / "s"
    write_repr_store(path)
    return path


@pytest.mark.slow
def test_representation_analysis_resumes_to_the_same_arrays_after_power_loss(repr_store, tmp_path):
    from test_repr_resume import arrays  # noqa: PLC0415 - the flattening the SIGKILL tests use

    def flow(base, ctx):
        base.mkdir(parents=True, exist_ok=True)
        flow.last = repr_run("pca", repr_store, state_dir=base / "state", commit_rows=1)

    def outcome(base):
        return {k: v.tobytes() for k, v in arrays(flow.last).items()}

    bad = _enumerate(tmp_path, flow, outcome, lambda base, where: None)
    assert not bad, verdict(bad)
