"""The analysis checkpoints under power loss: crash at every durable step of a feature pass
and of a representation analysis (tests/helpers/power_loss.py), rebuild the disk as
only-synced and as metadata-ordered, rerun, and get the uncrashed run's output: the same
bytes for the feature output, the same arrays for the representation result.

A crash never leaves an output that reads as finished but is not: either ``zarr.json`` of
the output is absent (the rerun goes on from the state folder) or every file of it is the
uncrashed run's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import actstore.analysis as an
from helpers.analysis_store import BLOCK, JOBS, relu_sae
from helpers.power_loss import LocalDisk, PowerLoss, crash_points, sample_size, seed_of_run, verdict
from helpers.repr_kill_job import run as repr_run
from helpers.repr_store import write_repr_store

DEFAULT_SAMPLE = 30  # per flow; ACTSTORE_POWER_LOSS_SAMPLE=all runs every point


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _enumerate(tmp_path, flow, outcome, check) -> list[str]:
    """``flow(base)`` runs the operation with its files under ``base``; ``outcome(base)`` what
    a finished run left; ``check(base, where)`` the invariants of a crashed one (may raise)."""
    with LocalDisk(tmp_path / "count") as disk:
        flow(tmp_path / "count")
    want = outcome(tmp_path / "count")
    total = disk.steps
    assert total > 20, f"only {total} steps recorded"
    bad = []
    for n in crash_points(total, sample_size(DEFAULT_SAMPLE), seed=seed_of_run()):
        base = tmp_path / f"crash-{n}"
        with LocalDisk(base, crash_after=n) as disk:
            try:
                flow(base)
            except PowerLoss:
                pass
        if disk.after is None:
            bad.append(f"crash point {n}: the run made only {disk.steps} steps, the first {total}")
            continue
        for model in ("synced", "ordered"):
            where = f"power lost after step {n} ({disk.trace[n - 1]}), {model} disk"
            disk.restore(model)
            try:
                check(base, where)
                flow(base)
                assert outcome(base) == want, f"{where}: the rerun's output differs from the uncrashed run"
            except AssertionError as e:
                bad.append(str(e).splitlines()[0])
            except Exception as e:  # noqa: BLE001 - any error of the rerun is a broken invariant
                bad.append(f"{where}: the rerun failed: {type(e).__name__}: {str(e).splitlines()[0]}")
        shutil.rmtree(base)
    return bad


@pytest.mark.slow
def test_feature_pass_resumes_byte_identically_after_power_loss(planted, tmp_path):
    path, _ = planted

    def flow(base):
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

    def flow(base):
        base.mkdir(parents=True, exist_ok=True)
        flow.last = repr_run("pca", repr_store, state_dir=base / "state", commit_rows=1)

    def outcome(base):
        return {k: v.tobytes() for k, v in arrays(flow.last).items()}

    bad = _enumerate(tmp_path, flow, outcome, lambda base, where: None)
    assert not bad, verdict(bad)
