"""Steering vectors from two row groups of a store, per hook, in one pass over every hook.

For each hook ``h`` (width ``d``) and the selected rows (see ``groups.py``) of the positive
group P and the negative group N:

- ``vector = mean(x | P) - mean(x | N)`` ``[d]``, the sums in float64 (one pass; exact
  across any split of the rows, ``_tree.BlockTree``), returned as float32;
- optionally ``pca``: the first principal direction of the **paired** differences, uncentred
  (CAA / repeng's ``pca_diff`` without the centring): document pairs are the k-th positive
  and k-th negative document in document-id order, each represented by the mean of its
  selected rows, ``diff_k = p_k - n_k``; the direction is the top eigenvector of
  ``sum_k diff_k diff_k^T`` (float64), its sign set so that ``sum_k diff_k . pca > 0``; unit
  norm. Memory: one float64 ``[d]`` sum per document of the two groups, per hook;
- ``norm`` (``||vector||``), ``auroc``: the separation of P and N along the vector, the
  Mann-Whitney probability that a positive row projects higher than a negative one (ties
  count one half) over every selected row (exact: a second pass keeps one float32
  projection per selected row and hook, ``4 * rows * hooks`` bytes), ``cosine [H, H]``
  between the hooks' vectors (NaN where widths differ);
- ``top``: the ``top_k`` selected rows with the highest projection ``x . vector / ||vector||``
  (activation units along the unit vector), with their token windows (``window`` tokens
  either side, never crossing a document) and the projection at every token of the window;
- ``lens`` (with ``model=``): the logit lens of each vector (final-norm gain folded, as
  ``lens.py``): top and bottom ``lens_t`` tokens; ``lens_outlier_z`` masks tokens whose
  unembedding norm is an outlier (``lens.token_mask``).

:meth:`SteeringVectors.save` writes a Zarr v3 group (layout in docs/FORMAT.md, "Steering
vectors"); :meth:`SteeringVectors.load` reads it back; ``to_steering_vectors`` /
``export_repeng`` give the formats of the ``steering-vectors`` and ``repeng`` packages.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _dist
from ._checkpoint import COMMIT_ROWS, Checkpoint, store_identity
from ._pass import AnalysisError
from ._rows import check_hooks, n_blocks, share, stream
from ._tree import BlockTree
from .contexts import windows
from .lens import logit_lens, token_mask, unembedding
from .output import FORMAT, prepare_out, read_attrs, write_group

KIND = "steering"


@dataclass
class SteeringVectors:
    """Per hook (in ``hooks`` order): ``vectors[h]`` float32 ``[d]`` and the reports; see the module docstring."""

    hooks: list[str]
    vectors: dict[str, torch.Tensor]
    mean_pos: dict[str, np.ndarray]
    mean_neg: dict[str, np.ndarray]
    count_pos: int
    count_neg: int
    norms: np.ndarray  # [H]
    auroc: np.ndarray  # [H]
    cosine: np.ndarray  # [H, H]
    pca: dict[str, torch.Tensor] | None = None
    top: dict[str, dict] = field(default_factory=dict)  # hook -> {values, rows, tokens, proj, win_rows}
    lens: dict[str, dict] = field(default_factory=dict)  # hook -> {top_ids, top_values, bottom_ids, bottom_values}
    meta: dict = field(default_factory=dict)

    def vector(self, hook: str, method: str = "mean_diff") -> torch.Tensor:
        if hook not in self.vectors:
            raise AnalysisError(f"no steering vector for hook {hook!r}: these are for {', '.join(self.hooks)}")
        if method == "pca":
            if self.pca is None:
                raise AnalysisError("these steering vectors have no PCA direction: compute them with pca=True")
            # The PCA direction is a unit vector: scale it to the mean difference's length.
            return self.pca[hook] * float(self.vectors[hook].norm())
        return self.vectors[hook]

    # -- storage ------------------------------------------------------------------------------

    def save(self, out) -> Path:
        out = Path(out)
        arrays = {
            "steering/norms": self.norms.astype(np.float64),
            "steering/auroc": self.auroc.astype(np.float64),
            "steering/cosine": self.cosine.astype(np.float64),
        }
        for j, h in enumerate(self.hooks):
            p = f"steering/{j}"
            arrays[f"{p}/vector"] = self.vectors[h].numpy().astype(np.float32)
            arrays[f"{p}/mean_pos"] = self.mean_pos[h]
            arrays[f"{p}/mean_neg"] = self.mean_neg[h]
            if self.pca is not None:
                arrays[f"{p}/pca"] = self.pca[h].numpy().astype(np.float32)
            for k, v in self.top.get(h, {}).items():
                arrays[f"{p}/top/{k}"] = v
            for k, v in self.lens.get(h, {}).items():
                arrays[f"{p}/lens/{k}"] = v
        attrs = {
            "format": FORMAT,
            "kind": KIND,
            "hooks": self.hooks,
            "count_pos": self.count_pos,
            "count_neg": self.count_neg,
            **self.meta,
        }
        prepare_out(out, KIND)
        write_group(out, arrays, attrs)
        return out

    @classmethod
    def load(cls, path) -> "SteeringVectors":
        import zarr

        path = Path(path)
        a = read_attrs(path)
        if a is None or a.get("kind") != KIND:
            raise AnalysisError(f"no steering vectors at {path}: write them with actstore steering (or .save())")
        g = zarr.open_group(str(path), mode="r")
        hooks = list(a["hooks"])
        rd = lambda k: g[k][...]  # noqa: E731
        has = lambda k: k in g  # noqa: E731
        vec, mp, mn, pca, top, lens = {}, {}, {}, {}, {}, {}
        for j, h in enumerate(hooks):
            p = f"steering/{j}"
            vec[h] = torch.from_numpy(rd(f"{p}/vector"))
            mp[h], mn[h] = rd(f"{p}/mean_pos"), rd(f"{p}/mean_neg")
            if has(f"{p}/pca"):
                pca[h] = torch.from_numpy(rd(f"{p}/pca"))
            if has(f"{p}/top"):
                top[h] = {k: rd(f"{p}/top/{k}") for k in g[f"{p}/top"].array_keys()}
            if has(f"{p}/lens"):
                lens[h] = {k: rd(f"{p}/lens/{k}") for k in g[f"{p}/lens"].array_keys()}
        meta = {k: v for k, v in a.items() if k not in ("format", "kind", "hooks", "count_pos", "count_neg")}
        return cls(
            hooks,
            vec,
            mp,
            mn,
            int(a["count_pos"]),
            int(a["count_neg"]),
            rd("steering/norms"),
            rd("steering/auroc"),
            rd("steering/cosine"),
            pca or None,
            top,
            lens,
            meta,
        )

    # -- interop ------------------------------------------------------------------------------

    def layer_vectors(self, method: str = "mean_diff", layers: dict | None = None) -> dict[int, torch.Tensor]:
        """``{decoder layer index: vector}``: hook ``...layers.N`` (a decoder block's output) is
        layer N; ``layers`` maps other hook names to indices."""
        out = {}
        for h in self.hooks:
            if layers and h in layers:
                i = int(layers[h])
            else:
                m = re.search(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)$", h)
                if m is None:
                    raise AnalysisError(
                        f"hook {h!r} is not a decoder block's output (…layers.N): pass layers={{hook: index}}"
                    )
                i = int(m.group(1))
            out[i] = self.vector(h, method).float().clone()
        return out

    def to_steering_vectors(self, method: str = "mean_diff", layers: dict | None = None):
        """A ``steering_vectors.SteeringVector`` (the package's class; layer_type decoder_block)."""
        try:
            from steering_vectors import SteeringVector
        except ImportError:
            raise AnalysisError(
                "the steering-vectors package is not installed: pip install --no-deps steering-vectors"
            ) from None
        return SteeringVector(self.layer_vectors(method, layers), "decoder_block")

    def export_steering_vectors(self, path, method: str = "mean_diff", layers: dict | None = None) -> Path:
        """``torch.save`` of ``{"layer_activations": {layer: tensor}, "layer_type": "decoder_block"}``:
        the fields of ``steering_vectors.SteeringVector``, for its users' own loading (torch's
        weights-only loader, then ``SteeringVector(**fields)``). actstore writes this file and
        never reads one back."""
        torch.save({"layer_activations": self.layer_vectors(method, layers), "layer_type": "decoder_block"}, path)
        return Path(path)

    def export_repeng(self, path, model_hint: str, method: str = "pca", layers: dict | None = None) -> Path:
        """repeng's control-vector GGUF (``ControlVector.export_gguf``): architecture
        ``controlvector``, ``controlvector.model_hint``, ``controlvector.layer_count`` and one
        float32 tensor ``direction.<layer>`` per layer; ``ControlVector.import_gguf`` reads it.
        repeng's own vectors are unit PCA directions, so ``method="pca"`` is the default when
        computed, else the mean difference."""
        import gguf  # deferred: only this export needs it (the "gguf" package, as SmolLM2 loading)

        if method == "pca" and self.pca is None:
            method = "mean_diff"
        vecs = self.layer_vectors(method, layers)
        w = gguf.GGUFWriter(os.fspath(path), "controlvector")
        w.add_string("controlvector.model_hint", model_hint)
        w.add_uint32("controlvector.layer_count", len(vecs))
        for layer, v in vecs.items():
            w.add_tensor(f"direction.{layer}", v.numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return Path(path)


# -- the pass --------------------------------------------------------------------------------


def _group_index(groups, name) -> int:
    if name not in groups.names:
        raise AnalysisError(f"no group {name!r}: the groups are {', '.join(groups.names)}")
    return groups.names.index(name)


def _sums_pass(store, hooks, groups, blocks, block_rows, want_docs: bool, ck: Checkpoint | None = None, name="sums"):
    """Pass 1 over ``blocks``: a BlockTree of per-group float64 sums per hook, the counts, and
    (for the paired PCA) per-(block, document) float64 sums. ``ck``: commit the pass as
    ``steering.<name>`` (resumable)."""
    G = len(groups.names)
    widths = [store.schema.hooks[h].d for h in hooks] if want_docs else []
    tree = BlockTree()
    counts = np.zeros(G, np.int64)
    docs = []  # (block, doc ids [u], {hook index: [u, d] sums}, counts [u])

    def fn(b):
        nonlocal counts
        counts = counts + np.bincount(b.group, minlength=G)
        payload = {}
        # Group sums with NumPy's float64 accumulation (pairwise, no float64 copy of the block):
        # 1.8 ms for 8192 x 256 here, against 21 ms to cast the block to float64 in torch.
        present = np.unique(b.group)
        sel = {g: (None if present.size == 1 else b.group == g) for g in present.tolist()}
        if want_docs:
            u, inv = np.unique(b.doc, return_inverse=True)
            docs.append((b.block, u, {}, np.bincount(inv, minlength=u.size)))
        for j, h in enumerate(hooks):
            x = b.x[h].numpy()
            s = np.zeros((G, x.shape[1]))
            for g, m in sel.items():
                s[g] = (x if m is None else x[m]).sum(0, dtype=np.float64)
            payload[f"s{j}"] = s
            if want_docs:
                docs[-1][2][j] = np.stack([x[inv == k].sum(0, dtype=np.float64) for k in range(u.size)])
        tree.push(b.block, payload)

    saved = 0  # docs entries already in a commit: a commit appends only the new ones

    def save() -> dict:
        nonlocal saved
        new, saved = docs[saved:], len(docs)
        return {**tree.state_dict("tree/"), "counts": counts, **_docs_state(new, widths)}

    def load(sd: dict) -> None:
        nonlocal counts, saved
        tree.load_state_dict(sd, "tree/")
        counts = sd["counts"]
        docs[:] = _docs_from_state(sd, len(hooks)) if "+docs/block" in sd else []
        saved = len(docs)

    resume = ck.track(f"steering.{name}", save, load) if ck is not None else None
    stream(store, hooks, groups, blocks, block_rows, fn, resume)
    return {"tree": tree, "counts": counts, "docs": docs}


def _docs_state(docs: list, widths: list[int]) -> dict:
    """The per-(block, document) sums ``docs`` as flat arrays, appended at each commit
    (``+docs/block``, ``+docs/size``, ``+docs/u``, ``+docs/cnt``, ``+docs/s<j>``)."""
    cat = lambda xs, empty: np.concatenate(xs) if xs else empty  # noqa: E731
    sd = {
        "+docs/block": np.array([t[0] for t in docs], np.int64),
        "+docs/size": np.array([t[1].size for t in docs], np.int64),
        "+docs/u": cat([t[1] for t in docs], np.zeros(0, np.int64)),
        "+docs/cnt": cat([t[3] for t in docs], np.zeros(0, np.int64)),
    }
    for j, d in enumerate(widths):
        sd[f"+docs/s{j}"] = cat([t[2][j] for t in docs], np.zeros((0, d)))
    return sd


def _docs_from_state(sd: dict, H: int) -> list:
    cut = np.cumsum(sd["+docs/size"])[:-1]
    u, cnt = np.split(sd["+docs/u"], cut), np.split(sd["+docs/cnt"], cut)
    sums = [np.split(sd[f"+docs/s{j}"], cut) for j in range(H)]
    return [(int(b), u[i], {j: sums[j][i] for j in range(H)}, cnt[i]) for i, b in enumerate(sd["+docs/block"].tolist())]


def _proj_pass(store, hooks, groups, blocks, block_rows, units: list[torch.Tensor], ck=None, name="proj"):
    """Pass 2: the projection of every selected row on each hook's unit vector."""
    out = []  # (rows [n], group [n], proj [n, H] float32)

    def fn(b):
        p = np.stack([b.x[h].numpy() @ units[j].numpy() for j, h in enumerate(hooks)], 1).astype(np.float32)
        out.append((b.rows, b.group, p))

    saved = 0  # blocks of ``out`` already in a commit: a commit appends only the new ones
    KEYS = ("rows", "group", "proj")

    def save() -> dict:
        nonlocal saved
        new, saved = out[saved:], len(out)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, len(hooks)), np.float32))
        return {f"+{k}": np.concatenate([p[i] for p in new]) if new else empty[i] for i, k in enumerate(KEYS)}

    def load(sd: dict) -> None:
        nonlocal saved
        out[:] = [tuple(sd[f"+{k}"] for k in KEYS)] if "+rows" in sd else []
        saved = len(out)

    resume = ck.track(f"steering.{name}", save, load) if ck is not None else None
    stream(store, hooks, groups, blocks, block_rows, fn, resume)
    return out


def _gather(obj, world: int):
    """Every rank's ``obj``, in rank order (torch.distributed), or ``[obj]`` for one process."""
    dist = _dist.group()
    if world == 1 or dist is None:
        return [obj]
    got = [None] * world
    dist.all_gather_object(got, obj)
    return got


def merge_sums(states: list[dict]) -> dict:
    tree = BlockTree()
    counts = None
    docs = []
    for s in states:
        tree.merge(s["tree"])
        counts = s["counts"] if counts is None else counts + s["counts"]
        docs += s["docs"]
    return {"tree": tree, "counts": counts, "docs": docs}


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties one half (Mann-Whitney U / (n_p n_n))."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    allv = np.concatenate([pos, neg]).astype(np.float64)
    order = np.argsort(allv, kind="stable")
    sv = allv[order]
    ranks = np.empty(allv.size, np.float64)
    # Average ranks over ties.
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], sv.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _paired_pca(docs, hooks, gi_doc, ip, ineg) -> dict[str, torch.Tensor]:
    """The paired-difference PCA direction per hook (see the module docstring)."""
    # Per document: sums folded in block order (the same whatever the split), then means.
    by_doc: dict[int, list] = {}
    for block, u, sums, cnt in sorted(docs, key=lambda t: t[0]):
        for k, d_ in enumerate(u.tolist()):
            by_doc.setdefault(d_, []).append((block, {j: s[k] for j, s in sums.items()}, int(cnt[k])))
    pos_docs = sorted(d for d in by_doc if gi_doc[d] == ip)
    neg_docs = sorted(d for d in by_doc if gi_doc[d] == ineg)
    n = min(len(pos_docs), len(neg_docs))
    if n == 0:
        raise AnalysisError("the paired PCA needs documents in both groups: check the groups")

    def mean(d_, j):
        parts = by_doc[d_]
        s = parts[0][1][j].copy()
        for _, sj, _ in parts[1:]:
            s = s + sj[j]
        return s / sum(c for _, _, c in parts)

    out = {}
    for j, h in enumerate(hooks):
        diff = np.stack([mean(p, j) - mean(q, j) for p, q in zip(pos_docs[:n], neg_docs[:n])])
        w, v = np.linalg.eigh(diff.T @ diff)
        top = v[:, -1]
        if (diff @ top).sum() < 0:
            top = -top
        out[h] = torch.from_numpy(top.astype(np.float32))
    return out


def steering_vectors(
    store,
    hooks,
    groups,
    positive: str,
    negative: str,
    *,
    pca: bool = False,
    top_k: int = 20,
    window: int = 8,
    model=None,
    lens_t: int = 10,
    lens_outlier_z: float = 0.0,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
) -> SteeringVectors:
    """Steering vectors of ``store`` (a Store or path) at ``hooks`` from ``groups``
    (:func:`~actstore.analysis.groups.resolve`): ``mean(positive) - mean(negative)`` per hook,
    plus the reports of the module docstring. Under torchrun every rank reads its share of
    the blocks and every rank returns the merged result.

    state_dir: where the passes (``steering.sums``, ``steering.proj``) commit their state
    every ``commit_rows`` store rows, so that a rerun after a crash continues and returns
    the same arrays (``_checkpoint.py``; None: no state); on_commit(pass, seq, rows)."""
    from ..api import open as open_store

    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    hooks = check_hooks(store, hooks)
    ip, ineg = _group_index(groups, positive), _group_index(groups, negative)
    if ip == ineg:
        raise AnalysisError("positive and negative are the same group: name two different groups")
    rank, world = _dist.rank_world(rank, world_size)
    ident = {"kind": KIND, "store": store_identity(store), "hooks": hooks, "groups": groups.to_json()}
    ident.update(positive=positive, negative=negative, pca=bool(pca), block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    blocks = share(n_blocks(store, block_rows), rank, world)
    st = merge_sums(_gather(_sums_pass(store, hooks, groups, blocks, block_rows, pca, ck), world))
    counts = st["counts"]
    if counts[ip] == 0 or counts[ineg] == 0:
        empty = positive if counts[ip] == 0 else negative
        raise AnalysisError(f"group {empty!r} has no rows: check the groups, positions and drop flags")
    widths = {h: store.schema.hooks[h].d for h in hooks}
    total = st["tree"].total({f"s{j}": np.zeros((len(groups.names), widths[h])) for j, h in enumerate(hooks)})
    vec, mp, mn = {}, {}, {}
    for j, h in enumerate(hooks):
        mp[h] = total[f"s{j}"][ip] / counts[ip]
        mn[h] = total[f"s{j}"][ineg] / counts[ineg]
        vec[h] = torch.from_numpy((mp[h] - mn[h]).astype(np.float32))
    norms = np.array([float(np.linalg.norm(mp[h] - mn[h])) for h in hooks])
    H = len(hooks)
    cos = np.full((H, H), np.nan)
    for a in range(H):
        for b in range(H):
            va, vb = mp[hooks[a]] - mn[hooks[a]], mp[hooks[b]] - mn[hooks[b]]
            if va.size == vb.size:
                cos[a, b] = float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-300))
    pca_dirs = _paired_pca(st["docs"], hooks, groups.doc_group, ip, ineg) if pca else None

    units = [vec[h] / max(float(vec[h].norm()), 1e-30) for h in hooks]
    parts = [p for got in _gather(_proj_pass(store, hooks, groups, blocks, block_rows, units, ck), world) for p in got]
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    grp = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    proj = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, H), np.float32)
    au = np.array([auroc(proj[grp == ip, j], proj[grp == ineg, j]) for j in range(H)])

    top = {}
    k = min(int(top_k), rows.size)
    if k > 0:

        def doc_of(idx):
            return store.tokens(idx)["doc"].numpy().astype(np.int64)

        for j, h in enumerate(hooks):
            order = np.lexsort((rows, -proj[:, j].astype(np.float64)))[:k]  # value desc, then row asc
            trows = rows[order]
            win = windows(doc_of, store.rows, trows, int(window))
            valid = win >= 0
            tok = np.full(win.shape, -1, np.int32)
            wp = np.zeros(win.shape, np.float32)
            if valid.any():
                uniq = np.unique(win[valid])
                at = np.searchsorted(uniq, win[valid])
                tok[valid] = store.tokens(uniq)["token"].numpy()[at]
                wp[valid] = (store.read(h, uniq) @ units[j]).numpy()[at]
            top[h] = {"rows": trows, "values": proj[order, j], "tokens": tok, "proj": wp, "window_rows": win}

    lens = {}
    if model is not None:
        from ..models import prepare_model

        m = prepare_model(model, device=torch.device("cpu")).model
        w_u, gain = unembedding(m)
        masked = token_mask(w_u, None, float(lens_outlier_z), False)
        for h in hooks:
            if widths[h] != w_u.shape[1]:
                continue  # not a residual-stream width: no lens
            got = logit_lens(vec[h][None].to(w_u.dtype), w_u, gain, int(lens_t), masked)
            lens[h] = {k.split("/")[1]: v[0] for k, v in got.items() if k != "lens/masked"}

    meta = {
        "store": {"path": str(store.path), "rows": store.rows},
        "groups": groups.to_json(),
        "positive": positive,
        "negative": negative,
        "block_rows": int(block_rows),
        "projection": "x . vector / ||vector||",
    }
    return SteeringVectors(
        hooks,
        vec,
        mp,
        mn,
        int(counts[ip]),
        int(counts[ineg]),
        norms,
        au,
        cos,
        pca_dirs,
        top,
        lens,
        json.loads(json.dumps(meta)),
    )
