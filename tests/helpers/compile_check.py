"""torch.compile(fullgraph=True) of a loss over the SAE custom ops gives the eager gradients."""

from __future__ import annotations

import torch


def assert_compiled_grads_match(step, tensors, device) -> None:
    """``step(*leaves)`` -> scalar loss; compiled with aot_eager (traces the custom ops' fake
    and autograd registrations without a C++ toolchain run) and compared with eager."""

    def grads(fn):
        leaves = [t.clone().to(device).requires_grad_() for t in tensors]
        fn(*leaves).backward()
        return [t.grad.cpu() for t in leaves]

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for a, r in zip(grads(compiled), grads(step)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
