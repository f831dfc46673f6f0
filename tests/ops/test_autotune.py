"""The measuring dispatch on the CPU, with an injected clock: it picks the fastest median,
caches it per (op, device, shape class) in its JSON file, reuses it without timing again
(also in a new process), obeys ACTSTORE_<OP>, and names a damaged cache in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actstore.ops import _autotune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    p = tmp_path / "dispatch.json"
    monkeypatch.setenv("ACTSTORE_DISPATCH_CACHE", str(p))
    monkeypatch.delenv("ACTSTORE_TOY_OP", raising=False)
    _autotune._memo.clear()
    yield p
    _autotune._memo.clear()


class Clock:
    """Each candidate advances the clock by its own cost when it runs."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, costs, {k: 0 for k in costs}

    def __call__(self):
        return self.now

    def cands(self):
        def run(name):
            def f():
                self.calls[name] += 1
                self.now += self.costs[name]

            return f

        return {name: run(name) for name in self.costs}


def test_picks_the_fastest_and_caches_it(cache):
    clock = Clock({"fused": 3.0, "chunked": 1.0, "eager": 2.0})
    key = _autotune.shape_class(n=4000, d=4096, m=100000, k=32)
    assert key == "d=4096,k=32,m=131072,n=4096"
    assert _autotune.choose("toy_op", "cpu", key, clock.cands(), repeats=3, timer=clock) == "chunked"
    assert clock.calls == {"fused": 4, "chunked": 4, "eager": 4}  # one warm-up + 3 timed, each
    doc = json.loads(cache.read_text())
    entry = doc[f"toy_op|cpu|{key}"]
    assert entry["choice"] == "chunked" and entry["median_s"] == {"fused": 3.0, "chunked": 1.0, "eager": 2.0}
    # Known now: no more timing, in this process or a new one.
    assert _autotune.choose("toy_op", "cpu", key, clock.cands(), timer=clock) == "chunked"
    assert clock.calls["chunked"] == 4
    code = (
        "from actstore.ops import _autotune as a; "
        "print(a.choose('toy_op', 'cpu', %r, {'fused': lambda: 1/0, 'chunked': lambda: 1/0}))" % key
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "chunked", out.stderr
    # Another shape class or device is measured on its own.
    clock2 = Clock({"fused": 1.0, "chunked": 5.0})
    assert _autotune.choose("toy_op", "NVIDIA H200", key, clock2.cands(), timer=clock2) == "fused"
    assert {r["device"] for r in _autotune.table()} == {"cpu", "NVIDIA H200"}


def test_environment_forces_a_candidate(cache, monkeypatch):
    clock = Clock({"fused": 3.0, "chunked": 1.0})
    monkeypatch.setenv("ACTSTORE_TOY_OP", "fused")
    assert _autotune.choose("toy_op", "cpu", "k", clock.cands(), timer=clock) == "fused"
    assert clock.calls == {"fused": 0, "chunked": 0} and not cache.exists()
    monkeypatch.setenv("ACTSTORE_TOY_OP", "nope")
    with pytest.raises(_autotune.DispatchError, match="ACTSTORE_TOY_OP='nope' is not a candidate here"):
        _autotune.choose("toy_op", "cpu", "k", clock.cands(), timer=clock)


def test_damaged_cache_is_one_line(cache):
    cache.write_text("{not json")
    clock = Clock({"a": 1.0, "b": 2.0})
    with pytest.raises(_autotune.DispatchError, match="is damaged") as e:
        _autotune.choose("toy_op", "cpu", "k", clock.cands(), timer=clock)
    assert "\n" not in str(e.value) and "delete it" in str(e.value)
