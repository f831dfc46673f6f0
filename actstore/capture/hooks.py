"""Hook points: resolving user specs to modules, and recording one forward pass.

A spec names a module by its path in ``model.named_modules()``:

- ``model.layers.3.mlp``: that module's output;
- ``model.layers.*.mlp``: ``*`` stands for exactly one path component (every layer);
- ``model.layers.3.mlp:input``: its first input instead (``:output`` is the default);
- TransformerLens hook names (``blocks.6.hook_resid_post``) are module paths too, since
  each hook is a ``HookPoint`` module whose output is the activation.

The stored hook name is the module path, with ``:input`` appended for inputs. An unknown
spec fails before any work, naming the closest valid paths.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..store.errors import CaptureError


@dataclass(frozen=True)
class HookPoint:
    """One captured tensor: ``module`` path, and whether its input or output is taken."""

    module: str
    input: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}:input" if self.input else self.module


def _split_specs(specs) -> list[str]:
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for s in specs:
        out += [p.strip() for p in str(s).split(",") if p.strip()]
    return out


def resolve_hooks(model: nn.Module, specs) -> list[HookPoint]:
    """Resolve ``specs`` (a string, comma-separated strings or a list) against ``model``.

    Returns the hook points in module order (``named_modules`` order, which follows the
    forward for transformers), without duplicates. Raises CaptureError for a spec that
    names no module.
    """
    names = [n for n, _ in model.named_modules() if n]
    order = {n: i for i, n in enumerate(names)}
    points: dict[HookPoint, None] = {}
    specs = _split_specs(specs)
    if not specs:
        raise CaptureError("no hooks given: pass --hooks with one or more module paths, e.g. 'model.layers.*.mlp'")
    for spec in specs:
        path, _, side = spec.partition(":")
        if side not in ("", "input", "output"):
            raise CaptureError(f"hook {spec!r}: the suffix must be ':input' or ':output', not ':{side}'")
        if "*" in path:
            rx = re.compile("^" + r"[^.]+".join(re.escape(p) for p in path.split("*")) + "$")
            found = [n for n in names if rx.match(n)]
        else:
            found = [path] if path in order else []
        if not found:
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.5) or _similar_depth(path, names)
            raise CaptureError(f"unknown hook {spec!r}: {type(model).__name__} has no module of that name; "
                               f"closest: {', '.join(close) or '(none)'}")
        for n in found:
            points[HookPoint(n, side == "input")] = None
    return sorted(points, key=lambda p: (order[p.module], p.input is False))


def _similar_depth(path: str, names: list[str]) -> list[str]:
    depth = path.count(".")
    return [n for n in names if n.count(".") == depth][:5]


class StopForward(Exception):
    """Raised inside the last hook to end the forward pass early."""


def _first_tensor(v):
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, (tuple, list)):
        for x in v:
            t = _first_tensor(x)
            if t is not None:
                return t
    if isinstance(v, dict):  # HF ModelOutput is a dict
        for x in v.values():
            t = _first_tensor(x)
            if t is not None:
                return t
    return None


class HookRecorder:
    """Registers the hooks, and runs forwards that stop once every hook has fired.

    ``run(fn)`` calls ``fn()`` (the model's forward) and returns ``{hook name: tensor}``.
    The forward ends right after the last needed module (StopForward is raised from its
    hook), so layers past the deepest hook never run. A module that runs twice in one
    forward keeps its first result.
    """

    def __init__(self, model: nn.Module, points: list[HookPoint], stop_early: bool = True):
        self.points = points
        self.stop_early = stop_early
        self._captured: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = []
        for p in points:
            mod = model.get_submodule(p.module)
            if p.input:
                self._handles.append(mod.register_forward_pre_hook(self._make_pre(p), with_kwargs=True))
            else:
                self._handles.append(mod.register_forward_hook(self._make_post(p)))

    def _record(self, p: HookPoint, value):
        if not self._active or p.name in self._captured:
            return  # outside run() the model behaves as if unhooked
        t = _first_tensor(value)
        if t is None:
            raise CaptureError(f"hook {p.name!r}: the module's {'input' if p.input else 'output'} holds no tensor")
        self._captured[p.name] = t.detach()
        if self.stop_early and len(self._captured) == len(self.points):
            raise StopForward

    def _make_pre(self, p):
        def hook(_mod, args, kwargs):
            self._record(p, (args, kwargs))
        return hook

    def _make_post(self, p):
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
            raise CaptureError(f"hooks {missing} did not run during the forward pass; hook modules that the model calls")
        out, self._captured = self._captured, {}
        return {p.name: out[p.name] for p in self.points}

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
