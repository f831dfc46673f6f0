"""Kill-and-resume of a real training process (helpers/train_run.py): run it once to the
end, then run it again, SIGKILLed at each chosen point (it stops itself there first, so the
kill never depends on the clock), rerun it to the end, and compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from . import zygote
from .paths import HELPERS

RUN = HELPERS / "train_run.py"


def run(store, out, arch: str, tokens: int, env: dict | None = None, stop: str | None = None):
    """Start train_run.py on ``store`` into ``out`` (one OpenMP thread; ``stop``: where it
    stops itself, see train_run.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}), **({"TRAIN_RUN_STOP": stop} if stop else {})}
    return zygote.Popen(
        [sys.executable, str(RUN), str(store), str(out), arch, str(tokens)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def log(out) -> list[dict]:
    """OUT/log.jsonl less its timings."""
    rows = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("tokens_per_s", None)
    return rows


def finish(p, steps: int) -> None:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and out.split() == ["done", str(steps)], err[-2000:]


def kill_and_resume(store, root, arch: str, steps: int, stops: list[str], env: dict | None = None):
    """An uninterrupted run into ``root/ref``, and one into ``root/kill`` SIGKILLed at each of
    ``stops`` then rerun to the end (``steps`` of 32 rows); asserts the same final weights and
    the same log. Returns the killed run's folder."""
    tokens = 32 * steps
    finish(run(store, root / "ref", arch, tokens, env), steps)
    killed = root / "kill"
    for stop in stops:
        p = run(store, killed, arch, tokens, env, stop)
        line = p.stdout.readline()
        if line.strip() != f"stopped {stop}":
            p.kill()
            pytest.fail(f"the run did not stop at {stop} (printed {line!r}): {p.communicate(timeout=60)[1][-2000:]}")
        p.send_signal(signal.SIGKILL)
        assert p.wait(timeout=60) == -signal.SIGKILL
    finish(run(store, killed, arch, tokens, env), steps)
    ref = root / "ref"
    assert (killed / "params-rank0.sha256").read_text() == (ref / "params-rank0.sha256").read_text(), (
        f"killed at {stops}: resumed weights differ"
    )
    assert log(killed) == log(ref), f"killed at {stops}: the log differs"
    return killed
