"""The model-diffing view of a crosscoder: how each latent's decoder splits over the blocks,
and how much of each block's variance the crosscoder explains.

A crosscoder (``actstore/sae/crosscoder.py``) reads ``K`` blocks, ``cfg.sources`` naming
them: ``K`` hooks of one store (layers), or one hook of two stores captured from two models
on the same tokens (``"<model>:<hook>"`` for the first store's block, then the second's).
Its decoder row of latent ``i`` is ``K`` slices ``W_dec,i^k [d_h]``.

- **Decoder norms** (no data): ``norms [m, K]`` = ``||W_dec,i^k||``; each block's share
  ``share [m, K]`` = ``norms / sum_k norms`` (NaN for a latent whose decoder is all zero).
  With two blocks, ``relative [m]`` = ``r = ||W^B|| / (||W^A|| + ||W^B||)`` (Lindsey et al.
  2024, ckkissane's crosscoder notebook): ``r < 0.1`` is specific to A, ``r > 0.9`` to B, and
  the shared latents form a peak around 0.5 (``0.4 <= r <= 0.6`` is counted as
  ``shared``). With K > 2 a latent is specific to block k when ``share_k > 0.9``.
  ``cosine [m, K-1]``: the cosine between the decoder slices of blocks k and k+1 (NaN where
  one is zero): a shared latent whose slices point the same way reads the same in both.
- **One pass over the rows** the row groups select (``_rows.py``; the paired store's rows
  are read at the same row ids, after :func:`~actstore.sae.layout.check_paired` has checked
  that both stores hold the same tokens): each block of rows is assembled into
  ``[n, K * d_h]``, encoded and decoded once; per input dimension the float64 sums of ``x``,
  ``x^2`` and the squared error go through a :class:`~actstore.analysis._tree.BlockTree`
  (bit-identical under any rank split or resume), and each latent's firing rows are counted.
  ``fvu_k`` = squared error over block k's dimensions / its total variance about the rows'
  mean (the trainer's held-out ``block_fvu``), ``ev_k = 1 - fvu_k``.
- **Classes** (``classes [m]`` int8): ``-1`` dead (never fired on the analysed rows, or a
  zero decoder), ``k`` specific to block k, ``K`` between. Histograms of each block's share
  in ``bins`` equal bins over [0, 1] over the live latents (``hist``) and over every latent
  with a decoder (``hist_all``: dead latents keep their initial decoders, e.g. a ReLU
  crosscoder's equal per-block norms, r = 0.5, so they would swell the shared peak). The
  ``top`` latents most specific to each block: the live latents with the highest share of
  it (ties: lower id).

The saved crosscoder takes raw activations (its per-block normalization is folded in at
save); an unfolded module is folded on a copy here.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _dist
from ..errors import SAEError
from ._checkpoint import COMMIT_ROWS, Checkpoint, store_identity
from ._pass import AnalysisError
from ._rows import n_blocks, share, stream
from ._tree import BlockTree
from .output import FORMAT, prepare_out, write_group
from .steering import _gather

KIND = "crosscoder"
SPECIFIC = 0.9  # a block's share above this: the latent is specific to that block (K=2: r < 0.1 or r > 0.9)
SHARED = (0.4, 0.6)  # K=2: the band of r counted as shared (the peak of the shared latents)
# Store pairs whose tokens this process has found equal (their identities: path, rows,
# segments), so that the job's up-front check and its run read both token columns once.
_SAME_TOKENS: set[str] = set()


@dataclass
class Blocks:
    """Where each of a crosscoder's K blocks is read: ``(store index, hook)``; store 0 is
    ``--store``, store 1 the paired store of a two-model crosscoder."""

    labels: list[str]
    reads: list[tuple[int, str]]
    stores: list

    @property
    def paired(self) -> bool:
        return len(self.stores) > 1


def _hook_of(name: str, hooks) -> str | None:
    """The hook of a two-model block label ``"<model>:<hook>"`` (the hook may hold ``:``)."""
    for j, ch in enumerate(name):
        if ch == ":" and name[j + 1 :] in hooks:
            return name[j + 1 :]
    return None


def resolve_blocks(sae, store, paired=None) -> Blocks:
    """The store and hook of each block of crosscoder ``sae``; one line for a module that is
    no crosscoder, a paired store missing or not wanted, a hook the stores lack, another
    width, or two stores of different tokens."""
    cfg = sae.cfg
    if cfg.arch != "crosscoder":
        raise AnalysisError(
            f"the crosscoder job reads a crosscoder, and --sae is a {cfg.arch} dictionary: pass one trained with "
            "--arch crosscoder"
        )
    labels, K = list(cfg.sources), cfg.blocks
    d_h = cfg.d // K
    hooks = list(store.hooks)
    if all(h in hooks for h in labels):  # K hooks of one store
        if paired is not None:
            raise AnalysisError(
                f"this crosscoder reads {K} hooks of one store ({', '.join(labels)}): leave out --paired-store"
            )
        reads, stores = [(0, h) for h in labels], [store]
    else:
        parsed = [_hook_of(s, hooks) for s in labels]
        half = K // 2
        two = K % 2 == 0 and None not in parsed and parsed[:half] == parsed[half:]
        if not two:
            missing = [s for s in labels if s not in hooks]
            raise AnalysisError(
                f"the crosscoder's blocks {', '.join(missing)} are no hooks of store {store.path} (it has "
                f"{', '.join(hooks)}): analyse it over the store it was trained on"
            )
        if paired is None:
            raise AnalysisError(
                f"this crosscoder reads two models' stores (blocks {', '.join(labels)}): pass the second model's "
                "store with --paired-store"
            )
        lost = [h for h in parsed[:half] if h not in paired.hooks]
        if lost:
            raise AnalysisError(
                f"--paired-store {paired.path} lacks {', '.join(lost)} (it has {', '.join(paired.hooks)})"
            )
        _check_order(labels, half, store, paired)
        _check_tokens(store, paired)
        reads = [(0, h) for h in parsed[:half]] + [(1, h) for h in parsed[half:]]
        stores = [store, paired]
    for (i, h), lab in zip(reads, labels):
        d = stores[i].schema.hooks[h].d
        if d != d_h:
            raise AnalysisError(
                f"the crosscoder's block {lab} is {d_h} wide and hook {h!r} of {stores[i].path} has width {d}: "
                "use the stores it was trained on"
            )
    return Blocks(labels, reads, stores)


def _check_order(labels: list[str], half: int, store, paired) -> None:
    """Refuse the two stores given the other way round (the crosscoder's first blocks name
    the paired store's model, its last ones ``--store``'s); other labels are let through (a
    moved or renamed store)."""
    from ..sae.layout import _label

    la, lb = _label(store), _label(paired)
    first, second = labels[0].split(":", 1)[0], labels[half].split(":", 1)[0]
    if la != lb and (first, second) == (lb, la):
        raise AnalysisError(
            f"the crosscoder's first blocks are {lb}'s and its last {la}'s, but --store is {la} and "
            f"--paired-store {lb}: swap them"
        )


def _check_tokens(a, b) -> None:
    """``layout.check_paired`` (the same rows, the same token ids), once per pair of store contents."""
    from ..sae.layout import check_paired

    key = json.dumps([store_identity(a), store_identity(b)])
    if key in _SAME_TOKENS:
        return
    try:
        check_paired(a, b)
    except SAEError as e:
        raise AnalysisError(str(e)) from None
    _SAME_TOKENS.add(key)


class _Joined:
    """What ``_rows.stream`` reads: ``--store``'s row count and token columns, and block ``k``
    (a key of ``read``) from its store and hook."""

    def __init__(self, blocks: Blocks):
        self.blocks = blocks
        self.path = blocks.stores[0].path

    @property
    def rows(self) -> int:
        return self.blocks.stores[0].rows

    def tokens(self, rows):
        return self.blocks.stores[0].tokens(rows)

    def read(self, k: int, rows) -> torch.Tensor:
        i, h = self.blocks.reads[k]
        return self.blocks.stores[i].read(h, rows)


def decoder_view(sae) -> dict[str, np.ndarray]:
    """The arrays that need no data: ``norms [m, K]`` float32, ``share [m, K]`` float64,
    ``cosine [m, K-1]`` float32 and, for two blocks, ``relative [m]`` float64."""
    w = sae.blocks_of(sae.W_dec.detach().float().cpu())  # [m, K, d_h]
    norms = w.norm(dim=-1)
    total = norms.double().sum(1, keepdim=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(total.numpy() > 0, norms.double().numpy() / total.numpy(), np.nan)
    dots = (w[:, :-1] * w[:, 1:]).sum(-1)
    den = norms[:, :-1] * norms[:, 1:]
    cos = torch.where(den > 0, dots / den.clamp_min(1e-30), torch.full_like(dots, float("nan")))
    out = {"norms": norms.numpy(), "share": shares, "cosine": cos.numpy()}
    if shares.shape[1] == 2:
        out["relative"] = shares[:, 1].copy()
    return out


def classify(shares: np.ndarray, live: np.ndarray) -> np.ndarray:
    """``[m]`` int8: -1 not ``live``, k when block k's share is over :data:`SPECIFIC` (two
    blocks: ``r < 1 - SPECIFIC`` is A's, ``r > SPECIFIC`` B's), K otherwise."""
    m, K = shares.shape
    out = np.full(m, K, np.int8)
    if K == 2:
        r = shares[:, 1]
        out[r < 1 - SPECIFIC] = 0
        out[r > SPECIFIC] = 1
    else:
        best = np.nanargmax(np.where(np.isnan(shares), -1.0, shares), axis=1)
        spec = shares[np.arange(m), best] > SPECIFIC
        out[spec] = best[spec]
    out[~live] = -1
    return out


def histograms(shares: np.ndarray, keep: np.ndarray, bins: int) -> np.ndarray:
    """``[K, bins]`` int64: each block's share of the ``keep`` latents in equal bins over [0, 1]
    (the last bin closed)."""
    return np.stack([np.histogram(shares[keep, k], bins=bins, range=(0.0, 1.0))[0] for k in range(shares.shape[1])])


def most_specific(shares: np.ndarray, live: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block the ``top`` live latents with the highest share of it (ties: lower id):
    ``[K, top]`` ids (-1 pad) and shares (NaN pad)."""
    m, K = shares.shape
    ids = np.full((K, top), -1, np.int64)
    vals = np.full((K, top), np.nan)
    cand = np.flatnonzero(live)
    for k in range(K):
        o = cand[np.lexsort((cand, -shares[cand, k]))][:top]
        ids[k, : o.size], vals[k, : o.size] = o, shares[o, k]
    return ids, vals


def class_counts(classes: np.ndarray, shares: np.ndarray, labels: list[str], keep: np.ndarray) -> dict:
    """The class counts among the ``keep`` latents: each block's specific latents, those
    between, and for two blocks ``shared`` (r in :data:`SHARED`)."""
    K = len(labels)
    c = classes[keep]
    out = {"latents": int(keep.sum()), "specific": {lab: int((c == k).sum()) for k, lab in enumerate(labels)}}
    out["between"] = int((c == K).sum())
    if K == 2:
        r = shares[keep, 1]
        out["shared"] = int(((r >= SHARED[0]) & (r <= SHARED[1])).sum())
    return out


@dataclass
class CrosscoderDiff:
    """The result (see the module docstring): ``arrays`` (``crosscoder/<name>``) and ``meta``."""

    labels: list[str]
    count: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def ev(self) -> dict[str, float]:
        return dict(zip(self.labels, self.arrays["ev"].tolist()))

    def save(self, out) -> Path:
        out = Path(out)
        prepare_out(out, KIND)
        arrays = {f"crosscoder/{k}": v for k, v in self.arrays.items()}
        attrs = {"format": FORMAT, "kind": KIND, "blocks": self.labels, "count": self.count, **self.meta}
        write_group(out, arrays, attrs)
        return out


def _folded(sae):
    """``sae`` taking raw activations: its per-block scales folded into a copy when not yet."""
    scales = [sae.cfg.scale, *(sae.cfg.source_scales or [])]
    if all(s == 1.0 for s in scales):
        return sae
    sae = copy.deepcopy(sae)
    sae.fold_scale()
    return sae


def crosscoder_diff(
    sae,
    store,
    groups=None,
    *,
    paired_store=None,
    bins: int = 20,
    top: int = 20,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
    device=None,
) -> CrosscoderDiff:
    """The model-diffing view of crosscoder ``sae`` (a module or saved folder) over the rows
    of ``store`` (and ``paired_store`` for a two-model crosscoder) that ``groups`` selects
    (default: every row but BOS/special ones); see the module docstring. bins: histogram
    bins over [0, 1]; top: latents listed per block. state_dir / commit_rows / on_commit: the
    pass ``crosscoder.pass`` commits its state there and a rerun continues from it
    (``_checkpoint.py``; None: no state)."""
    from ..api import open as open_store
    from ..sae import load as load_sae
    from ._run import _sae_hash
    from .groups import resolve

    if isinstance(sae, (str, os.PathLike)):
        p = Path(sae)
        sae = load_sae(p / "sae" if (p / "sae" / "config.json").exists() else p)
    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    if isinstance(paired_store, (str, os.PathLike)):
        paired_store = open_store(paired_store)
    for name, v in (("bins", bins), ("top", top)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise AnalysisError(f"crosscoder.{name}={v!r}: give a positive integer")
    blocks = resolve_blocks(sae, store, paired_store)
    groups = resolve(store) if groups is None else groups
    rank, world = _dist.rank_world(rank, world_size)
    sae = _folded(sae).to(_dist.local_device(device)).eval()
    p = next(sae.parameters())
    m, K, D = sae.cfg.m, sae.cfg.blocks, sae.cfg.d
    sae_hash = _sae_hash(sae)
    ident = {"kind": KIND, "stores": [store_identity(s) for s in blocks.stores], "reads": blocks.reads}
    ident.update(groups=groups.to_json(), sae=sae_hash, block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    tree = BlockTree()
    state = {"n": 0, "nnz": 0, "fired": np.zeros(m, np.int64)}

    @torch.no_grad()
    def fn(b):
        x = torch.cat([b.x[k] for k in range(K)], dim=1).to(p.device, p.dtype)
        lat = sae.encode(x)
        xd = x.double()
        err = (sae.decode(lat).double() - xd).pow(2).sum(0)
        tree.push(b.block, {"s1": xd.sum(0).cpu().numpy(), "s2": xd.pow(2).sum(0).cpu().numpy(),
                            "e2": err.cpu().numpy()})  # fmt: skip
        on = lat.vals.detach() > 0
        state["n"] += b.rows.size
        state["nnz"] += int(on.sum())
        state["fired"] += np.bincount(lat.cols[on].cpu().numpy(), minlength=m).astype(np.int64)

    def save() -> dict:
        ints = np.array([state["n"], state["nnz"]], np.int64)
        return {**tree.state_dict("tree/"), "ints": ints, "fired": state["fired"]}

    def load(sd: dict) -> None:
        tree.load_state_dict(sd, "tree/")
        state.update(n=int(sd["ints"][0]), nnz=int(sd["ints"][1]), fired=sd["fired"].copy())

    mine = share(n_blocks(store, block_rows), rank, world)
    resume = ck.track("crosscoder.pass", save, load) if ck is not None else None
    stream(_Joined(blocks), list(range(K)), groups, mine, block_rows, fn, resume)
    parts = _gather({"tree": tree, **state}, world)
    whole = BlockTree()
    for part in parts:
        whole.merge(part["tree"])
    n = sum(part["n"] for part in parts)
    if n == 0:
        raise AnalysisError("the groups select no rows: nothing to run the crosscoder on")
    nnz = sum(part["nnz"] for part in parts)
    fired = np.sum([part["fired"] for part in parts], axis=0)
    zero = np.zeros(D)
    tot = whole.total({"s1": zero, "s2": zero, "e2": zero})
    var_d = np.maximum(tot["s2"] - tot["s1"] ** 2 / n, 0.0)
    variance = var_d.reshape(K, -1).sum(1)
    sq_error = tot["e2"].reshape(K, -1).sum(1)
    fvu = sq_error / np.maximum(variance, 1e-300)
    dec = decoder_view(sae)
    shares = dec["share"]
    has_decoder = ~np.isnan(shares).any(1)
    live = has_decoder & (fired > 0)
    no_nan = np.nan_to_num(shares, nan=0.0)
    classes = classify(no_nan, live)
    ids, vals = most_specific(shares, live, int(top))
    arrays = {
        **dec,
        "count": fired,
        "dead": ~live,
        "classes": classes,
        "hist": histograms(shares, live, int(bins)),
        "hist_all": histograms(shares, has_decoder, int(bins)),
        "hist_edges": np.linspace(0.0, 1.0, int(bins) + 1),
        "top_latents": ids,
        "top_share": vals,
        "variance": variance,
        "sq_error": sq_error,
        "fvu": fvu,
        "ev": 1.0 - fvu,
    }
    labels = blocks.labels
    reads = [
        {"block": lab, "store": str(blocks.stores[i].path), "hook": h} for lab, (i, h) in zip(labels, blocks.reads)
    ]
    fvu_total = float(sq_error.sum() / max(variance.sum(), 1e-300))
    meta = {
        "store": {"path": str(store.path), "rows": store.rows},
        "paired_store": None if not blocks.paired else {"path": str(paired_store.path), "rows": paired_store.rows},
        "reads": reads,
        "groups": groups.to_json(),
        "sae": {"hash": sae_hash, "m": m, "d": D, "activation": sae.cfg.act},
        "ev": dict(zip(labels, (1.0 - fvu).tolist())),
        "ev_total": 1.0 - fvu_total,
        "l0": nnz / n,
        "dead": int((~live).sum()),
        "zero_decoder": int((~has_decoder).sum()),
        "classes": class_counts(classes, shares, labels, live),
        "classes_all": class_counts(classify(no_nan, has_decoder), shares, labels, has_decoder),
        "thresholds": {"specific": SPECIFIC, "shared": list(SHARED)},
        "bins": int(bins),
        "top": int(top),
        "block_rows": int(block_rows),
    }
    return CrosscoderDiff(labels, int(n), arrays, meta)
