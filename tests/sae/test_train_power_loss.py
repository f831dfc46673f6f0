"""The trainer's checkpoints under power loss: crash at every durable step of a run
(tests/helpers/power_loss.py), rebuild the disk as only-synced and as metadata-ordered,
rerun, and get the weights and the log of a run that never crashed, bit for bit.

Invariants after each crash: ``latest.json`` is absent or names a checkpoint whose every
file reads back (a run never resumes from a half-written one), and the rerun finishes
with exactly the uncrashed run's parameters and log lines.
"""

from __future__ import annotations

import json

import pytest
import torch

from actstore.sae import TrainConfig, train
from helpers.loader_store import build
from helpers.power_loss import count_steps, crash_each_step, sample_size, verdict

STEPS = 9
DEFAULT_SAMPLE = 40  # of ~130 points; ACTSTORE_POWER_LOSS_SAMPLE=all runs every one


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("plt") / "acts")


def _cfg(store, out) -> TrainConfig:
    return TrainConfig(
        store=str(store.path), hook="wide", arch="topk", latents=32, k=4, tokens=32 * STEPS, out=str(out),
        batch_size=32, lr=3e-3, warmup_steps=2, checkpoint_every=3, log_every=1, dead_tokens=200,
        buffer_rows=128, threads=1, eval_rows=64,
    )  # fmt: skip


def _result(out) -> dict:
    from actstore.sae import load

    sae = load(out / "sae")
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    for r in log:
        r.pop("tokens_per_s", None)
    return {"params": {k: v.clone() for k, v in sae.state_dict().items()}, "log": log}


def _check_pointer(out, where: str) -> None:
    latest = out / "latest.json"
    if not latest.exists():
        return
    try:
        ck = out / json.loads(latest.read_text())["checkpoint"]
    except (ValueError, KeyError) as e:
        raise AssertionError(f"{where}: latest.json is damaged ({e})") from None
    for name in ("trainer.json", "sae/config.json", "sae/sae.safetensors", "optimizer.json", "optimizer.safetensors"):
        f = ck / name
        assert f.is_file() and f.stat().st_size > 0, f"{where}: latest.json names {ck.name}, whose {name} is lost"


@pytest.mark.slow
def test_trainer_resumes_bit_identically_after_power_loss_at_every_step(store, tmp_path):
    torch.set_num_threads(1)
    ref = tmp_path / "ref" / "out"
    train(_cfg(store, ref), progress=False)
    want = _result(ref)

    def flow(base, ctx):
        train(_cfg(store, base / "out"), progress=False)

    def verify(base, where, ctx):
        out = base / "out"
        _check_pointer(out, where)
        train(_cfg(store, out), progress=False)
        got = _result(out)
        for k, v in want["params"].items():
            assert torch.equal(v, got["params"][k]), f"{where}: {k} differs from the uncrashed run"
        assert got["log"] == want["log"], f"{where}: the log differs from the uncrashed run"

    total = count_steps(tmp_path / "count", flow)
    assert total > 60, f"only {total} steps recorded"
    bad, missed = crash_each_step(tmp_path, flow, verify, total=total, sample=sample_size(DEFAULT_SAMPLE))
    assert not missed, f"crash points {missed} were never reached: the runs differ in length"
    assert not bad, verdict(bad)
