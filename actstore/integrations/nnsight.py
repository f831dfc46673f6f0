"""Capture from an nnsight model, naming modules as nnsight users do.

    from nnsight import TransformersModel
    from actstore.integrations.nnsight import capture

    lm = TransformersModel("path/to/gpt2", task="text-generation", device_map="auto")
    capture(lm, [lm.transformer.h[5], "model.transformer.h[6].input", "transformer.h[*].mlp.output"],
            "docs.jsonl", "acts", tokens=10**6, context=128)

The model is nnsight's ``TransformersModel`` (what nnsight 0.8 recommends) or its deprecated
alias ``LanguageModel``, or a plain ``nn.Module``.

A hook is an ``Envoy`` (``lm.transformer.h[5]``: its output), an ``(Envoy, "input")`` pair,
or a string in nnsight's notation: an optional ``model.`` root, ``[i]`` indices (``[*]`` for
every index), and a final ``.output`` (the default), ``.output[0]`` or ``.input``.
``.output`` is the first tensor of what the module returns, ``.input`` the module's first
input, as nnsight's ``.input``. ``.output[0]`` means what it means in nnsight: element 0 of
the output. For a module that returns a tuple whose element 0 is that first tensor (an
attention layer) it is taken as ``.output``; for a module that returns a tensor (a GPT-2
block with transformers >= 5) nnsight's ``.output[0]`` is batch element 0, so it is
refused in one line that says to write ``.output``. What a module returns is seen in a
2-token forward, run only when a hook is written with ``.output[0]``. A path the model
lacks is a one-line IntegrationError naming the closest paths.

The capture itself is :func:`actstore.capture` on the model nnsight wraps (its
``_module``, dispatched first if nnsight loaded it lazily on the meta device), with the
model's tokenizer: every capture option, the early stop after the deepest hook,
resume and ranks work as there. Hooks are stored under actstore's names
(``transformer.h.5``, ``transformer.h.6:input``); :func:`hook_names` gives them for a list of
nnsight specs, in the order given.
"""

from __future__ import annotations

import difflib
import re

import torch
from torch import nn

from ..capture import CaptureConfig
from ..capture import capture as _capture
from ..errors import IntegrationError
from ..models.hooks import first_tensor

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
        f"{type(lm).__name__} is not an nnsight model holding a torch module; "
        "pass an nnsight TransformersModel (or LanguageModel)"
    )


def _nnsight_path(module_path: str) -> str:
    """``transformer.h.5.mlp`` -> ``model.transformer.h[5].mlp`` (how nnsight users write it)."""
    out = "model"
    for part in module_path.split(".") if module_path else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _parse(spec) -> tuple[str, bool, str, bool]:
    """One spec -> (actstore module path with ``*``, input?, the spec as written for messages,
    written as ``.output[0]``?)."""
    side = None
    element0 = False
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
            # nnsight's element 0 of the output: checked against what the module returns (hook_names)
            parts, element0 = parts[:-1], True
        elif len(parts) >= 2 and parts[-2] in _SIDES and parts[-1].isdigit():
            raise IntegrationError(
                f"hook {spec!r}: actstore stores the first tensor of a module's {parts[-2]}; "
                f"use .{parts[-2]} (or .output[0] where the module returns a tuple)"
            )
        if parts and parts[-1] in _SIDES and side is None:
            side = parts.pop()
    if parts and parts[0] == "model":
        parts = parts[1:]  # nnsight names the root "model"
    return ".".join(parts), side == "input", written, element0


def _outputs(mod: nn.Module, names: list[str]) -> dict[str, object]:
    """What each module in ``names`` returns in a 2-token forward of ``mod`` (batch 1)."""
    seen: dict[str, object] = {}
    handles = [
        mod.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: seen.setdefault(n, out)) for n in names
    ]
    try:
        p = next(mod.parameters(), None)
        ids = torch.zeros((1, 2), dtype=torch.long, device=p.device if p is not None else "cpu")
        with torch.inference_mode():
            mod(input_ids=ids)
    except Exception as e:  # noqa: BLE001 - any failure: say what to write instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise IntegrationError(
            f"cannot tell what {', '.join(map(_nnsight_path, names))} return(s): a 2-token forward failed "
            f"({type(e).__name__}: {first}); write .output (the first tensor the module returns)"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return seen


def _check_element0(mod: nn.Module, specs: list[tuple[str, list[str]]]) -> None:
    """``.output[0]`` as nnsight means it: element 0 of the output. Accepted where that is the
    first tensor of a tuple (what actstore stores); a tensor output's element 0 is batch
    element 0 in nnsight, which is not a per-token activation: refused, saying what to write.
    ``specs``: (the spec as written, the modules it names); one forward serves them all."""
    seen = _outputs(mod, sorted({n for _, found in specs for n in found}))
    for written, found in specs:
        _check_outputs(written, {n: seen[n] for n in found if n in seen})


def _check_outputs(written: str, outputs: dict[str, object]) -> None:
    plain = written[: -len("[0]")]
    for n, out in outputs.items():
        if isinstance(out, torch.Tensor):
            raise IntegrationError(
                f"hook {written!r}: {_nnsight_path(n)} returns a tensor, so in nnsight .output[0] is batch "
                f"element 0 (transformers >= 5 blocks return a tensor, not a tuple); write {plain!r}"
            )
        try:
            elem = out[0]
        except (TypeError, IndexError, KeyError):
            elem = None
        if not isinstance(elem, torch.Tensor) or elem is not first_tensor(out):
            raise IntegrationError(
                f"hook {written!r}: element 0 of what {_nnsight_path(n)} returns ({type(out).__name__}) is "
                f"not its first tensor, which actstore stores; write {plain!r}"
            )


def hook_names(model, hooks) -> list[str]:
    """actstore hook names (``transformer.h.5``, ``transformer.h.6:input``) for nnsight-style ``hooks``.

    ``model``: an nnsight model or a plain ``nn.Module``. Raises IntegrationError (one line)
    for a path the model lacks, and for ``.output[0]`` where nnsight's element 0 is not the
    module's first output tensor (one 2-token forward tells)."""
    mod = _torch_module(model)
    names = [n for n, _ in mod.named_modules()]
    known = set(names)
    specs = hooks if isinstance(hooks, (list, tuple)) and not _is_pair(hooks) else [hooks]
    out: list[str] = []
    element0_specs: list[tuple[str, list[str]]] = []
    for spec in specs:
        path, is_input, written, element0 = _parse(spec)
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
        if element0:
            element0_specs.append((written, found))
        for n in found:
            name = f"{n}:input" if is_input else n
            if name not in out:
                out.append(name)
    if element0_specs:
        _check_element0(mod, element0_specs)
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
