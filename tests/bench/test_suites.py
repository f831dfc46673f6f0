"""Each ``actstore bench`` suite at a tiny size on the CPU: its variants agree, it times
them and reports rates and ratios; a planted wrong op fails the check before timing."""

from __future__ import annotations

import pytest

from actstore import bench
from actstore.bench import kernels, loader, store
from actstore.bench.harness import BenchError

TINY = {
    "store": {"rows": 2048, "d": 32},
    "loader": {"rows": 2048, "d": 32, "batch_size": 128},
    "kernels": {"n": 64, "d": 32, "m": 256, "k": 4},
    "capture": {"layers": 2, "d": 64, "seqs": 4, "context": 16, "batch_size": 2},
}


@pytest.mark.slow  # ~10-20 s each; tests/cli/test_bench.py runs every suite at a tiny size in the fast set
@pytest.mark.parametrize("suite", list(bench.SUITES))
def test_suite_runs_checks_and_reports(suite):
    doc = bench.run([suite], "cpu", options={suite: {**TINY[suite], "repeats": 2}})
    assert doc["meta"]["machine"]["cpu_count"] >= 1
    for res in doc["results"]:
        assert res["check"]["reference"] and all(e <= res["check"]["rtol"] for e in res["check"]["rel_err"].values())
        assert len(res["variants"]) >= 2 and all(f["rate"] > 0 and f["repeats"] == 2 for f in res["variants"].values())
        assert res["ratios"] and all(r["of_medians"] > 0 for r in res["ratios"].values())
        assert bench.table(res).count("\n") >= len(res["variants"]) + 2
    if suite == "store":
        assert doc["results"][0]["check"]["rel_err"] == {
            "store (write, read back)": 0.0,
            "store (non-durable write, read back)": 0.0,
            "codec (encode, decode)": 0.0,
        }
    if suite == "loader":
        assert doc["results"][0]["variants"]["loader"]["batches_per_s"] > 0


def test_a_wrong_decode_kernel_fails_the_check(monkeypatch):
    real = kernels.sparse_decode
    monkeypatch.setattr(kernels, "sparse_decode", lambda *a, **kw: real(*a, **kw) * 1.01)  # planted: 1% off
    said = []
    # the kernel check (the Triton path, under the interpreter on a CPU) runs first and sees it
    with pytest.raises(
        BenchError, match="variant decode_(triton|actstore) computes a different result from decode_eager"
    ):
        kernels.run(**TINY["kernels"], repeats=1, progress=said.append)
    assert not any("timing" in s for s in said)  # nothing was timed: every op is checked first


def test_a_store_that_reads_back_other_bytes_fails_the_check(monkeypatch):
    real_open = store.open_store

    class Lossy:  # the store as opened by the suite, but its read drops the last row's bits
        def __init__(self, path):
            self.s = real_open(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.s.close()

        def __getattr__(self, name):
            return getattr(self.__dict__["s"], name)

        def read(self, hook, **kw):
            x = self.s.read(hook, **kw).clone()
            x[-1] = 0
            return x

    monkeypatch.setattr(store, "open_store", Lossy)
    with pytest.raises(BenchError, match="variant store"):
        store.run(**TINY["store"], repeats=1)


def test_the_store_suite_times_durable_writes_as_create_gives_them(monkeypatch):
    # What a user's write costs: create's default is durable (fsync before each rename), so the
    # timed store_write fsyncs; the no-fsync variant is there only under its own label.
    import inspect
    import os

    from actstore import api

    assert inspect.signature(api.create).parameters["durable"].default is True
    fsyncs = {}
    real_fsync, real_compare = os.fsync, store.compare

    def spy(name, variants, **kw):  # one call of each write variant, fsyncs counted
        for v in ("store_write", "store_write_nondurable"):
            n = [0]
            monkeypatch.setattr(os, "fsync", lambda fd, n=n: (n.__setitem__(0, n[0] + 1), real_fsync(fd))[1])
            variants[v]()
            monkeypatch.setattr(os, "fsync", real_fsync)
            fsyncs[v] = n[0]
        return real_compare(name, variants, **kw)

    monkeypatch.setattr(store, "compare", spy)
    res = store.run(**TINY["store"], repeats=1)
    assert fsyncs["store_write"] > 0 and fsyncs["store_write_nondurable"] == 0
    assert (
        res["params"]["store_write"].startswith("durable")
        and "not what create gives" in res["params"]["store_write_nondurable"]
    )
    assert set(res["ratios"]) == {
        "write / codec ceiling",
        "non-durable write (no fsync) / codec ceiling",
        "read / codec ceiling",
    }


def test_a_loader_that_loses_rows_fails_the_check(monkeypatch):
    class Skipping(loader.ActivationLoader):
        def __iter__(self):
            it = super().__iter__()
            next(it)  # planted: the first batch never arrives
            return it

    monkeypatch.setattr(loader, "ActivationLoader", Skipping)
    with pytest.raises(BenchError, match="variant loader"):
        loader.run(**TINY["loader"], repeats=1)


def test_a_device_that_is_not_there_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(BenchError) as e:
        bench.run(["store"], "cuda")
    assert "device 'cuda' is not there" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BenchError, match="unknown bench suite"):
        bench.run(["disk"], "cpu")
