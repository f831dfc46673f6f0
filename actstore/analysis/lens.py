"""``lens``: the logit lens of each latent's decoder direction through a model's unembedding.

For latent f the logits over the vocabulary are ``(W_dec[f] * g) @ W_U^T`` ``[V]``, where
``W_dec [m, d]`` is the SAE's decoder (raw activation units: the SAE's normalization is
folded in; a transcoder's rows are ``d_out`` wide, in its target's space: for an MLP's
output, the latent's contribution to the residual stream, so the lens reads them as they
are), ``W_U [V, d]`` the model's unembedding (HF ``get_output_embeddings().weight``,
TransformerLens ``W_U^T``) and ``g [d]`` the gain of its final norm (``model.norm``,
``transformer.ln_f``, ...; ``1 + weight`` for Gemma's norm; ones if the model has none).
The norm's centring, scale and bias and the unembedding's bias are left out: they do not
depend on the direction. Computed in float32 in blocks of latents of at most
``block_bytes`` of logits, so ``[m, V]`` is never in memory at once.

Masks: ``outlier_z > 0`` masks tokens whose unembedding row norm ``||W_U[v]||`` is more than
``outlier_z`` robust standard deviations (``1.4826 * MAD``) from the median norm (unused or
glitch tokens); ``unseen=True`` masks tokens that no selected row of the store holds.
Masked tokens never appear in the lists.

Output ``[m, t]``: ``lens/top_ids`` int32 and ``lens/top_values`` float32 (the t highest
logits, descending), ``lens/bottom_ids`` and ``lens/bottom_values`` (the t lowest,
ascending: most negative first); ``-1`` / 0 pad when fewer than t tokens are unmasked;
``lens/masked`` ``[V]`` bool, the masked tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._pass import AnalysisError, Selection

# Where HF and other model families keep the final norm, in the order tried.
FINAL_NORMS = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",
    "model.decoder.final_layer_norm",
    "model.language_model.norm",
    "backbone.norm_f",
    "ln_final",
)


def unembedding(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W_U [V, d], gain [d] or None)`` of a causal LM (HF or TransformerLens)."""
    if hasattr(model, "W_U") and not hasattr(model, "get_output_embeddings"):  # TransformerLens
        w = model.W_U.detach().T
    else:
        emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if emb is None or getattr(emb, "weight", None) is None:
            raise AnalysisError(
                f"{type(model).__name__} has no output embeddings: the logit lens needs a causal LM "
                "(e.g. LlamaForCausalLM, GPT2LMHeadModel)"
            )
        w = emb.weight.detach()
    gain = None
    for path in FINAL_NORMS:
        try:
            norm = model.get_submodule(path)
        except AttributeError:
            continue
        g = getattr(norm, "weight", None)
        if g is None:
            g = getattr(norm, "w", None)  # TransformerLens LayerNorm
        if g is not None:
            # Gemma's RMSNorm multiplies by (1 + weight).
            gain = g.detach() + 1 if "Gemma" in type(norm).__name__ else g.detach()
        break
    return w, gain


def seen_tokens(store, sel: Selection, block_rows: int) -> np.ndarray:
    """``[max id + 1]`` int64: how many selected rows hold each token id (ids < 0 skipped)."""
    counts = np.zeros(0, np.int64)
    for b in sel.blocks(block_rows):
        lo, hi = max(sel.lo, b * block_rows), min(sel.hi, (b + 1) * block_rows)
        t = {k: v.numpy() for k, v in store.tokens(slice(lo, hi)).items()}
        keep = t["token"] >= 0
        if sel.drop_flags:
            keep &= (t["flags"] & sel.drop_flags) == 0
        if sel.docs is not None:
            keep &= np.isin(t["doc"], np.asarray(sel.docs, dtype=np.int64))
        c = np.bincount(t["token"][keep].astype(np.int64))
        if c.size > counts.size:
            c[: counts.size] += counts
            counts = c
        else:
            counts[: c.size] += c
    return counts


def check_vocab(vocab: int, seen: np.ndarray, model_name: str) -> None:
    if seen.size > vocab:
        raise AnalysisError(
            f"model {model_name}'s vocabulary has {vocab} tokens but the store holds token id {seen.size - 1}: "
            "use the model (tokenizer) the store was captured with"
        )


def token_mask(w_u: torch.Tensor, seen: np.ndarray | None, outlier_z: float, unseen: bool) -> np.ndarray:
    """``[V]`` bool, True for masked tokens (see the module docstring)."""
    v = w_u.shape[0]
    masked = np.zeros(v, bool)
    if outlier_z > 0:
        norms = w_u.float().norm(dim=1).cpu().numpy().astype(np.float64)
        med = np.median(norms)
        mad = 1.4826 * np.median(np.abs(norms - med))
        masked |= np.abs(norms - med) > outlier_z * max(mad, 1e-12)
    if unseen:
        if seen is None:
            raise AnalysisError("lens unseen=True needs the store's token ids")
        hit = np.zeros(v, bool)
        hit[: min(v, seen.size)] = seen[:v] > 0
        masked |= ~hit
    return masked


def logit_lens(
    w_dec: torch.Tensor,
    w_u: torch.Tensor,
    gain: torch.Tensor | None,
    t: int,
    masked: np.ndarray | None = None,
    block_bytes: int = 1 << 28,
) -> dict[str, np.ndarray]:
    """The ``lens/*`` arrays for decoder rows ``w_dec [m, d]`` (see the module docstring)."""
    m, d = w_dec.shape
    v = w_u.shape[0]
    if w_u.shape[1] != d:
        raise AnalysisError(
            f"the SAE's decoder has width {d} but the model's unembedding takes {w_u.shape[1]}: the logit lens "
            "needs an SAE on the residual stream of this model"
        )
    dev = w_u.device
    u = w_u.float()
    g = torch.ones(d, device=dev) if gain is None else gain.float().to(dev)
    bad = None if masked is None or not masked.any() else torch.from_numpy(masked).to(dev)
    t_eff = min(t, v)
    out = {
        "lens/top_ids": np.full((m, t), -1, np.int32),
        "lens/top_values": np.zeros((m, t), np.float32),
        "lens/bottom_ids": np.full((m, t), -1, np.int32),
        "lens/bottom_values": np.zeros((m, t), np.float32),
    }
    step = max(1, block_bytes // (4 * v))
    with torch.no_grad():
        for a in range(0, m, step):
            logits = (w_dec[a : a + step].to(dev).float() * g) @ u.T  # [b, V]
            for side, largest in (("top", True), ("bottom", False)):
                x = logits if bad is None else logits.masked_fill(bad, -np.inf if largest else np.inf)
                val, idx = torch.topk(x, t_eff, dim=1, largest=largest, sorted=True)
                val, idx = val.cpu().numpy(), idx.cpu().numpy()
                ok = np.isfinite(val)
                out[f"lens/{side}_ids"][a : a + step, :t_eff] = np.where(ok, idx, -1)
                out[f"lens/{side}_values"][a : a + step, :t_eff] = np.where(ok, val, 0)
    out["lens/masked"] = np.zeros(v, bool) if masked is None else masked.astype(bool)
    return out


def lens(sae, model: nn.Module, seen: np.ndarray | None, *, t: int = 10, outlier_z: float = 0.0, unseen=False):
    """The ``lens/*`` arrays of ``sae`` through ``model`` (``seen``: :func:`seen_tokens`)."""
    w_u, gain = unembedding(model)
    masked = token_mask(w_u, seen, float(outlier_z), bool(unseen))
    return logit_lens(sae.W_dec.detach(), w_u, gain, int(t), masked)


def options(opts: dict) -> dict:
    """The lens options, checked and with defaults (part of the analysis identity)."""
    unknown = set(opts) - {"t", "outlier_z", "unseen"}
    if unknown:
        raise AnalysisError(f"bad job option: lens takes t, outlier_z, unseen, not {sorted(unknown)}")
    return {
        "t": int(opts.get("t", 10)),
        "outlier_z": float(opts.get("outlier_z", 0.0)),
        "unseen": bool(opts.get("unseen", False)),
    }
