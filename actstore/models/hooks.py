"""Hook sites: resolving user specs to modules, and finding the tensor a hook sees.

A spec names a module by its path in ``model.named_modules()``:

- ``model.layers.3.mlp``: that module's output;
- ``model.layers.*.mlp``: ``*`` stands for exactly one path component (every layer);
- ``model.layers.3.mlp:input``: its first input instead (``:output`` is the default);
- TransformerLens hook names (``blocks.6.hook_resid_post``) are module paths too, since
  each of its hooks is a ``HookPoint`` module whose output is the activation.

The hook name (as stored by capture) is the module path, with ``:input`` appended for
inputs. An unknown spec fails before any work, naming the closest valid paths.

A module's output may be a tensor or a tuple/list/dict holding tensors (HF layers return
``(hidden, ...)``, HF models a ``ModelOutput``); the activation is its first tensor in
depth-first order. The same rule finds the first input in ``(args, kwargs)``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class HookSite:
    """One hooked tensor: ``module`` path, and whether its input or output is taken."""

    module: str
    input: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}:input" if self.input else self.module


# The earlier name; TransformerLens has a ``HookPoint`` module class, so the new one avoids the clash.
HookPoint = HookSite


def _split_specs(specs) -> list[str]:
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for s in specs:
        out += [p.strip() for p in str(s).split(",") if p.strip()]
    return out


def resolve_hooks(model: nn.Module, specs) -> list[HookSite]:
    """Resolve ``specs`` (a string, comma-separated strings or a list) against ``model``.

    Returns the hook sites in module order (``named_modules`` order, which follows the
    forward for transformers), without duplicates. Raises ModelError for a spec that
    names no module.
    """
    names = [n for n, _ in model.named_modules() if n]
    order = {n: i for i, n in enumerate(names)}
    sites: dict[HookSite, None] = {}
    specs = _split_specs(specs)
    if not specs:
        raise ModelError("no hooks given: pass --hooks with one or more module paths, e.g. 'model.layers.*.mlp'")
    for spec in specs:
        path, _, side = spec.partition(":")
        if side not in ("", "input", "output"):
            raise ModelError(f"hook {spec!r}: the suffix must be ':input' or ':output', not ':{side}'")
        if "*" in path:
            rx = re.compile("^" + r"[^.]+".join(re.escape(p) for p in path.split("*")) + "$")
            found = [n for n in names if rx.match(n)]
        else:
            found = [path] if path in order else []
        if not found:
            raise ModelError(_unknown(model, spec, path, names))
        for n in found:
            sites[HookSite(n, side == "input")] = None
    return sorted(sites, key=lambda p: (order[p.module], p.input is False))


def _unknown(model: nn.Module, spec: str, path: str, names: list[str]) -> str:
    """The one-line reason ``spec`` names no module of ``model``, with the paths to write instead.

    Two cases get more than a list of close names, since the close names alone mislead
    there: an index past the end of a numbered container (``model.layers.31`` on a 30-layer
    model; the close names would be ``model.layers.3`` and ``model.layers.21``) says how
    many there are, and a wildcard spec is matched against wildcard forms of the paths
    (``model.layers.*.mlpx`` -> ``model.layers.*.mlp``, not ``model.layers.0.mlp``)."""
    parts = path.split(".")
    note = ""
    for i, p in enumerate(parts):
        if not p.isdigit():
            continue
        prefix = ".".join(parts[:i]) + "." if i else ""
        held = sorted(int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit())
        if held and int(p) not in held:
            note = f" ({prefix[:-1] or 'the model'} holds {len(held)}, numbered {held[0]}-{held[-1]})"
            break
    close: list[str] = []
    if "*" in path:
        stars = [i for i, p in enumerate(parts) if "*" in p]
        starred = []
        for n in names:
            comps = n.split(".")
            if len(comps) == len(parts):
                starred.append(".".join("*" if i in stars else c for i, c in enumerate(comps)))
        close = difflib.get_close_matches(path, list(dict.fromkeys(starred)), n=5, cutoff=0.5)
    close = close or difflib.get_close_matches(path, names, n=5, cutoff=0.5) or _similar_depth(path, names)
    return (
        f"unknown hook {spec!r}: {type(model).__name__} has no module of that name{note}; "
        f"closest: {', '.join(close) or '(none)'}"
    )


def _similar_depth(path: str, names: list[str]) -> list[str]:
    depth = path.count(".")
    return [n for n in names if n.count(".") == depth][:5]


def first_tensor(v) -> torch.Tensor | None:
    """The first tensor in ``v`` (a tensor, or nested tuples/lists/dicts), depth first; None if there is none."""
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, (tuple, list)):
        for x in v:
            t = first_tensor(x)
            if t is not None:
                return t
    if isinstance(v, dict):  # HF ModelOutput is a dict
        for x in v.values():
            t = first_tensor(x)
            if t is not None:
                return t
    return None


_MISSING = object()


def replace_first_tensor(v, new: torch.Tensor):
    """``v`` with its first tensor (as :func:`first_tensor` finds it) replaced by ``new``.

    Tuples and lists are rebuilt (a tuple subclass such as a named tuple keeps its type);
    a dict (HF ``ModelOutput``) is updated in place, since ``ModelOutput`` keeps its
    attributes in step with its items only through ``__setitem__``."""
    out = _replace(v, new)
    if out is _MISSING:
        raise ModelError(f"no tensor to replace in a {type(v).__name__}")
    return out


def _replace(v, new):
    if isinstance(v, torch.Tensor):
        return new
    if isinstance(v, (tuple, list)):
        for i, x in enumerate(v):
            got = _replace(x, new)
            if got is not _MISSING:
                items = [*v[:i], got, *v[i + 1 :]]
                if isinstance(v, list):
                    return items
                return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
        return _MISSING
    if isinstance(v, dict):
        for k, x in v.items():
            got = _replace(x, new)
            if got is not _MISSING:
                v[k] = got
                return v
    return _MISSING


class SiteHooks:
    """Forward hooks at hook sites, with one lifetime: registered together at construction
    (all or none: a failure removes what was added), taken off by ``remove()`` or by leaving
    the ``with`` block. Subclasses give the hook functions: ``_make_pre(site, arg)`` for an
    input site, ``_make_post(site, arg)`` for an output site."""

    def _register(self, model: nn.Module, plan) -> None:
        """``plan``: ``[(HookSite, arg)]``; each site gets the hook made for it from ``arg``."""
        self._handles = []
        try:
            for site, arg in plan:
                mod = model.get_submodule(site.module)
                if site.input:
                    self._handles.append(mod.register_forward_pre_hook(self._make_pre(site, arg), with_kwargs=True))
                else:
                    self._handles.append(mod.register_forward_hook(self._make_post(site, arg)))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for h in getattr(self, "_handles", []):
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
