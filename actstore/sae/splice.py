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

A cross-layer transcoder (CLT) replaces every layer's module at once (the replacement model
of circuit tracing): in one forward, layer ``s``'s source hook (``cfg.sources[s]``) is
encoded as it fires, and target ``t``'s activation (``cfg.targets[t]``) becomes
``decode_target(t, codes of layers 0..t, x_t)``, so later layers compute from the replaced
outputs. The zero-ablation baseline zeroes every target. A target that fires before a source
it reads, or a hook the model lacks, is a one-line SAEError.

The SAE must take raw activations (``load(OUT/sae)``: the normalization folded in).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelError, SAEError
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


class _LayerTaps(SiteHooks):
    """Calls ``fn(i, act)`` with the activation the ``i``-th of ``sites`` sees, at every forward."""

    def __init__(self, model, sites, fn):
        self._fn = fn
        self._register(model, [(site, i) for i, site in enumerate(sites)])

    def _make_pre(self, _site, i):
        return lambda _mod, args, kwargs: self._fn(i, first_tensor((args, kwargs)))

    def _make_post(self, _site, i):
        return lambda _mod, _args, out: self._fn(i, first_tensor(out))


def _one_site(model, hook: str, what: str):
    """The one module site ``hook`` names in ``model``; one line when it names none or several."""
    try:
        sites = resolve_hooks(model, hook)
    except ModelError as e:
        raise SAEError(f"the model lacks the CLT's {what} {hook!r}: use the model it was trained on ({e})") from None
    if len(sites) != 1:
        raise SAEError(f"the CLT's {what} {hook!r} names {len(sites)} modules of the model: a splice needs one")
    return sites[0]


def _mean_loss(lm, windows: list[np.ndarray], batch: int, device, install=None, reset=None) -> tuple[float, int]:
    """Mean next-token loss (nats per predicted token) and the count of predicted tokens over
    ``windows``, right-padded in batches of ``batch``. ``install(held)`` registers hooks,
    appending each to ``held`` as it is made (all are removed at the end, also on an error);
    ``reset()`` runs before every forward."""
    total, count, held = 0.0, 0, []
    try:
        if install is not None:
            install(held)
        for lo in range(0, len(windows), batch):
            part = windows[lo : lo + batch]
            n = max(w.size for w in part)
            ids = torch.zeros(len(part), n, dtype=torch.long)
            mask = torch.zeros(len(part), n, dtype=torch.long)
            for r, w in enumerate(part):  # right padding: a causal model's kept tokens do not see it
                ids[r, : w.size] = torch.from_numpy(w)
                mask[r, : w.size] = 1
            ids, mask = ids.to(device), mask.to(device)
            if reset is not None:
                reset()  # nothing of the previous forward is kept
            logits = _logits(lm.forward(ids, mask if lm.kind == "hf" else None)).float()
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            keep = mask[:, 1:].bool()
            total += float(-lp[keep].sum())
            count += int(keep.sum())
    finally:
        for h in held:
            h.remove()
    return total / count, count


def _report(source, target, n: int, windows, clean: float, spliced: float, zero: float) -> dict:
    gap = zero - clean
    return {
        "source": source,
        "target": target,
        "tokens": n,
        "windows": len(windows),
        "clean": clean,
        "spliced": spliced,
        "zero_ablation": zero,
        "increase": spliced - clean,
        "recovered": (zero - spliced) / gap if gap != 0 else float("nan"),
    }


@torch.no_grad()
def lm_loss_increase(
    model, sae, windows: list[np.ndarray], *, hook: str | None = None, device="cpu", batch: int = 8
) -> dict:
    """Mean next-token loss over ``windows`` with the model as it is, with the SAE spliced
    in (an SAE at ``hook``, default ``sae.cfg.hook``; a transcoder from ``cfg.hook`` into
    ``cfg.target``; a CLT from every ``cfg.sources[s]`` into every ``cfg.targets[t]``) and
    with the replaced activations zeroed (see the module docstring). ``source`` and
    ``target`` in the result are a CLT's hook lists."""
    if not windows:
        raise SAEError("no held-out token windows to evaluate the model on: set aside more rows (--eval-rows)")
    if sae.cfg.is_clt:
        return _clt_loss_increase(model, sae, windows, hook=hook, device=device, batch=batch)
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

    def with_tap(held: list) -> None:
        nonlocal tap
        # The tap first, so at a shared module its hook runs before the target's edit.
        tap = _SourceTap(lm.model, source)
        held.append(tap)
        held.append(Intervention(lm.model, {target: spliced}, mode="replace"))

    def reset_tap() -> None:
        tap.act = None

    def edit(fn):
        return lambda held: held.append(Intervention(lm.model, {target: fn}, mode="replace"))

    if source == target:
        spliced_loss, n = _mean_loss(lm, windows, batch, device, edit(replace))
    else:  # first, so a source that comes after its target fails before the other passes
        spliced_loss, n = _mean_loss(lm, windows, batch, device, with_tap, reset_tap)
    clean, _ = _mean_loss(lm, windows, batch, device)
    zero, _ = _mean_loss(lm, windows, batch, device, edit(torch.zeros_like))
    return _report(source, target, n, windows, clean, spliced_loss, zero)


def _clt_loss_increase(model, clt, windows: list[np.ndarray], *, hook, device, batch: int) -> dict:
    """:func:`lm_loss_increase` for a cross-layer transcoder: every target replaced in one forward."""
    cfg = clt.cfg
    sources, targets = list(cfg.sources), list(cfg.targets)
    if hook is not None:
        raise SAEError(f"a CLT splices at its own hooks (cfg.sources, cfg.targets): leave hook= out (it was {hook!r})")
    if getattr(clt, "sharded", False):
        raise SAEError("splice a whole CLT, not one rank's latent shard: pass clt.gathered() (or load(OUT/sae))")
    if any(v != 1.0 for v in (*cfg.source_scales, *cfg.target_scales)):
        raise SAEError("this CLT still holds its training normalization: call fold_scale() first (load(OUT/sae) has)")
    lm = prepare_model(model, device=torch.device(device))
    clt = clt.to(device).eval()
    # Every hook checked up front, so a missing one fails before any forward.
    src_sites = [_one_site(lm.model, h, "source") for h in sources]
    for h in targets:
        _one_site(lm.model, h, "target")
    d, d_out, L = cfg.d, cfg.d_target, len(sources)
    codes: list = [None] * L  # layer s's Latents over its m, this forward
    xs: list = [None] * L  # layer s's source rows [n, d] (a skip CLT's W_skip reads them)
    lead: list = [None] * L  # layer s's leading (batch, position) dims

    def encode(s: int, act: torch.Tensor | None) -> None:
        if act is None:
            raise SAEError(f"the CLT's source {sources[s]!r} holds no tensor in the model's forward")
        x = _rows(act, d, f"source {sources[s]!r}").to(device)
        codes[s], xs[s], lead[s] = clt.layer_latents(s, x), x, act.shape[:-1]

    def replace(t: int, act: torch.Tensor) -> torch.Tensor:
        missing = next((s for s in range(t + 1) if codes[s] is None), None)
        if missing is not None:
            raise SAEError(
                f"the CLT's target {targets[t]!r} ran before its source {sources[missing]!r} in the forward: "
                "each source must come before the targets that read it (e.g. MLP inputs, MLP outputs as targets)"
            )
        _rows(act, d_out, f"target {targets[t]!r}")
        if any(lead[s] != act.shape[:-1] for s in range(t + 1)):
            raise SAEError(
                f"the CLT's target {targets[t]!r} {tuple(act.shape)} and its sources differ in their leading "
                "(batch, position) dims: a CLT maps one row of each"
            )
        y = clt.decode_target(t, codes[: t + 1], xs[t])
        return y.reshape(act.shape).to(act.device, act.dtype)

    def install(held: list) -> None:
        # The taps first, so at a module that is both a source and a target the source sees the original.
        held.append(_LayerTaps(lm.model, src_sites, encode))
        edits = {h: (lambda act, t=t: replace(t, act)) for t, h in enumerate(targets)}
        held.append(Intervention(lm.model, edits, mode="replace"))

    def reset() -> None:
        codes[:] = xs[:] = lead[:] = [None] * L

    spliced, n = _mean_loss(lm, windows, batch, device, install, reset)  # first: a hook order error fails fast
    clean, _ = _mean_loss(lm, windows, batch, device)
    zero, _ = _mean_loss(
        lm, windows, batch, device,
        lambda held: held.append(Intervention(lm.model, {h: torch.zeros_like for h in targets}, mode="replace")),
    )  # fmt: skip
    return _report(sources, targets, n, windows, clean, spliced, zero)
