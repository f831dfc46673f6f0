"""Linear probes on a store's activations, per hook, all hooks in each pass: mass-mean and
logistic regression, train and test split by document.

Labels: the rows of the ``positive`` group are 1, those of ``negative`` 0 (``groups.py``:
sources, a label table, document lists). Split: a document is in the test set when
``splitmix64(doc ^ seed) / 2^64 < test_frac``, so no document has rows on both sides.

- **mass-mean** (geometry-of-truth's "MM" probe): ``w = mean(x | pos, train) - mean(x |
  neg, train)`` (float64 sums, one pass, exact under any split of the rows), threshold at
  the midpoint of the two class means' projections;
- **logistic regression**, streamed: features standardized with the training rows' mean and
  std (from the same first pass), then ``epochs`` passes of minibatch Adam (``lr``, one step
  per ``batch`` training rows, blocks in store order: deterministic) on sklearn's
  ``LogisticRegression`` objective divided by the row count, ``mean log-loss + ||w||^2 /
  (2 C n)``; the weights are returned in raw activation units (``w / std``, with the bias
  folded). One process: under torchrun only the mass-mean pass is split across ranks.

Evaluation on the test rows (a last pass): accuracy and AUROC of each probe per hook;
:func:`layers_svg` plots them across the hooks.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _dist
from ._checkpoint import COMMIT_ROWS, Checkpoint, store_identity
from ._pass import AnalysisError
from ._rows import check_hooks, n_blocks, share, stream
from ._tree import BlockTree
from .output import FORMAT, prepare_out, write_group
from .pca import splitmix64
from .steering import _gather, _group_index, auroc

KIND = "probes"


@dataclass
class Probes:
    """Per hook: ``mm_direction [d]``, ``mm_threshold``, ``lr_weight [d]``, ``lr_bias`` (raw
    units: predict positive when ``x . w + b > 0``); ``accuracy`` / ``auroc`` ``{"mass_mean":
    [H], "logistic": [H]}`` on the test rows; row counts."""

    hooks: list[str]
    mm_direction: dict[str, np.ndarray]
    mm_threshold: dict[str, float]
    lr_weight: dict[str, np.ndarray]
    lr_bias: dict[str, float]
    accuracy: dict[str, np.ndarray]
    auroc: dict[str, np.ndarray]
    counts: dict[str, int]
    meta: dict = field(default_factory=dict)

    def save(self, out) -> Path:
        out = Path(out)
        arrays = {}
        for kind in ("mass_mean", "logistic"):
            arrays[f"probes/{kind}/accuracy"] = self.accuracy[kind]
            arrays[f"probes/{kind}/auroc"] = self.auroc[kind]
        for j, h in enumerate(self.hooks):
            arrays[f"probes/{j}/mm_direction"] = self.mm_direction[h]
            arrays[f"probes/{j}/lr_weight"] = self.lr_weight[h]
        prepare_out(out, KIND)
        attrs = {"format": FORMAT, "kind": KIND, "hooks": self.hooks, "counts": self.counts}
        attrs.update(
            mm_threshold=[self.mm_threshold[h] for h in self.hooks],
            lr_bias=[self.lr_bias[h] for h in self.hooks],
            **self.meta,
        )
        write_group(out, arrays, attrs)
        (out / "probes.svg").write_text(layers_svg(self))
        return out


def is_test(doc: np.ndarray, seed: int, test_frac: float) -> np.ndarray:
    h = splitmix64(doc.astype(np.int64) ^ np.int64(seed))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < test_frac


def _sums(store, hooks, groups, blocks, block_rows, ip, ineg, seed, test_frac, ck=None):
    tree = BlockTree()
    counts = np.zeros(4, np.int64)  # train pos, train neg, test pos, test neg

    def fn(b):
        test = is_test(b.doc, seed, test_frac)
        lab = np.where(b.group == ip, 0, np.where(b.group == ineg, 1, -1))
        for t, off in ((False, 0), (True, 2)):
            for c in (0, 1):
                counts[off + c] += int(((test == t) & (lab == c)).sum())
        payload = {}
        tr = torch.from_numpy(~test & (lab >= 0))
        oh = torch.zeros(2, b.rows.size, dtype=torch.float64)
        oh[torch.from_numpy(np.clip(lab, 0, 1)), torch.arange(b.rows.size)] = tr.double()
        for j, h in enumerate(hooks):
            x = b.x[h].double()
            payload[f"{j}/s"] = (oh @ x).numpy()  # [2, d]: pos, neg training sums
            payload[f"{j}/sq"] = (tr.double() @ (x * x)).numpy()  # [d]: training sum of squares
        tree.push(b.block, payload)

    def load(sd: dict) -> None:
        tree.load_state_dict(sd, "tree/")
        counts[:] = sd["counts"]

    resume = ck.track("probes.sums", lambda: {**tree.state_dict("tree/"), "counts": counts}, load) if ck else None
    stream(store, hooks, groups, blocks, block_rows, fn, resume)
    return {"tree": tree, "counts": counts}


def probes(
    store,
    hooks,
    groups,
    positive: str,
    negative: str,
    *,
    test_frac: float = 0.25,
    seed: int = 0,
    epochs: int = 20,
    lr: float = 0.01,
    batch: int = 256,
    C: float = 1.0,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
) -> Probes:
    """Mass-mean and logistic probes of ``positive`` vs ``negative`` per hook (see the module docstring).
    state_dir / commit_rows / on_commit: the passes (``probes.sums``, ``probes.sgd.<epoch>``,
    ``probes.eval``) commit their state there, the Adam weights, moments and step count
    included, and a rerun continues from it (``_checkpoint.py``; None: no state)."""
    from ..api import open as open_store

    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    hooks = check_hooks(store, hooks)
    ip, ineg = _group_index(groups, positive), _group_index(groups, negative)
    if ip == ineg:
        raise AnalysisError("positive and negative are the same group: name two different groups")
    if not 0 < test_frac < 1:
        raise AnalysisError(f"test_frac {test_frac}: give a fraction in (0, 1)")
    rank, world = _dist.rank_world(rank, world_size)
    ident = {"kind": KIND, "store": store_identity(store), "hooks": hooks, "groups": groups.to_json()}
    ident.update(positive=positive, negative=negative, test_frac=float(test_frac), seed=int(seed))
    ident.update(epochs=int(epochs), lr=float(lr), batch=int(batch), C=float(C), block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    nb = n_blocks(store, block_rows)
    mine = share(nb, rank, world)
    parts = _gather(_sums(store, hooks, groups, mine, block_rows, ip, ineg, seed, test_frac, ck), world)
    tree = parts[0]["tree"]
    for p in parts[1:]:
        tree.merge(p["tree"])
    tot = tree.total({})
    counts = sum(p["counts"] for p in parts)
    names = ("train_pos", "train_neg", "test_pos", "test_neg")
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        raise AnalysisError(
            f"no rows in {', '.join(empty)}: the probe needs both groups on both sides of the document split "
            "(more documents, or another test_frac)"
        )
    n_tr = int(counts[0] + counts[1])
    mm_dir, mm_thr, mu, sd = {}, {}, {}, {}
    for j, h in enumerate(hooks):
        s = tot[f"{j}/s"]
        mp, mn = s[0] / counts[0], s[1] / counts[1]
        mm_dir[h] = mp - mn
        mm_thr[h] = float((mp + mn) @ mm_dir[h] / 2)
        mu[h] = (s[0] + s[1]) / n_tr
        sd[h] = np.sqrt(np.maximum(tot[f"{j}/sq"] / n_tr - mu[h] ** 2, 0.0))
        sd[h] = np.where(sd[h] > 0, sd[h], 1.0)

    # Logistic regression: epochs of minibatch Adam over the training rows, in store order.
    # The gradient is written out (no autograd, no torch.optim: its first use imports
    # torch._dynamo, 3.7 s here), float64 throughout.
    params = {h: np.zeros(store.schema.hooks[h].d + 1) for h in hooks}
    adam_m = {h: np.zeros_like(w) for h, w in params.items()}
    adam_v = {h: np.zeros_like(w) for h, w in params.items()}
    t_step = [0]
    l2 = 1.0 / (2.0 * C * n_tr)
    b1, b2, eps = 0.9, 0.999, 1e-8

    def step(b):
        test = is_test(b.doc, seed, test_frac)
        keep = ~test & ((b.group == ip) | (b.group == ineg))
        if not keep.any():
            return
        y_all = (b.group[keep] == ip).astype(np.float64)
        z_all = {h: (b.x[h].numpy()[keep].astype(np.float64) - mu[h]) / sd[h] for h in hooks}
        for a in range(0, y_all.size, batch):
            y = y_all[a : a + batch]
            t_step[0] += 1
            t = t_step[0]
            for h in hooks:
                z, w = z_all[h][a : a + batch], params[h]
                p = 1.0 / (1.0 + np.exp(-(z @ w[:-1] + w[-1])))
                g = np.empty_like(w)
                g[:-1] = z.T @ (p - y) / y.size + 2.0 * l2 * w[:-1]
                g[-1] = (p - y).mean()
                adam_m[h] = b1 * adam_m[h] + (1 - b1) * g
                adam_v[h] = b2 * adam_v[h] + (1 - b2) * g * g
                mhat, vhat = adam_m[h] / (1 - b1**t), adam_v[h] / (1 - b2**t)
                w -= lr * mhat / (np.sqrt(vhat) + eps)

    def save_sgd() -> dict:
        sd = {"t": np.array(t_step, np.int64)}
        for j, h in enumerate(hooks):
            sd[f"{j}/w"], sd[f"{j}/m"], sd[f"{j}/v"] = params[h], adam_m[h], adam_v[h]
        return sd

    def load_sgd(sd: dict) -> None:
        t_step[0] = int(sd["t"][0])
        for j, h in enumerate(hooks):
            params[h], adam_m[h], adam_v[h] = (sd[f"{j}/{k}"].copy() for k in ("w", "m", "v"))

    # A minibatch is a slice of one block's training rows, so the steps depend on the block
    # alone: a resumed epoch takes the same steps as an uninterrupted one.
    for e in range(int(epochs)):
        resume = ck.track(f"probes.sgd.{e}", save_sgd, load_sgd) if ck else None
        stream(store, hooks, groups, range(nb), block_rows, step, resume)
    lr_w, lr_b = {}, {}
    for h in hooks:
        w = params[h]
        lr_w[h] = w[:-1] / sd[h]
        lr_b[h] = float(w[-1] - (mu[h] / sd[h]) @ w[:-1])

    # Test rows: accuracy and AUROC of both probes.
    scores = {h: ([], [], []) for h in hooks}  # mass-mean, logistic, label

    def evaluate(b):
        test = is_test(b.doc, seed, test_frac) & ((b.group == ip) | (b.group == ineg))
        if not test.any():
            return
        y = (b.group[test] == ip).astype(np.int8)
        for h in hooks:
            x = b.x[h][test].double().numpy()
            scores[h][0].append(x @ mm_dir[h] - mm_thr[h])
            scores[h][1].append(x @ lr_w[h] + lr_b[h])
            scores[h][2].append(y)

    saved = 0  # blocks of scores already in a commit: a commit appends only the new ones
    empty = (np.zeros(0), np.zeros(0), np.zeros(0, np.int8))

    def save_eval() -> dict:
        nonlocal saved
        sd = {}
        for j, h in enumerate(hooks):
            for i, name in enumerate(("mm", "lr", "y")):
                new = scores[h][i][saved:]
                sd[f"+{j}/{name}"] = np.concatenate(new) if new else empty[i]
        saved = len(scores[hooks[0]][0])
        return sd

    def load_eval(sd: dict) -> None:
        nonlocal saved
        for j, h in enumerate(hooks):
            for i, name in enumerate(("mm", "lr", "y")):
                scores[h][i][:] = [sd[f"+{j}/{name}"]] if f"+{j}/{name}" in sd else []
        saved = len(scores[hooks[0]][0])

    resume = ck.track("probes.eval", save_eval, load_eval) if ck else None
    stream(store, hooks, groups, range(nb), block_rows, evaluate, resume)
    acc = {"mass_mean": [], "logistic": []}
    au = {"mass_mean": [], "logistic": []}
    for h in hooks:
        y = np.concatenate(scores[h][2]).astype(bool)
        for kind, i in (("mass_mean", 0), ("logistic", 1)):
            sc = np.concatenate(scores[h][i])
            acc[kind].append(float(((sc > 0) == y).mean()))
            au[kind].append(auroc(sc[y], sc[~y]))
    meta = {
        "store": {"path": str(store.path), "rows": store.rows},
        "groups": groups.to_json(),
        "positive": positive,
        "negative": negative,
        "test_frac": test_frac,
        "seed": seed,
        "logistic": {"epochs": epochs, "lr": lr, "batch": batch, "C": C, "optimizer": "Adam"},
    }
    return Probes(
        hooks,
        mm_dir,
        mm_thr,
        lr_w,
        lr_b,
        {k: np.array(v) for k, v in acc.items()},
        {k: np.array(v) for k, v in au.items()},
        dict(zip(names, (int(c) for c in counts))),
        meta,
    )


def layers_svg(res: Probes, width: int = 520, height: int = 300) -> str:
    """Accuracy and AUROC of both probes across the hooks (in order), as an SVG line plot."""
    pad, H = 40, len(res.hooks)
    xs = [pad + (width - 2 * pad) * (i / max(H - 1, 1)) for i in range(H)]

    def y(v):
        return height - pad - (height - 2 * pad) * (0.0 if v != v else v)  # v in [0, 1]; NaN at 0

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>',
        f'<text x="4" y="{pad + 4}">1.0</text><text x="4" y="{height - pad}">0.0</text>',
    ]
    series = [
        ("mass-mean accuracy", res.accuracy["mass_mean"], "#1f77b4", ""),
        ("logistic accuracy", res.accuracy["logistic"], "#d62728", ""),
        ("mass-mean AUROC", res.auroc["mass_mean"], "#1f77b4", ' stroke-dasharray="4 3"'),
        ("logistic AUROC", res.auroc["logistic"], "#d62728", ' stroke-dasharray="4 3"'),
    ]
    for k, (name, vals, color, dash) in enumerate(series):
        pts = " ".join(f"{x:.1f},{y(float(v)):.1f}" for x, v in zip(xs, vals))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}"{dash}/>')
        out.append(f'<text x="{pad + 6}" y="{pad + 14 + 13 * k}" fill="{color}">{html.escape(name)}</text>')
    for x, h in zip(xs, res.hooks):
        out.append(f'<text x="{x:.1f}" y="{height - pad + 14}" text-anchor="middle">{html.escape(h)}</text>')
    out.append("</svg>")
    return "\n".join(out)
