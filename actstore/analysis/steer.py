"""``steer``: add steering vectors to a model's activations, after the prompt, during
``generate`` or a forward.

::

    with actstore.steer(model, vectors, scale=4.0):            # positions="after_prompt"
        out = model.generate(ids, max_new_tokens=20)            # the prompt is left as it is

``vectors``: a :class:`~actstore.analysis.steering.SteeringVectors` (or the folder it was
saved to), or ``{hook: [d] tensor}``; ``method`` picks ``mean_diff`` or ``pca`` (scaled to
the mean difference's norm). Each hook's activation gets ``scale * vector`` added, through
:class:`~actstore.models.Intervention` (mode ``add``).

Positions, per forward, on sequence indices: the forward's first index is
``cache_position[0]`` when the caller passes it (transformers 4), else the length of the KV
cache it is given (``past_key_values``, or ``cache`` in transformers 5), else 0:

- ``"all"``: every position;
- ``"after_prompt"``: positions at or past the prompt's length ``P``. ``P`` is
  ``prompt_len`` when given; otherwise the length of the forward that starts at position 0
  (``generate``'s prompt forward), so a plain forward of a prompt alone is left unsteered
  (pass ``prompt_len`` to steer the rest of a longer sequence). With left-padded batches
  every row's prompt ends at ``P``.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..models import Intervention
from ._pass import AnalysisError

POSITIONS = ("after_prompt", "all")


def _vectors(vectors, method: str, hooks) -> dict[str, torch.Tensor]:
    from .steering import SteeringVectors

    if isinstance(vectors, (str, os.PathLike)):
        vectors = SteeringVectors.load(vectors)
    if isinstance(vectors, SteeringVectors):
        names = list(hooks) if hooks else vectors.hooks
        return {h: vectors.vector(h, method) for h in names}
    if isinstance(vectors, dict):
        return {h: torch.as_tensor(v) for h, v in vectors.items() if not hooks or h in hooks}
    raise AnalysisError(f"steering vectors of type {type(vectors).__name__}: give SteeringVectors, a folder or a dict")


def _seq_len(args, kwargs) -> int | None:
    for t in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *(a for a in args if torch.is_tensor(a))):
        if torch.is_tensor(t) and t.dim() >= 2:
            return int(t.shape[1])
    return None


def _start(kwargs) -> int:
    cp = kwargs.get("cache_position")
    if torch.is_tensor(cp) and cp.numel():
        return int(cp.reshape(-1)[0])
    for name in ("past_key_values", "cache"):  # transformers 4 / 5 names of the KV cache
        pkv = kwargs.get(name)
        if pkv is not None and hasattr(pkv, "get_seq_length"):
            return int(pkv.get_seq_length())
    return 0


@contextlib.contextmanager
def steer(
    model,
    vectors,
    scale: float = 1.0,
    positions: str = "after_prompt",
    *,
    prompt_len=None,
    method="mean_diff",
    hooks=None,
):
    """Add ``scale * vector`` at each vector's hook while the block runs; see the module docstring."""
    if positions not in POSITIONS:
        raise AnalysisError(f"positions {positions!r}: use after_prompt or all")
    vecs = _vectors(vectors, method, hooks)
    state = {"start": 0, "len": 0, "P": prompt_len}

    def pre(_mod, args, kwargs):
        n = _seq_len(args, kwargs)
        state["start"], state["len"] = _start(kwargs), n or 0
        if state["start"] == 0 and prompt_len is None:
            state["P"] = n  # the prompt forward: nothing in it is steered

    def value_for(v):
        def fn(act):
            add = float(scale) * v.to(act.dtype)
            if positions == "all" or act.dim() < 3:
                return add
            S = act.shape[1]
            pos = torch.arange(S, device=act.device) + state["start"]
            mask = (pos >= (state["P"] or 0)).to(act.dtype)
            return mask[None, :, None] * add

        return fn

    for h, v in vecs.items():
        if v.dim() != 1:
            raise AnalysisError(f"steering vector for {h!r} has shape {tuple(v.shape)}: give one [d] vector per hook")
    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    iv = None
    try:
        iv = Intervention(model, {h: value_for(v) for h, v in vecs.items()}, mode="add")
        yield iv
    finally:
        if iv is not None:
            iv.remove()
        handle.remove()
