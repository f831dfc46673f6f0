"""HookRecorder: record the tensors at hook sites during one forward, stopping it early.

``run(fn)`` calls ``fn()`` (the model's forward) and returns ``{hook name: tensor}``, each
the tensor the module gave (``[batch, seq, ...]`` for transformer hooks), detached, on the
model's device and in its dtype. With ``stop_early`` the forward ends right after the last
needed module (StopForward is raised from its hook), so layers past the deepest hook never
run. A module that runs twice in one forward keeps its first result. Outside ``run()`` the
hooks do nothing. An :class:`~actstore.models.intervention.Intervention` entered before the
recorder on the same module is applied first: the recorder sees the edited tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .hooks import HookSite, SiteHooks, first_tensor


class StopForward(Exception):
    """Raised inside the last hook to end the forward pass early."""


class HookRecorder(SiteHooks):
    """Registers forward (pre-)hooks at ``points`` of ``model`` at construction; ``remove()`` or
    leaving the ``with`` block takes them off."""

    def __init__(self, model: nn.Module, points: list[HookSite], stop_early: bool = True):
        self.points = points
        self.stop_early = stop_early
        self._captured: dict[str, torch.Tensor] = {}
        self._active = False
        self._register(model, [(p, None) for p in points])

    def _record(self, p: HookSite, value):
        if not self._active or p.name in self._captured:
            return  # outside run() the model behaves as if unhooked
        t = first_tensor(value)
        if t is None:
            raise ModelError(f"hook {p.name!r}: the module's {'input' if p.input else 'output'} holds no tensor")
        self._captured[p.name] = t.detach()
        if self.stop_early and len(self._captured) == len(self.points):
            raise StopForward

    def _make_pre(self, p, _arg=None):
        def hook(_mod, args, kwargs):
            self._record(p, (args, kwargs))

        return hook

    def _make_post(self, p, _arg=None):
        def hook(_mod, _args, out):
            self._record(p, out)

        return hook

    def run(self, fn) -> dict[str, torch.Tensor]:
        self._captured = {}
        self._active = True
        try:
            fn()
        except StopForward:
            pass
        finally:
            self._active = False
        missing = [p.name for p in self.points if p.name not in self._captured]
        if missing:
            raise ModelError(f"hooks {missing} did not run during the forward pass; hook modules that the model calls")
        out, self._captured = self._captured, {}
        return {p.name: out[p.name] for p in self.points}
