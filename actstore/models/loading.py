"""Loading a model, and how to call it: what capture, analysis and interventions run.

Three kinds are accepted:

- ``hf``: a Hugging Face transformers model (a local directory, loaded with the class
  named in its config's ``architectures``; or a ``PreTrainedModel`` built in code);
- ``tl``: a TransformerLens ``HookedTransformer`` (hook names like
  ``blocks.6.hook_resid_post``);
- ``module``: any ``nn.Module`` called as ``model(input_ids)``.

On the command line ``--model`` is a local HF directory, or ``python:pkg.mod:fn`` for a
function that returns a model or ``(model, tokenizer)``.

Large models: an HF folder may be loaded in bf16/fp16 (``dtype``) and spread over devices
with ``device_map`` (accelerate: ``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of
module -> device, ``"cpu"`` and ``"disk"`` offload included). A model placed that way (it
has ``hf_device_map``, or weights on the meta device that accelerate loads per forward) is
never moved or cast here: its hooks' activations are on whichever device holds their module,
and capture takes each one from there.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError


@dataclass
class LoadedModel:
    """A model ready to run: ``forward(ids [B, S] long, mask [B, S] or None)`` calls it the way its kind expects."""

    model: nn.Module
    tokenizer: object | None
    kind: str  # hf | tl | module
    name: str  # for provenance
    max_context: int | None  # longest sequence the model accepts, if it says
    forward: Callable[[torch.Tensor, torch.Tensor | None], object]  # (ids [B, S], mask or None)

    @property
    def label(self) -> str:
        """The model's own name, for people (a report's header): a Hugging Face model's
        ``name_or_path`` (its hub name, or the folder it was loaded from), a TransformerLens
        model's ``cfg.model_name``; else ``name``, the spec it was loaded by (which, for a
        ``python:module:function`` factory, names the function, not the model)."""
        if self.kind == "hf":
            own = getattr(self.model, "name_or_path", "")
        elif self.kind == "tl":
            own = getattr(self.model.cfg, "model_name", "")
        else:
            own = ""
        return str(own) if own else self.name


def _is_hf(model) -> bool:
    return any(
        c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel" for c in type(model).__mro__
    )


def _is_tl(model) -> bool:
    return any(c.__name__ == "HookedTransformer" for c in type(model).__mro__) and hasattr(model, "cfg")


def is_placed(model: nn.Module) -> bool:
    """Whether accelerate placed ``model`` (``device_map``, offload): then it must not be moved or cast."""
    if getattr(model, "hf_device_map", None):
        return True
    return any(p.device.type == "meta" for p in model.parameters())


def _load_hf(path: str, dtype: torch.dtype | None, device_map=None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: weights are local
    # Deferred: transformers takes seconds to import, only HF folders need it, and the
    # variable above must be set before it loads.
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(path)
    except Exception as e:
        raise ModelError(
            f"--model {path!r} is not a local Hugging Face model directory ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); give a folder holding config.json and weights"
        ) from None
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls or transformers.AutoModel
    kw = {"dtype": dtype} if dtype is not None else {}
    if device_map is not None:
        kw["device_map"] = device_map
    try:
        model = cls.from_pretrained(path, **kw)
    except ImportError as e:  # device_map without accelerate
        raise ModelError(f"loading {path!r}: {str(e).splitlines()[0]}") from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path)
    except Exception:
        tok = None  # pre-tokenized data still works
    if tok is not None and len(tok) <= 1:
        tok = None  # a folder without tokenizer files yields an empty stand-in: no tokenizer at all
    return model, tok


def _load_factory(spec: str):
    target = spec[len("python:") :]
    mod, _, attr = target.partition(":")
    if not mod or not attr:
        raise ModelError(f"--model {spec!r}: write python:package.module:function")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"--model {spec!r}: cannot import it ({e})") from None
    got = fn()
    return got if isinstance(got, tuple) else (got, None)


def prepare_model(
    model, tokenizer=None, *, device: torch.device, dtype: torch.dtype | None = None, device_map=None
) -> LoadedModel:
    """Load (if a path or factory spec) and wrap ``model`` to be run, on ``device``, in eval mode.

    ``device_map`` (HF folders only) spreads the model over devices with accelerate; a model
    already placed that way (:func:`is_placed`) stays where it is, and ``dtype`` must then be
    the one it was loaded in."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    name = model if isinstance(model, str) else type(model).__name__
    from_folder = isinstance(model, str) and not model.startswith("python:") and os.path.isdir(model)
    if device_map is not None and not from_folder:
        raise ModelError(
            "device_map applies to a model loaded from an HF folder; place a model object yourself "
            "(from_pretrained(..., device_map=...)) and pass it without device_map"
        )
    if isinstance(model, str):
        if model.startswith("python:"):
            model, tok = _load_factory(model)
        elif from_folder:
            model, tok = _load_hf(model, dtype, device_map)
        else:
            raise ModelError(f"--model {model!r} is neither a local model directory nor python:module:function")
        tokenizer = tokenizer or tok
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be an nn.Module, got {type(model).__name__}")
    p0 = next(model.parameters(), None)
    if is_placed(model):
        # accelerate placed it: moving it would undo the placement (or fail on offloaded weights).
        have = {p.dtype for p in model.parameters() if p.is_floating_point() and p.device.type != "meta"}
        if dtype is not None and have and have != {dtype}:
            raise ModelError(
                f"the model is spread over devices (device_map) in {sorted(map(str, have))}, and cannot be cast "
                f"to {dtype}; load it in that dtype (--model-dtype with --device-map, or from_pretrained(dtype=))"
            )
    else:
        if p0 is not None and p0.device != torch.device(device):
            model = model.to(device)
        if dtype is not None and p0 is not None and p0.dtype != dtype:
            model = model.to(dtype)
    model.eval()
    if _is_tl(model):
        tokenizer = tokenizer or getattr(model, "tokenizer", None)

        def fwd(ids, mask):
            # Right padding in a causal model changes no kept token, so no mask is needed.
            return model(ids, return_type=None)

        return LoadedModel(model, tokenizer, "tl", name, int(model.cfg.n_ctx), fwd)
    if _is_hf(model):
        cfg = model.config
        limit = next(
            (
                getattr(cfg, a)
                for a in ("max_position_embeddings", "n_positions", "n_ctx")
                if isinstance(getattr(cfg, a, None), int)
            ),
            None,
        )
        if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta") and limit:
            # RoBERTa-style models start their learned positions at padding_idx + 1.
            limit -= (getattr(cfg, "pad_token_id", 0) or 0) + 1

        def fwd(ids, mask):
            return model(input_ids=ids, attention_mask=mask)

        return LoadedModel(model, tokenizer, "hf", name, limit, fwd)

    def fwd(ids, mask):
        return model(ids)

    return LoadedModel(model, tokenizer, "module", name, None, fwd)
