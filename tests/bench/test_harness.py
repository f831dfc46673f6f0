"""The bench harness: the correctness check stops a planted wrong variant before any
timing, the round-robin order, and the figures and ratios of a comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.bench.harness import BenchError, check_same, compare, interleaved, metadata, table


def test_check_same_names_the_first_variant_that_differs():
    x = torch.randn(8, 4)
    assert check_same({"ref": x, "same": x.clone(), "array": x.numpy().copy()}) == {"same": 0.0, "array": 0.0}
    with pytest.raises(BenchError) as e:
        check_same({"ref": x, "same": x.clone(), "wrong": x + 1e-3, "also_wrong": -x})
    msg = str(e.value)
    assert "variant wrong computes a different result from ref" in msg and "\n" not in msg
    with pytest.raises(BenchError, match="other shapes"):
        check_same({"ref": (x, x), "short": (x,)})
    assert check_same({"ref": {"a": x}, "near": {"a": x * (1 + 1e-6)}}, rtol=1e-5)["near"] < 1e-5


def test_a_planted_wrong_variant_stops_the_comparison_before_any_timing():
    timed = []
    x = np.arange(10.0)
    with pytest.raises(BenchError, match="variant planted"):
        compare(
            "t",
            {"good": lambda: timed.append("good"), "planted": lambda: timed.append("planted")},
            work=1.0,
            unit="op/s",
            ratios={},
            outputs={"good": lambda: x * 2, "planted": lambda: x * 2 + (x == 7)},  # one element off
        )
    assert timed == []


def test_interleaved_rotates_the_order_each_round():
    order = []
    interleaved({n: (lambda n=n: order.append(n)) for n in "abc"}, repeats=2, warmup=1, collect="round")
    assert order == list("abc") + list("bca") + list("cab")


def test_compare_reports_rates_ratios_and_a_table():
    ticks = iter(range(1000))
    res = compare(
        "demo",
        {"slow": lambda: None, "fast": lambda: None},
        work={"slow": 1.0, "fast": 4.0},
        unit="op/s",
        ratios={"fast / slow": ("fast", "slow")},
        outputs={"slow": lambda: torch.ones(3), "fast": lambda: torch.ones(3)},
        repeats=3,
        measure=lambda fn: (fn(), 0.5 + 0 * next(ticks))[1],  # every call "takes" 0.5 s
        params={"n": 3},
    )
    assert res["variants"]["slow"]["rate"] == 2.0 and res["variants"]["fast"]["rate"] == 8.0
    assert res["variants"]["fast"]["repeats"] == 3 and res["variants"]["fast"]["spread"] == 0.0
    assert res["ratios"]["fast / slow"]["of_medians"] == 4.0 == res["ratios"]["fast / slow"]["median_of_rounds"]
    assert res["check"] == {"reference": "slow", "rel_err": {"fast": 0.0}, "rtol": 0.0}
    text = table(res)
    assert "fast / slow: 4x" in text and "8 op/s" in text and text.splitlines()[0].split()[0] == "demo"


def test_metadata_has_the_machine_and_the_versions():
    m = metadata(torch.device("cpu"))
    assert m["machine"]["cpu_count"] >= 1 and m["machine"]["gpu"] is None
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["actstore"]


def test_check_same_checks_each_tensor_on_its_own():
    # A loss 1000x the gradient's norm: pooled, a gradient of all zeros was 0.1% off.
    loss, grad = torch.tensor([1000.0]), torch.randn(16)
    grad = grad / grad.norm()
    ref = {"loss": loss, "grad": grad}
    assert check_same({"ref": ref, "same": {"loss": loss.clone(), "grad": grad.clone()}}, rtol=1e-2, each=True) == {
        "same": {"grad": 0.0, "loss": 0.0}
    }
    with pytest.raises(
        BenchError, match=r"variant zeroed computes a different result from ref \(grad: relative error 1,"
    ):
        check_same({"ref": ref, "zeroed": {"loss": loss, "grad": torch.zeros(16)}}, rtol=1e-2)
    with pytest.raises(BenchError, match=r"\(\[1\]: relative error"):  # a tuple's tensors are named by position
        check_same({"ref": (loss, grad), "zeroed": (loss, torch.zeros(16))}, rtol=1e-2)
