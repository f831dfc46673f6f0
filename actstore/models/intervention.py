"""Intervention: add to, or replace, the activation at hook sites during forwards.

::

    with Intervention(model, {"model.layers.3": steer}, mode="add", positions=("after", prompt_len)):
        logits = model(ids)              # layer 3's output + steer at every position past the prompt

``edits`` maps hook specs (as :func:`~actstore.models.hooks.resolve_hooks` reads them:
``*`` wildcards, ``:input``) to a value: a tensor broadcastable to the activation
``[batch, seq, ...]`` (a ``[d]`` steering vector, a scalar 0 for ablation, a full
``[batch, seq, d]`` patch), or a function ``fn(act) -> tensor`` called on the activation
at each forward, whose result is used the same way. ``mode``: ``"add"`` gives
``act + value``, ``"replace"`` gives ``value``, at the chosen positions; every other
position keeps ``act`` bit for bit. ``positions`` selects along dim 1 (the sequence):

- ``None`` or ``"all"``: every position (then any activation shape works);
- an int, a slice, or a list / 1-D integer tensor of positions: those, in every row;
- a bool tensor ``[seq]`` or ``[batch, seq]``: where it is True;
- ``("after", i)``: positions strictly after ``i``, an int or an integer tensor ``[batch]``
  (one index per row, e.g. the last prompt token of each row).

The value is cast to the activation's dtype and device. The activation is the first
tensor of the module's output (or of its ``(args, kwargs)`` for ``:input``), which is
swapped for the edited one; the rest of a tuple output is passed on as it was. Hooks are
registered when the Intervention is made and removed by ``remove()`` or on leaving the
``with`` block, also when it is left by an exception. Interventions stack: hooks on the
same module run in the order they were registered, each seeing the previous one's result,
and a :class:`~actstore.models.recorder.HookRecorder` made afterwards records the edited tensor.
Hooks registered before it see the unedited one: transformers (v5) installs hooks that fill
``output_hidden_states`` on a model's first forward, so those report the activation before
the edit, while every later module computes from the edited one.
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import nn

from ..errors import ModelError
from .hooks import HookSite, SiteHooks, first_tensor, replace_first_tensor, resolve_hooks

Value = Union[torch.Tensor, float, int, Callable[[torch.Tensor], torch.Tensor]]
MODES = ("add", "replace")


class Intervention(SiteHooks):
    """Edit activations at hook sites while it is active; see the module docstring."""

    def __init__(self, model: nn.Module, edits: Mapping[str, Value], *, mode: str = "add", positions=None):
        if mode not in MODES:
            raise ModelError(f"intervention mode {mode!r}: use add or replace")
        if not edits:
            raise ModelError("no edits given: pass {hook spec: tensor or function}, e.g. {'model.layers.3': v}")
        self.mode = mode
        self.positions = positions
        self._check_positions(positions)
        # Resolve every spec before registering anything, so a bad spec leaves the model untouched.
        plan = [(site, value) for spec, value in edits.items() for site in resolve_hooks(model, spec)]
        self.sites = [site for site, _ in plan]
        self._register(model, plan)

    # -- hooks ----------------------------------------------------------------------------

    def _make_post(self, site: HookSite, value):
        def hook(_mod, _args, out):
            return replace_first_tensor(out, self._edit(site, _activation(site, out), value))

        return hook

    def _make_pre(self, site: HookSite, value):
        def hook(_mod, args, kwargs):
            kwargs = dict(kwargs)  # edited in place by replace_first_tensor: keep the caller's dict
            new = self._edit(site, _activation(site, (args, kwargs)), value)
            return replace_first_tensor((args, kwargs), new)

        return hook

    def _edit(self, site: HookSite, act: torch.Tensor, value) -> torch.Tensor:
        v = value(act) if callable(value) else value
        v = torch.as_tensor(v).to(device=act.device, dtype=act.dtype)
        try:
            shape = torch.broadcast_shapes(v.shape, act.shape)
        except RuntimeError:
            shape = None
        if shape != act.shape:
            raise ModelError(
                f"intervention at {site.name!r}: a value of shape {tuple(v.shape)} does not broadcast "
                f"to the activation's {tuple(act.shape)}; give [d], [seq, d] or [batch, seq, d]"
            )
        new = act + v if self.mode == "add" else v.expand(act.shape)
        mask = self._mask(site, act)
        return new if mask is None else torch.where(mask, new, act)

    # -- positions ------------------------------------------------------------------------

    @staticmethod
    def _check_positions(positions):
        if isinstance(positions, str) and positions != "all":
            raise ModelError(f"positions {positions!r}: use 'all', an index, a slice, indices, a mask or ('after', i)")
        if (
            isinstance(positions, tuple)
            and len(positions) == 2
            and isinstance(positions[0], str)
            and positions[0] != "after"
        ):
            raise ModelError(f"positions ({positions[0]!r}, ...): the only named selection is ('after', i)")

    def _mask(self, site: HookSite, act: torch.Tensor) -> torch.Tensor | None:
        """A bool mask broadcastable to ``act``: ``[batch or 1, seq, 1, ...]``; None for every position."""
        p = self.positions
        if p is None or (isinstance(p, str) and p == "all"):
            return None
        if act.dim() < 2:
            raise ModelError(
                f"intervention at {site.name!r}: positions need a [batch, seq, ...] activation, "
                f"this one is {tuple(act.shape)}"
            )
        B, S = act.shape[:2]
        dev = act.device
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):  # ("after", i)
            idx = torch.as_tensor(p[1], device=dev).long().reshape(-1)
            if idx.numel() not in (1, B):
                raise ModelError(
                    f"intervention at {site.name!r}: ('after', i) needs one index or one per row "
                    f"({B}), got {idx.numel()}"
                )
            mask = torch.arange(S, device=dev)[None, :] > idx[:, None]
        elif isinstance(p, torch.Tensor) and p.dtype == torch.bool:
            if tuple(p.shape) not in ((S,), (B, S)):
                raise ModelError(
                    f"intervention at {site.name!r}: a position mask must be [{S}] or [{B}, {S}], got {tuple(p.shape)}"
                )
            mask = p.to(dev).reshape(-1, S)
        else:  # an int, a slice, or indices: the same positions in every row
            sel = torch.zeros(S, dtype=torch.bool, device=dev)
            index = p if isinstance(p, (int, slice)) else torch.as_tensor(p, device=dev).long()
            try:
                sel[index] = True
            except IndexError:
                raise ModelError(
                    f"intervention at {site.name!r}: positions {p!r} are out of range for sequence length {S}"
                ) from None
            mask = sel[None, :]
        return mask.reshape(*mask.shape, *([1] * (act.dim() - 2)))


def _activation(site: HookSite, value) -> torch.Tensor:
    t = first_tensor(value)
    if t is None:
        raise ModelError(
            f"intervention at {site.name!r}: the module's {'input' if site.input else 'output'} holds no tensor"
        )
    return t
