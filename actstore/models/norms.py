"""Where each hook sits relative to a normalization: found in one forward, not from names.

A transcoder (or an SAE fed to a layer's input) must know whether its stored input is what
the next layer reads. HF Llama's ``model.layers.15.mlp:input`` is the *output* of
``post_attention_layernorm`` (normalized, the RMSNorm gain applied), while
``model.layers.15.post_attention_layernorm:input`` is its *input* (the residual stream);
TransformerLens' ``blocks.15.ln2.hook_normalized`` is taken inside ``ln2``, before its gain
``w`` (and bias ``b``), unless the model was loaded with the norms folded (``LNPre``,
``RMSPre``), when it is the norm's output and the gain lives in the next layer's weights.

:func:`detect_norms` runs the model once (``forward()``, a few tokens) with temporary hooks
on every normalization module and on each hook site, and compares tensors, not names:

- the hooked tensor IS (same device, dtype, data pointer, shape and strides) the output of a
  norm module: ``norm="post"``, ``norm_gain_applied`` True when that module has a gain of its
  own (``weight`` or ``w``);
- it was produced inside a norm module's forward by one of its submodules (TransformerLens'
  ``hook_normalized``) and the module's output equals it times the gain plus the bias:
  ``"post"`` with ``norm_gain_applied`` False (None when the module has no gain);
- it IS the input of a norm module: ``"pre"``, ``norm_gain_applied`` False;
- none of these: every field None (unknown).

``norm_gain_folded`` describes ``norm_module``: True for a TransformerLens ``*Pre`` norm
(``LayerNormPre``, ``RMSNormPre``: its gain was folded into the following weights), False for a
norm with a gain of its own, None otherwise. A norm module is one whose class name ends in
``Norm`` (``LayerNorm``, ``LlamaRMSNorm``, ``GroupNorm``, ``BatchNorm1d``...) or ``NormPre``,
and whose submodules, if any, are TransformerLens ``HookPoint`` modules (a ``PreNorm`` wrapper
around a layer is not one). The forward stops as soon as every site is settled (a ``post``
site at once), or else when the first norm that runs after the last site has read its input
(a tensor that a norm reads, the residual stream, is read by the next norm that runs): at most one
norm past the deepest hook. Any failure gives unknown for every site: the detection never fails
a capture.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from ..store.format import NORM_FIELDS as FIELDS
from .hooks import HookSite, first_tensor
from .recorder import StopForward

log = logging.getLogger(__name__)

_NORM_CLASS = re.compile(r"Norm(?:\d+d)?(?:Pre)?$")


def unknown() -> dict:
    """The record of a hook whose place relative to a norm is not known (every field None)."""
    return dict.fromkeys(FIELDS)


def is_norm_module(mod: nn.Module) -> bool:
    """Whether ``mod`` is a normalization module (see the module docstring)."""
    if not _NORM_CLASS.search(type(mod).__name__):
        return False
    return all(type(c).__name__ == "HookPoint" for c in mod.children())


def _param(mod: nn.Module, *names: str) -> torch.Tensor | None:
    for n in names:
        p = getattr(mod, n, None)
        if isinstance(p, torch.Tensor):
            return p
    return None


def gain_folded(mod: nn.Module) -> bool | None:
    """True for a TransformerLens ``*Pre`` norm (gain folded into the next weights), False for a
    norm with a gain (``weight``/``w``) of its own, None when neither is known."""
    if _param(mod, "weight", "w") is not None:
        return False
    cls = type(mod)
    if cls.__module__.startswith("transformer_lens") and cls.__name__.endswith("Pre"):
        return True
    return None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same tensor: one memory, one shape (a view with other strides is not)."""
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def _gain_of(t: torch.Tensor, out: torch.Tensor, mod: nn.Module) -> bool:
    """Whether ``out`` (the norm's output) is ``t`` times the norm's gain plus its bias."""
    if t.shape != out.shape or not t.is_floating_point():
        return False
    w, b = _param(mod, "weight", "w"), _param(mod, "bias", "b")
    try:
        want = t.float()
        if w is not None:
            want = want * w.to(t.device, torch.float32)
        if b is not None:
            want = want + b.to(t.device, torch.float32)
        tol = 1e-5 if min(t.dtype.itemsize, out.dtype.itemsize) >= 4 else 2e-2
        return bool(torch.allclose(want, out.float(), rtol=tol, atol=tol))
    except (RuntimeError, NotImplementedError):  # a gain that does not broadcast, or offloaded (meta)
        return False


class _Probe:
    """The hooks of one detection forward and what they saw."""

    def __init__(self, model: nn.Module, sites: list[HookSite]):
        self.sites = sites
        self.norms = {n: m for n, m in model.named_modules() if n and is_norm_module(m)}
        self.inputs: list[tuple[str, torch.Tensor]] = []  # every norm call's input, in call order
        self.outputs: list[tuple[str, torch.Tensor]] = []  # and output (held: no address is reused)
        self.active: list[tuple[str, int]] = []  # the norm calls running now: (path, call number)
        self.calls = 0
        self.seen: dict[str, tuple[torch.Tensor, tuple]] = {}  # site -> (tensor, norm calls around it)
        self.found: dict[str, dict] = {}
        self.handles = []
        try:
            for path, mod in self.norms.items():
                # prepend: these run before any other hook on the module (the site's own included)
                self.handles.append(mod.register_forward_pre_hook(self._norm_pre(path), with_kwargs=True, prepend=True))
                self.handles.append(mod.register_forward_hook(self._norm_post(path), prepend=True))
            for s in sites:
                mod = model.get_submodule(s.module)
                if s.input:
                    self.handles.append(mod.register_forward_pre_hook(self._site_pre(s), with_kwargs=True))
                else:
                    self.handles.append(mod.register_forward_hook(self._site_post(s)))
        except BaseException:
            self.remove()
            raise

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _post(self, path: str, own_output: bool) -> dict:
        has_gain = _param(self.norms[path], "weight", "w") is not None
        return {
            "norm": "post",
            "norm_module": path,
            "norm_gain_folded": gain_folded(self.norms[path]),
            "norm_gain_applied": own_output if has_gain else None,
        }

    def _pre(self, path: str) -> dict:
        return {
            "norm": "pre",
            "norm_module": path,
            "norm_gain_folded": gain_folded(self.norms[path]),
            "norm_gain_applied": False,
        }

    def _stop_if_settled(self):
        if not self.active and len(self.seen) == len(self.sites) and len(self.found) == len(self.sites):
            raise StopForward

    # -- hooks -------------------------------------------------------------------------------

    def _norm_pre(self, path):
        def hook(_mod, args, kwargs):
            t = first_tensor((args, kwargs))
            outermost = not self.active
            self.calls += 1
            self.active.append((path, self.calls))
            if t is not None:
                self.inputs.append((path, t))
                for name, (st, _) in self.seen.items():
                    if name not in self.found and _same(st, t):
                        self.found[name] = self._pre(path)
            if outermost and len(self.seen) == len(self.sites):
                # The first norm past the last site has read its input: a tensor that feeds a norm
                # (the residual stream) feeds the next one, so what is unsettled now stays unknown.
                raise StopForward

        return hook

    def _norm_post(self, path):
        def hook(mod, _args, out):
            call = self.active.pop() if self.active and self.active[-1][0] == path else None
            t = first_tensor(out)
            if t is not None:
                self.outputs.append((path, t))
                for name, (st, around) in self.seen.items():
                    if (self.found.get(name) or {}).get("norm") == "post":
                        continue
                    if _same(st, t):
                        self.found[name] = self._post(path, own_output=True)
                    elif call is not None and call in around and _gain_of(st, t, mod):
                        self.found[name] = self._post(path, own_output=False)
            self._stop_if_settled()

        return hook

    def _site(self, s: HookSite, value):
        if s.name in self.seen:
            return  # a module run twice keeps its first tensor, as the recorder does
        t = first_tensor(value)
        if t is None:
            return
        # the norm calls this site ran inside, when it is a submodule of them (hook_normalized)
        around = tuple(c for c in self.active if s.module.startswith(c[0] + "."))
        self.seen[s.name] = (t, around)
        post = next((p for p, o in self.outputs if _same(t, o)), None)
        pre = next((p for p, i in self.inputs if _same(t, i)), None)
        if post is not None:
            self.found[s.name] = self._post(post, own_output=True)
        elif pre is not None:
            self.found[s.name] = self._pre(pre)
        self._stop_if_settled()

    def _site_pre(self, s):
        def hook(_mod, args, kwargs):
            self._site(s, (args, kwargs))

        return hook

    def _site_post(self, s):
        def hook(_mod, _args, out):
            self._site(s, out)

        return hook


def detect_norms(model: nn.Module, sites: list[HookSite], forward) -> dict[str, dict]:
    """``{site name: {"norm", "norm_module", "norm_gain_folded", "norm_gain_applied"}}`` for
    every site, from one call of ``forward()`` (the model run on a few tokens).

    ``norm``: ``"post"`` (the site's tensor is a norm's output: what the next layer reads), or
    ``"pre"`` (it is a norm's input), or None (neither, or unknown); ``norm_module`` the norm's
    module path; ``norm_gain_folded`` and ``norm_gain_applied`` as the module docstring says.
    Never raises (but KeyboardInterrupt): a failure gives every site :func:`unknown`.
    """
    out = {s.name: unknown() for s in sites}
    probe = None
    try:
        probe = _Probe(model, sites)
        if not probe.norms:
            return out
        with torch.inference_mode():
            try:
                forward()
            except StopForward:
                pass
        for name, rec in probe.found.items():
            out[name] = rec
    except Exception as e:  # noqa: BLE001 - provenance only: never fail a capture for it
        log.debug("norm detection failed (%s: %s); recorded as unknown", type(e).__name__, e)
        return {s.name: unknown() for s in sites}
    finally:
        if probe is not None:
            probe.remove()
    return out
