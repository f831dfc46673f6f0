"""``actstore bench kernels`` checks what it times: the loss and each gradient on its own (a
pooled norm is the loss's: a dropped gradient passed), and on a CPU the Triton kernels
themselves under the interpreter (the ops' CPU path is the reference, so comparing it with
eager compared a function with itself). Every planted bug below fails the check before
anything is timed."""

from __future__ import annotations

import os
import textwrap

import pytest
import torch

from actstore.bench import kernels
from actstore.bench.harness import BenchError, table

CPU = torch.device("cpu")
TINY = {"n": 64, "d": 32, "m": 256, "k": 4}


class _DropGrad(torch.autograd.Function):
    """Identity forward, all-zero gradient: the planted broken backward."""

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return torch.zeros_like(g)


def _plant_dropped_grad(monkeypatch, param: str) -> None:
    real = kernels.topk_encode

    def broken(x, W_enc, b_enc, k, **kw):
        if param == "W_enc":
            W_enc = _DropGrad.apply(W_enc)
        else:
            b_enc = _DropGrad.apply(b_enc)
        return real(x, W_enc, b_enc, k, **kw)

    monkeypatch.setattr(kernels, "topk_encode", broken)


def _pooled(out: dict, ref: dict) -> float:
    """The check before: every tensor of the step pooled into one norm."""
    num = sum(float((out[k].double() - ref[k].double()).pow(2).sum()) for k in ref) ** 0.5
    return num / sum(float(ref[k].double().pow(2).sum()) for k in ref) ** 0.5


@pytest.mark.parametrize("param", ["W_enc", "b_enc"])
def test_a_step_that_drops_a_gradient_fails_the_check(monkeypatch, param):
    _plant_dropped_grad(monkeypatch, param)
    # At this shape the loss is 99.8% of the pooled norm: a zero b_enc gradient moved it by
    # 0.8%, inside the step's 2% tolerance (at the CLI's default shape, a zero W_enc gradient
    # moved it by 1.6%). Checked on its own, the gradient is 100% off.
    x, params = kernels._inputs(1024, 256, 2048, 32, CPU)
    step = kernels._ops(x, params, 32, CPU)["step"]
    ref, out = step["eager"](), step["actstore"]()  # each call sets new .grad tensors
    if param == "b_enc":
        assert _pooled(out, ref) < kernels.RTOL["step"]  # what the pooled check let through
    with pytest.raises(BenchError, match=rf"variant step_actstore computes .* \({param}\.grad: relative error 1,"):
        kernels._check({"step": step}, kernels.RTOL, None, "the timed variants")
    said = []
    with pytest.raises(BenchError, match=rf"{param}\.grad: relative error 1,"):
        kernels.run(**TINY, repeats=1, progress=said.append)
    assert not any("timing" in s for s in said)


def _plant_kernel(monkeypatch, where: str) -> str:
    """A wrong Triton kernel, which only the Triton path runs: its forward (the fused
    encoder's values 1% off) or its backward (the decoder gradient halved)."""
    if where == "forward":
        import actstore.kernels.topk_encode as mod

        real = mod.topk_encode_fwd

        def wrong(*a, **kw):
            v, i, av, ai = real(*a, **kw)
            return v * 1.01, i, av, ai

        monkeypatch.setattr(mod, "topk_encode_fwd", wrong)
        return r"variant encode_triton computes a different result from encode_eager \((values|reconstruction):"
    import actstore.kernels.csr_transpose_matmul as mod

    real = mod.csr_transpose_matmul_fwd

    def halved(*a, **kw):
        gw, gb = real(*a, **kw)
        return gw * 0.5, gb

    monkeypatch.setattr(mod, "csr_transpose_matmul_fwd", halved)
    return r"variant step_triton computes a different result from step_eager \(W_dec\.grad:"


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_on_a_cpu_the_check_runs_the_triton_kernels_not_the_reference(monkeypatch, where):
    if torch.cuda.is_available():
        pytest.skip("the interpreter check is the CPU's; on CUDA the timed shape runs the kernels")
    assert os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py: the check runs in this process
    match = _plant_kernel(monkeypatch, where)
    # The timed variants alone do not see it: on a CPU the ops take the reference.
    x, params = kernels._inputs(**TINY, dev=CPU)
    kernels._check(kernels._ops(x, params, TINY["k"], CPU), kernels.RTOL, None, "the timed variants")
    said = []
    with pytest.raises(BenchError, match=match):
        kernels.run(**TINY, repeats=1, progress=said.append)
    assert not any("timing" in s for s in said)


def test_a_clean_run_records_both_checks_per_tensor():
    res = {r["suite"]: r for r in kernels.run(**TINY, repeats=1)}
    step = res["kernels step"]["check"]
    assert set(step["rel_err_each"]["step_actstore"]) == {
        "loss",
        "W_enc.grad",
        "b_enc.grad",
        "W_dec.grad",
        "b_dec.grad",
    }
    if not torch.cuda.is_available():
        kernel = step["kernel"]
        assert kernel["backend"] == "triton (TRITON_INTERPRET=1)" and kernel["shape"] == kernels.KERNEL_CHECK_SHAPE
        assert (
            max(kernel["rel_err_each"]["step_triton"].values()) <= kernel["rtol"] == kernels.KERNEL_CHECK_RTOL["step"]
        )
        assert "kernels checked, triton (TRITON_INTERPRET=1) at n=48 d=40 m=320 k=6" in table(res["kernels step"])


@pytest.mark.slow  # two child Pythons (torch import + ~3 s of interpreter each)
def test_without_the_interpreter_set_the_check_runs_in_a_child_that_sets_it(monkeypatch, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the interpreter check is the CPU's")
    monkeypatch.delenv("TRITON_INTERPRET")  # as the CLI runs
    got = kernels.check_kernels(CPU, **TINY)
    assert got["backend"] == "triton (TRITON_INTERPRET=1)" and got["shape"] == kernels.KERNEL_CHECK_SHAPE
    assert all(
        c["rel_err"]["step_triton" if op == "step" else f"{op}_triton"] <= c["rtol"] for op, c in got["ops"].items()
    )
    # The same planted backward kernel as above, in the child (sitecustomize runs at its start).
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import actstore.kernels.csr_transpose_matmul as mod
            _real = mod.csr_transpose_matmul_fwd
            mod.csr_transpose_matmul_fwd = lambda *a, **kw: (lambda gw, gb: (gw * 0.5, gb))(*_real(*a, **kw))
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(BenchError, match=r"variant step_triton computes .* \(W_dec\.grad:") as e:
        kernels.check_kernels(CPU, **TINY)
    assert "\n" not in str(e.value)
    assert "TRITON_INTERPRET" not in os.environ
