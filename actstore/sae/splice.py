"""The SAE spliced into its model: the language-modelling loss with the hook's activation
replaced by the SAE's reconstruction, against the clean loss and the loss with the
activation zeroed (what SAELens and sparsify users read as the cost of an SAE).

- :func:`windows_from_rows`: token windows (``<= context`` tokens each) from stored rows'
  token, document and position columns: runs of one document at consecutive positions.
- :func:`lm_loss_increase`: next-token cross-entropy (nats per predicted token) over those
  windows, clean / spliced / zero-ablated, in one pass each; ``increase`` = spliced - clean,
  ``recovered`` = (zero - spliced) / (zero - clean) (1: the SAE loses nothing).

The SAE must take raw activations (``load(OUT/sae)``: the normalization folded in).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SAEError
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


@torch.no_grad()
def lm_loss_increase(model, sae, hook: str, windows: list[np.ndarray], *, device="cpu", batch: int = 8) -> dict:
    """Mean next-token loss over ``windows`` with the model as it is, with ``hook``'s output
    replaced by ``sae``'s reconstruction, and with it zeroed (see the module docstring)."""
    if not windows:
        raise SAEError("no held-out token windows to evaluate the model on: set aside more rows (--eval-rows)")
    lm = prepare_model(model, device=torch.device(device))
    sae = sae.to(device).eval()

    def splice(act: torch.Tensor) -> torch.Tensor:
        flat = act.reshape(-1, act.shape[-1]).float()
        return sae.decode(sae.encode(flat)).reshape(act.shape).to(act.dtype)

    def loss(edit) -> tuple[float, int]:
        total, count = 0.0, 0
        ctx = Intervention(lm.model, {hook: edit}, mode="replace") if edit is not None else None
        try:
            for lo in range(0, len(windows), batch):
                part = windows[lo : lo + batch]
                n = max(w.size for w in part)
                ids = torch.zeros(len(part), n, dtype=torch.long)
                mask = torch.zeros(len(part), n, dtype=torch.long)
                for r, w in enumerate(part):  # right padding: a causal model's kept tokens do not see it
                    ids[r, : w.size] = torch.from_numpy(w)
                    mask[r, : w.size] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = _logits(lm.forward(ids, mask if lm.kind == "hf" else None)).float()
                lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
                keep = mask[:, 1:].bool()
                total += float(-lp[keep].sum())
                count += int(keep.sum())
        finally:
            if ctx is not None:
                ctx.remove()
        return total / count, count

    clean, n = loss(None)
    spliced, _ = loss(splice)
    zero, _ = loss(lambda act: torch.zeros_like(act))
    gap = zero - clean
    return {
        "tokens": n,
        "windows": len(windows),
        "clean": clean,
        "spliced": spliced,
        "zero_ablation": zero,
        "increase": spliced - clean,
        "recovered": (zero - spliced) / gap if gap != 0 else float("nan"),
    }
