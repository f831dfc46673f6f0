"""The SAE spliced into its model: the language-modelling loss with the hook's activation
replaced by the SAE's reconstruction, against the clean loss and the loss with the
activation zeroed (what SAELens and sparsify users read as the cost of an SAE).

- :func:`windows_from_rows`: token windows (``<= context`` tokens each) from stored rows'
  token, document and position columns: runs of one document at consecutive positions.
- :func:`lm_loss_increase`: next-token cross-entropy (nats per predicted token) over those
  windows, clean / spliced / zero-ablated, in one pass each; ``increase`` = spliced - clean,
  ``recovered`` = (zero - spliced) / (zero - clean) (1: the SAE loses nothing).

An SAE replaces its hook's activation by ``decode(encode(act))``. A transcoder replaces the
module it stands in for: its **target** hook's activation (``cfg.target``, e.g. an MLP's
output) becomes ``sae.output(src)``, where ``src`` is what its **source** hook (``cfg.hook``,
e.g. that MLP's input, or an earlier module's output) saw earlier in the same forward; the
zero-ablation baseline zeroes the target. A source that has not fired when the target does
is a one-line :class:`~actstore.errors.SAEError` naming both hooks.

The SAE must take raw activations (``load(OUT/sae)``: the normalization folded in).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SAEError
from ..models.hooks import SiteHooks, first_tensor, resolve_hooks
from ..models.intervention import Intervention
from ..models.loading import prepare_model


def windows_from_rows(token: np.ndarray, doc: np.ndarray, pos: np.ndarray, context: int) -> list[np.ndarray]:
    """Rows in store order -> windows: a new window starts at a new document, a position
    that does not follow the previous one, or after ``context`` tokens. Windows of fewer
    than 2 tokens (nothing to predict) are left out."""
    token, doc, pos = (np.asarray(a, dtype=np.int64) for a in (token, doc, pos))
    if token.size == 0:
        return []
    breaks = np.flatnonzero((doc[1:] != doc[:-1]) | (pos[1:] != pos[:-1] + 1)) + 1
    out = []
    for run in np.split(token, breaks):
        out += [run[i : i + context] for i in range(0, run.size, context)]
    return [w for w in out if w.size >= 2]


def _logits(out) -> torch.Tensor:
    t = getattr(out, "logits", out)
    if not torch.is_tensor(t) or t.dim() != 3:
        raise SAEError("--eval-model needs a language model whose forward gives logits [batch, seq, vocab]")
    return t


def splice_hooks(sae, hook: str | None = None) -> tuple[str, str]:
    """``(source, target)`` of ``sae`` spliced into a model: ``hook`` (else ``cfg.hook``) for
    both with an SAE; a transcoder's ``cfg.hook`` and ``cfg.target`` (the source when unset)."""
    cfg = sae.cfg
    if cfg.is_transcoder and hook is not None and cfg.hook not in (None, hook):
        raise SAEError(
            f"this {cfg.arch} reads {cfg.hook!r} and writes {cfg.target!r}: leave hook= out (it was {hook!r})"
        )
    source = hook if hook is not None else cfg.hook
    if source is None:
        raise SAEError("the SAE names no hook (cfg.hook is None): pass hook=, the module path it was trained on")
    return source, (cfg.target or source) if cfg.is_transcoder else source


class _SourceTap(SiteHooks):
    """Keeps the activation one hook site sees, for the target's edit later in the same forward."""

    def __init__(self, model, source: str):
        sites = resolve_hooks(model, source)
        if len(sites) != 1:
            raise SAEError(f"source hook {source!r} names {len(sites)} modules of the model: a splice needs one")
        self.act: torch.Tensor | None = None
        self._register(model, [(sites[0], None)])

    def _keep(self, value) -> None:
        self.act = first_tensor(value)

    def _make_pre(self, _site, _arg):
        return lambda _mod, args, kwargs: self._keep((args, kwargs))

    def _make_post(self, _site, _arg):
        return lambda _mod, _args, out: self._keep(out)


def _rows(act: torch.Tensor, width: int, what: str) -> torch.Tensor:
    if act.shape[-1] != width:
        raise SAEError(f"{what} has width {act.shape[-1]} in the model, the SAE's is {width}: use its model")
    return act.reshape(-1, width).float()


@torch.no_grad()
def lm_loss_increase(
    model, sae, windows: list[np.ndarray], *, hook: str | None = None, device="cpu", batch: int = 8
) -> dict:
    """Mean next-token loss over ``windows`` with the model as it is, with the SAE spliced
    in (an SAE at ``hook``, default ``sae.cfg.hook``; a transcoder from ``cfg.hook`` into
    ``cfg.target``) and with the replaced activation zeroed (see the module docstring)."""
    if not windows:
        raise SAEError("no held-out token windows to evaluate the model on: set aside more rows (--eval-rows)")
    source, target = splice_hooks(sae, hook)
    lm = prepare_model(model, device=torch.device(device))
    sae = sae.to(device).eval()
    d, d_out = sae.cfg.d, sae.cfg.d_target
    if source == target and d != d_out:
        raise SAEError(f"this {sae.cfg.arch} maps width {d} to {d_out}: it needs a target hook (cfg.target)")

    def replace(act: torch.Tensor, src: torch.Tensor | None = None) -> torch.Tensor:
        """The SAE's output in place of the target activation ``act``, from the source
        activation ``src`` (``act`` itself when None: an SAE, or source = target)."""
        if src is None:
            x = _rows(act, d, f"hook {target!r}")
            y = sae.output(x) if sae.cfg.is_transcoder else sae.decode(sae.encode(x))
        else:
            _rows(act, d_out, f"target {target!r}")
            if src.shape[:-1] != act.shape[:-1]:
                raise SAEError(
                    f"source {source!r} {tuple(src.shape)} and target {target!r} {tuple(act.shape)} differ in their "
                    "leading (batch, position) dims: a transcoder maps one row of each"
                )
            y = sae.output(_rows(src, d, f"source {source!r}").to(device))
        return y.reshape(act.shape).to(act.device, act.dtype)

    tap = None

    def spliced(act: torch.Tensor) -> torch.Tensor:
        src, tap.act = tap.act, None  # taken once: a module that runs twice pairs each source with its target
        if src is None:
            raise SAEError(
                f"the target {target!r} ran before the source {source!r} in the forward: a transcoder's source "
                "must come earlier (e.g. the MLP's input, the MLP's output as target)"
            )
        return replace(act, src)

    def loss(edit, with_tap: bool = False) -> tuple[float, int]:
        nonlocal tap
        total, count = 0.0, 0
        # The tap first, so at a shared module its hook runs before the target's edit.
        tap, ctx = (_SourceTap(lm.model, source) if with_tap else None), None
        try:
            ctx = Intervention(lm.model, {target: edit}, mode="replace") if edit is not None else None
            for lo in range(0, len(windows), batch):
                part = windows[lo : lo + batch]
                n = max(w.size for w in part)
                ids = torch.zeros(len(part), n, dtype=torch.long)
                mask = torch.zeros(len(part), n, dtype=torch.long)
                for r, w in enumerate(part):  # right padding: a causal model's kept tokens do not see it
                    ids[r, : w.size] = torch.from_numpy(w)
                    mask[r, : w.size] = 1
                ids, mask = ids.to(device), mask.to(device)
                if tap is not None:
                    tap.act = None  # nothing of the previous forward is kept
                logits = _logits(lm.forward(ids, mask if lm.kind == "hf" else None)).float()
                lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
                keep = mask[:, 1:].bool()
                total += float(-lp[keep].sum())
                count += int(keep.sum())
        finally:
            for c in (ctx, tap):
                if c is not None:
                    c.remove()
        return total / count, count

    if source == target:
        spliced_loss, n = loss(replace)
    else:  # first, so a source that comes after its target fails before the other passes
        spliced_loss, n = loss(spliced, with_tap=True)
    clean, _ = loss(None)
    zero, _ = loss(lambda act: torch.zeros_like(act))
    gap = zero - clean
    return {
        "source": source,
        "target": target,
        "tokens": n,
        "windows": len(windows),
        "clean": clean,
        "spliced": spliced_loss,
        "zero_ablation": zero,
        "increase": spliced_loss - clean,
        "recovered": (zero - spliced_loss) / gap if gap != 0 else float("nan"),
    }
