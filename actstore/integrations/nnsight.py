"""Capture from an nnsight ``LanguageModel``, naming modules as nnsight users do.

    from nnsight import LanguageModel
    from actstore.integrations.nnsight import capture

    lm = LanguageModel("path/to/gpt2", device_map="auto")
    capture(lm, [lm.transformer.h[5], "model.transformer.h[6].input", "transformer.h[*].mlp.output"],
            "docs.jsonl", "acts", tokens=10**6, context=128)

A hook is an ``Envoy`` (``lm.transformer.h[5]``: its output), an ``(Envoy, "input")`` pair,
or a string in nnsight's notation: an optional ``model.`` root, ``[i]`` indices (``[*]`` for
every index), and a final ``.output`` (the default), ``.output[0]`` or ``.input``.
``.output`` is the first tensor of what the module returns (``.output[0]`` for the tuples
older transformers return), ``.input`` the module's first input, as nnsight's
``.input``. A path the model lacks is a one-line IntegrationError naming the closest paths.

The capture itself is :func:`actstore.capture` on the model nnsight wraps (its
``_module``, dispatched first if nnsight loaded it lazily on the meta device), with the
LanguageModel's tokenizer: every capture option, the early stop after the deepest hook,
resume and ranks work as there. Hooks are stored under actstore's names
(``transformer.h.5``, ``transformer.h.6:input``); :func:`hook_names` gives them for a list of
nnsight specs, in the order given.
"""

from __future__ import annotations

import difflib
import re

from torch import nn

from ..capture import CaptureConfig
from ..capture import capture as _capture
from ..errors import IntegrationError

_SIDES = ("output", "input")
_INDEX = re.compile(r"\[(\d+|\*)\]")


def _torch_module(lm) -> nn.Module:
    """The ``nn.Module`` an nnsight model wraps, with real weights (dispatching a lazy model)."""
    if isinstance(lm, nn.Module) and not hasattr(lm, "trace"):
        return lm  # a plain torch model: nnsight-style names work on it too
    if getattr(lm, "dispatched", True) is False and hasattr(lm, "dispatch"):
        lm.dispatch()  # loaded on the meta device until its first trace; capture needs the weights
    for attr in ("_module", "_model"):  # nnsight >= 0.4, and 0.2-0.3
        try:
            mod = object.__getattribute__(lm, attr)
        except AttributeError:
            continue
        if isinstance(mod, nn.Module):
            return mod
    raise IntegrationError(
        f"{type(lm).__name__} is not an nnsight model holding a torch module; pass an nnsight LanguageModel"
    )


def _nnsight_path(module_path: str) -> str:
    """``transformer.h.5.mlp`` -> ``model.transformer.h[5].mlp`` (how nnsight users write it)."""
    out = "model"
    for part in module_path.split(".") if module_path else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _parse(spec) -> tuple[str, bool, str]:
    """One spec -> (actstore module path with ``*``, input?, the spec as written for messages)."""
    side = None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str):
        spec, side = spec
        if side not in _SIDES:
            raise IntegrationError(f"hook side {side!r}: use 'output' or 'input'")
    if not isinstance(spec, str):
        path = getattr(spec, "path", None)  # an Envoy: "model.transformer.h.5"
        if not isinstance(path, str):
            raise IntegrationError(
                f"hook {spec!r}: give an nnsight Envoy (lm.transformer.h[5]), a pair (envoy, 'input') or a "
                "string like 'model.transformer.h[5].output'"
            )
        written = path if side is None else f"{path}.{side}"
        parts = path.split(".")
    else:
        written = spec
        flat = _INDEX.sub(lambda m: "." + m.group(1), spec.strip())
        parts = [p for p in flat.split(".") if p != ""]
        if len(parts) >= 2 and parts[-2] == "output" and parts[-1] == "0" and side is None:
            parts = parts[:-1]  # .output[0]: the first tensor of a tuple output, what actstore takes anyway
        elif len(parts) >= 2 and parts[-2] in _SIDES and parts[-1].isdigit():
            raise IntegrationError(
                f"hook {spec!r}: actstore stores the first tensor of a module's {parts[-2]}; "
                f"use .{parts[-2]} or .{parts[-2]}[0]"
            )
        if parts and parts[-1] in _SIDES and side is None:
            side = parts.pop()
    if parts and parts[0] == "model":
        parts = parts[1:]  # nnsight names the root "model"
    return ".".join(parts), side == "input", written


def hook_names(model, hooks) -> list[str]:
    """actstore hook names (``transformer.h.5``, ``transformer.h.6:input``) for nnsight-style ``hooks``.

    ``model``: an nnsight model or a plain ``nn.Module``. Raises IntegrationError (one line)
    for a path the model lacks."""
    mod = _torch_module(model)
    names = [n for n, _ in mod.named_modules()]
    known = set(names)
    specs = hooks if isinstance(hooks, (list, tuple)) and not _is_pair(hooks) else [hooks]
    out: list[str] = []
    for spec in specs:
        path, is_input, written = _parse(spec)
        if "*" in path:
            rx = re.compile("^" + r"[^.]+".join(re.escape(p) for p in path.split("*")) + "$")
            found = [n for n in names if n and rx.match(n)]
        else:
            found = [path] if path in known else []
        if not found:
            close = difflib.get_close_matches(_nnsight_path(path), [_nnsight_path(n) for n in names if n], n=3)
            raise IntegrationError(
                f"nnsight path {written!r}: {type(mod).__name__} has no module {_nnsight_path(path)!r}; "
                f"closest: {', '.join(close) or '(none)'}"
            )
        for n in found:
            name = f"{n}:input" if is_input else n
            if name not in out:
                out.append(name)
    return out


def _is_pair(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str) and x[1] in _SIDES


def capture(model, hooks, data, out, config: CaptureConfig | None = None, *, tokenizer=None, **overrides) -> dict:
    """:func:`actstore.capture` from an nnsight model with nnsight-style ``hooks``; see the module docstring.

    Returns capture's summary, plus ``hooks``: the stored names in the order given."""
    mod = _torch_module(model)
    names = hook_names(mod, hooks)
    if tokenizer is None:
        try:
            tokenizer = model.tokenizer
        except AttributeError:
            tokenizer = None
    summary = _capture(mod, names, data, out, config, tokenizer=tokenizer, **overrides)
    summary["hooks"] = names
    return summary
