"""``run``: one analysis of a store with an SAE, resumable and split across ranks.

Steps: validate (hook, SAE width, token columns, output folder); stream this rank's
contiguous share of the selected blocks through every streaming job (``stats``, ``top``,
``bins``, ``top_tokens``), committing the jobs' state every ``commit_rows`` rows; once every
share is done, merge the shares in rank order, run the second pass of ``bins``' equal-width
mode if asked, collect ``contexts``, and write the output group.

Transcoders (``sae.cfg.is_transcoder``): the latents are encoded from the **source** hook's rows
(``cfg.hook``: the pass, ``contexts`` and ``ablation`` read it), and the decoder rows are in the
**target**'s space (``cfg.target``: ``lens`` reads them through the unembedding as they are, the
residual-stream contribution of an MLP-output target). The store must hold both hooks (a
one-line error otherwise); ``hook`` and ``target`` are in the output's attributes.

Resume: ``out/_state/<share>/state.json`` names the committed ``state-<seq>.npz`` (the
jobs' arrays, ``np.load(allow_pickle=False)``) and the next block; each file is written to
a temporary name, fsynced and renamed into place, the npz first. A rerun of the same
analysis continues from the committed block, and because blocks are aligned to global rows
and the float sums are tree-shaped (``_tree.py``), its output is byte-identical to an
uninterrupted run's. A folder holding another analysis (different store snapshot, hook,
SAE, rows, jobs or options) is refused.

Ranks: ``rank``/``world_size`` (default: torch.distributed's, else 0/1). Share r takes blocks
``[n*r//w, n*(r+1)//w)`` of the selection. Under torch.distributed rank 0 finishes after a
barrier; without it (shares run one after another, e.g. in tests) the call that completes
the last share finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import _dist
from ..api import open as open_store
from ..models import prepare_model, resolve_hooks
from ..sae import load as load_sae
from ..store.reader import Store
from ._checkpoint import commit, read_json, read_npz
from ._pass import AnalysisError, Encoder, Reducer, Selection, parse_flags, stream
from .ablation import Forward
from .ablation import ablation as ablate
from .ablation import options as ablation_options
from .bins import Bins, EqualWidthBins
from .contexts import contexts as collect_contexts
from .feature_stats import FeatureStats, busiest
from .lens import check_vocab, seen_tokens, unembedding
from .lens import lens as logit_lens
from .lens import options as lens_options
from .output import FORMAT, read_attrs, write_group
from .top import Top
from .top_tokens import TopTokens

STREAMING = {"stats": FeatureStats, "top": Top, "bins": Bins, "top_tokens": TopTokens}
JOBS = ("stats", "top", "bins", "contexts", "top_tokens", "lens", "ablation")
MODEL_JOBS = ("lens", "ablation")  # the jobs that run a model's weights
STATE = "_state"


def _parse_jobs(jobs) -> dict[str, dict]:
    if isinstance(jobs, str):
        jobs = [j.strip() for j in jobs.split(",") if j.strip()]
    spec = dict(jobs) if isinstance(jobs, dict) else {j: {} for j in jobs}
    bad = [j for j in spec if j not in JOBS]
    if bad or not spec:
        raise AnalysisError(f"unknown analysis job(s) {bad or '(none given)'}: use some of {', '.join(JOBS)}")
    if "contexts" in spec and not {"top", "bins"} & set(spec):
        raise AnalysisError("contexts are taken around the examples of top or bins: add top or bins to the jobs")
    if "ablation" in spec and "top" not in spec:
        raise AnalysisError("ablation runs on the top examples of each latent: add top to the jobs")
    if (spec.get("ablation") or {}).get("busiest") is not None and "stats" not in spec:
        raise AnalysisError("ablation.busiest ranks the latents by how often they fire: add stats to the jobs")
    return {j: dict(spec[j] or {}) for j in JOBS if j in spec}


def _weights_hash(head: str, module) -> str:
    h = hashlib.sha256(head.encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sae_hash(sae) -> str:
    return _weights_hash(sae.cfg.to_json(), sae)


def _job_config(job: str, opts: dict) -> dict:
    """The options of ``job`` that define its result, with defaults (part of the identity)."""
    if job == "contexts":
        return {"window": int(opts.get("window", 8))}
    if job == "lens":
        return lens_options(opts)
    if job == "ablation":
        return ablation_options(opts)
    return _make({job: opts}, 1)[0].config()


def _selection(store, rows, drop_flags, docs) -> Selection:
    n = store.rows
    if rows is None:
        lo, hi = 0, n
    elif isinstance(rows, slice):
        lo, hi, step = rows.indices(n)
        if step != 1:
            raise AnalysisError(f"rows={rows} has a step: select a contiguous range, then filter by flags or docs")
    else:
        lo, hi = (int(x) for x in rows)
    if not 0 <= lo <= hi <= n:
        raise AnalysisError(f"rows [{lo}, {hi}) are not inside the store's {n} rows")
    d = None if docs is None else tuple(int(x) for x in np.unique(np.asarray(docs, dtype=np.int64)))
    return Selection(lo, hi, parse_flags(drop_flags), d)


def parse_latents(latents, m: int) -> np.ndarray | None:
    """None, or the sorted unique latent ids of ``latents`` (ints, a range, or a string of ids
    and ranges ``"0-127,300"``), each checked against ``m``."""
    if latents is None:
        return None
    if isinstance(latents, str):
        ids = []
        for part in (p.strip() for p in latents.split(",")):
            a, dash, b = part.partition("-")
            try:
                ids.extend(range(int(a), int(b) + 1) if dash else [int(part)])
            except ValueError:
                raise AnalysisError(
                    f"latents {latents!r}: {part!r} is not an id or a range A-B (e.g. 0-127,300)"
                ) from None
        latents = ids
    ids = np.unique(np.asarray(list(latents), dtype=np.int64))
    if ids.size == 0:
        raise AnalysisError("latents is empty: name at least one latent, or leave it out for all")
    bad = ids[(ids < 0) | (ids >= m)]
    if bad.size:
        raise AnalysisError(f"unknown latent {int(bad[0])}: this SAE has latents 0..{m - 1}")
    return ids


class _ShareState:
    """The committed state of one share (or of the second pass) under ``out/_state/<name>``."""

    def __init__(self, out: Path, name: str, identity: str):
        self.dir, self.identity = out / STATE / name, identity
        self.doc = {"identity": identity, "next_block": None, "rows": 0, "done": False, "seq": 0, "npz": None}

    def load(self, reducers: list[Reducer]) -> bool:
        doc = read_json(self.dir / "state.json", self.dir.parent)
        if doc is None:
            return False
        if doc.get("identity") != self.identity:
            raise AnalysisError(
                f"{self.dir.parent.parent} holds a different analysis in progress: pick another "
                "output folder, or delete it to start again"
            )
        arrays = read_npz(self.dir / doc["npz"], self.dir.parent)
        for r in reducers:
            head = f"{r.name}/"
            r.load_state_dict({k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)})
        self.doc = doc
        return True

    def save(self, reducers: list[Reducer], next_block: int, rows: int, done: bool) -> int:
        arrays = {f"{r.name}/{k}": v for r in reducers for k, v in r.state_dict().items()}
        doc = {**self.doc, "next_block": int(next_block), "rows": int(rows), "done": bool(done)}
        self.doc = commit(self.dir, arrays, doc)
        return self.doc["seq"]


def _make(spec: dict, m: int) -> list[Reducer]:
    try:
        return [STREAMING[j](m, **opts) for j, opts in spec.items() if j in STREAMING]
    except TypeError as e:
        raise AnalysisError(f"bad job option: {e}") from None


def sae_hooks(store, sae, hook: str | None = None) -> tuple[str, str | None]:
    """``(hook, target)``: the store hook the SAE encodes (``hook``, else the SAE's own, else
    the store's only hook) and, for a transcoder, the hook its decoder writes (None for an
    SAE). A transcoder's source is ``cfg.hook`` and its target ``cfg.target``; the store must
    hold both. Each hook's width is checked against the SAE's."""
    cfg, have = sae.cfg, ", ".join(store.hooks)
    if cfg.blocks > 1:  # a crosscoder's K blocks, a CLT's L layers: no one hook to encode
        raise AnalysisError(
            f"the feature jobs encode one hook, and this {cfg.arch} reads {cfg.blocks} ({', '.join(cfg.sources)})"
            + (": run the crosscoder job (--jobs crosscoder)" if cfg.arch == "crosscoder" else "")
        )
    if cfg.is_transcoder:
        if hook is not None and cfg.hook not in (None, hook):
            raise AnalysisError(f"this {cfg.arch} reads hook {cfg.hook!r}, not {hook!r}: leave the hook out")
        hook = hook or cfg.hook
        if hook is None:
            raise AnalysisError(f"which hook? the {cfg.arch} names no source hook: pass its source, one of {have}")
        target = cfg.target or hook
        missing = [h for h in (hook, target) if h not in store.hooks]
        if missing:
            raise AnalysisError(
                f"this {cfg.arch} reads {hook!r} and writes {target!r}, and the store lacks "
                f"{', '.join(map(repr, missing))} (it holds {have}): capture both hooks"
            )
    else:
        target = None
        if hook is None:
            hook = cfg.hook if cfg.hook in store.hooks else (store.hooks[0] if len(store.hooks) == 1 else None)
            if hook is None:
                raise AnalysisError(f"which hook? the SAE names none of {have}: pass hook=")
        if hook not in store.hooks:
            raise AnalysisError(f"unknown hook {hook!r}: this store holds {have}")
    for role, name, width in (("takes", hook, cfg.d), ("writes", target, cfg.d_target)):
        d = None if name is None else len(store.stats(name)["mean"])
        if d is not None and d != width:
            raise AnalysisError(
                f"the SAE {role} width {width} but hook {name!r} has width {d}: use the SAE trained on this hook"
            )
    return hook, target


def _pass_share(
    store,
    hook,
    encoder,
    sel,
    blocks: range,
    block_rows,
    reducers,
    state: _ShareState,
    commit_rows,
    on_commit,
    progress: bool,
    label: str,
) -> int:
    """Stream ``blocks`` into ``reducers`` from where ``state`` left off; returns rows seen."""
    start = blocks.start if state.doc["next_block"] is None else state.doc["next_block"]
    todo = range(start, blocks.stop)
    seen, since = state.doc["rows"], 0

    def span(b: range) -> int:  # store rows of the selected range that blocks ``b`` cover
        return max(0, min(sel.hi, b.stop * block_rows) - max(sel.lo, b.start * block_rows)) if len(b) else 0

    bar = _progress_bar(label, span(blocks), span(range(blocks.start, start))) if progress else None

    def after(block: int, n: int) -> None:
        nonlocal seen, since
        seen, since = seen + n, since + n
        if bar is not None:
            bar.update(span(range(block, block + 1)))
        if since >= commit_rows and block + 1 < blocks.stop:
            seq = state.save(reducers, block + 1, seen, False)
            since = 0
            if on_commit is not None:
                on_commit(seq, seen)

    try:
        stream(store, hook, encoder, sel, todo, block_rows, reducers, after)
    finally:
        if bar is not None:
            bar.close()
    if not state.doc["done"]:
        seq = state.save(reducers, blocks.stop, seen, True)
        if on_commit is not None:
            on_commit(seq, seen)
    return seen


def _vocab_size(model) -> int | None:
    """The model's vocabulary (rows of its unembedding, else of its input embedding), or None if it has neither."""
    try:
        return int(unembedding(model)[0].shape[0])
    except AnalysisError:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        return None if emb is None else int(emb.weight.shape[0])


def _progress_bar(label: str, total: int, initial: int):
    """A tqdm bar in store rows (rows/s), on stderr; the selected range's rows, dropped ones included."""
    # Deferred: tqdm is an optional extra (actstore[capture]) that only a shown bar needs.
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="row",
        unit_scale=True,
        dynamic_ncols=True,
        file=sys.stderr,
        desc=f"analyze {label}",
        mininterval=0.5,
    )


def run(
    store,
    sae,
    jobs=("stats", "top", "bins"),
    out="analysis",
    *,
    hook: str | None = None,
    model=None,
    rows=None,
    drop_flags=None,
    docs=None,
    latents=None,
    block_rows: int = 4096,
    commit_rows: int = 1 << 20,
    rank: int | None = None,
    world_size: int | None = None,
    device=None,
    progress: bool = False,
    on_commit: Callable[[int, int], None] | None = None,
    plan: dict | None = None,
) -> Path | None:
    """Analyse ``store`` (a Store or path) with ``sae`` (an SAE module or saved folder) into
    the Zarr group ``out``; returns ``out``, or None for a share that did not finish the run.

    jobs: names (list or "stats,top") or {name: options}: ``stats`` (per_decade, lo_exp,
        hi_exp, dense_threshold), ``top`` (k), ``bins`` (width, n_abs, quantiles, n_equal,
        samples, seed), ``top_tokens`` (t), ``contexts`` (window), ``lens`` (t, outlier_z, unseen),
        ``ablation`` (examples, tokens, batch, latents).
    model: for ``lens`` and ``ablation``: an HF causal LM (module, local folder or ``python:mod:fn``).
    hook: the store hook to encode (default: the SAE's; a transcoder's source, which it must be).
    rows: None, a slice or (lo, hi) of store rows; drop_flags: "bos,special" or a bit mask;
        docs: document ids to keep.
    latents: None (all) or the latent ids to analyse (an iterable, a range, or "0-127,300"):
        every job then covers only those (the encode still computes every latent, as TopK needs);
        ``latents/selected [m]`` bool marks them in the output.
    block_rows: rows read and encoded at once; commit_rows: rows between state commits.
    plan: the representation jobs run after this one into ``out`` (``jobs.run_all``): listed in
        ``jobs`` and recorded as ``represent`` in the root attributes, and part of the identity.
    """
    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    sae = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
    out = Path(out)
    spec = _parse_jobs(jobs)
    hook, target = sae_hooks(store, sae, hook)
    sel = _selection(store, rows, drop_flags, docs)
    if {"contexts", "top_tokens", "ablation"} & set(spec) and sel.hi > sel.lo:
        probe = store.tokens(slice(sel.lo, min(sel.hi, sel.lo + block_rows)))["token"]
        if bool((probe < 0).all()):
            raise AnalysisError(
                f"store {store.path} holds no token ids (token column is -1): contexts, top_tokens and "
                "ablation need a store captured with tokens"
            )
    rank, world = _dist.rank_world(rank, world_size)
    if not 0 <= rank < world:
        raise AnalysisError(f"rank {rank} is not in 0..{world - 1}")
    sae = sae.to(_dist.local_device(device))
    m = sae.cfg.m
    chosen = parse_latents(latents, m)
    cfg = json.loads(sae.cfg.to_json())
    info = store.info()
    ident = {
        "format": FORMAT,
        "store": {
            "path": str(store.path),
            "rows": store.rows,
            "segments": [[s["name"], s["rows"]] for s in info["segments"]],
        },
        "hook": hook,
        **({"target": target} if target is not None else {}),  # a transcoder's; SAE analyses keep their identity
        "sae": {"hash": _sae_hash(sae), "m": m, "d": sae.cfg.d, "arch": sae.cfg.arch, "config": cfg},
        "selection": sel.to_json(),
        "latents": None if chosen is None else chosen.tolist(),
        "block_rows": int(block_rows),
        "jobs": {j: _job_config(j, o) for j, o in spec.items()},
    }
    if plan is not None:
        ident["jobs"].update(plan["jobs"])
        ident["represent"] = {k: v for k, v in plan.items() if k not in ("jobs", "store")}
    loaded = None
    if set(MODEL_JOBS) & set(spec):
        if model is None:
            names = ", ".join(j for j in MODEL_JOBS if j in spec)
            raise AnalysisError(f"jobs {names} run a model: pass model= (--model)")
        loaded = prepare_model(model, device=sae.W_dec.device)
        ident["model"] = {"name": str(loaded.name), "hash": _weights_hash(type(loaded.model).__name__, loaded.model)}
        if "ablation" in spec:
            resolve_hooks(loaded.model, hook)  # a hook the model lacks fails here, before any work
    identity = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    done = read_attrs(out) if out.exists() else None
    if done is not None:
        if done.get("identity") != identity:
            raise AnalysisError(f"{out} holds a different analysis: pick another output folder or delete it")
        return out
    if out.exists() and any(p.name not in (STATE, "_build") for p in out.iterdir()) and not (out / STATE).exists():
        raise AnalysisError(f"{out} exists and holds no actstore analysis: pick another output folder")
    if (out / STATE).exists():
        others = [
            p.name
            for p in (out / STATE).iterdir()
            if p.name.startswith("share-") and not p.name.endswith(f"of{world:05d}")
        ]
        if others:
            raise AnalysisError(
                f"{out} holds an analysis in progress with another world size ({others[0]}): rerun it "
                "with that world size, or delete the folder"
            )
    seen = None
    if loaded is not None:
        # Every token id the model will see or the lens may mask, checked before anything is written.
        seen = seen_tokens(store, sel, block_rows)
        vocab = _vocab_size(loaded.model)
        if vocab is not None:
            check_vocab(vocab, seen, loaded.name)
    out.mkdir(parents=True, exist_ok=True)

    encoder = Encoder(sae, latents=chosen)
    share_name = lambda r: f"share-{r:05d}of{world:05d}"  # noqa: E731
    reducers = _make(spec, m)
    st = _ShareState(out, share_name(rank), identity)
    st.load(reducers)
    blocks = sel.share(block_rows, rank, world)
    _pass_share(
        store,
        hook,
        encoder,
        sel,
        blocks,
        block_rows,
        reducers,
        st,
        commit_rows,
        on_commit,
        progress,
        f"share {rank}/{world}",
    )

    dist = _dist.group()
    if world > 1:
        if dist is not None:
            dist.barrier()
            if rank != 0:
                dist.barrier()  # wait for rank 0 to write the output
                return None
        else:
            states = [_ShareState(out, share_name(r), identity) for r in range(world)]
            for s in states:
                if not s.load([]) or not s.doc["done"]:
                    return None  # another share is still to run; the call that ends the last one finishes
    result = _finish(
        _Finish(
            store=store,
            hook=hook,
            encoder=encoder,
            sel=sel,
            spec=spec,
            m=m,
            out=out,
            identity=identity,
            ident=ident,
            world=world,
            share_name=share_name,
            block_rows=block_rows,
            commit_rows=commit_rows,
            on_commit=on_commit,
            progress=progress,
            loaded=loaded,
            seen=seen,
        )
    )
    if world > 1 and dist is not None:
        dist.barrier()
    return result


@dataclass
class _Finish:
    """What ``_finish`` needs of the run: its inputs, identity and the shares to merge."""

    store: Store
    hook: str
    encoder: Encoder
    sel: Selection
    spec: dict
    m: int
    out: Path
    identity: str
    ident: dict
    world: int
    share_name: Callable[[int], str]
    block_rows: int
    commit_rows: int
    on_commit: Callable[[int, int], None] | None
    progress: bool
    loaded: object
    seen: np.ndarray | None


def _finish(j: _Finish) -> Path:
    """Merge every share's state, run the passes and jobs that need the merged state (the
    equal-width bins, contexts, lens, ablation) and write the output group."""
    merged = None
    rows_seen = 0
    for r in range(j.world):
        red = _make(j.spec, j.m)
        st = _ShareState(j.out, j.share_name(r), j.identity)
        st.load(red)
        rows_seen += st.doc["rows"]
        if merged is None:
            merged = red
        else:
            for a, b in zip(merged, red):
                a.merge(b)
    arrays: dict[str, np.ndarray] = {}
    summary = {}
    for r in merged:
        arrays.update(r.result())
        summary[r.name] = r.attrs()
    bins = next((r for r in merged if isinstance(r, Bins)), None)
    if bins is not None and bins.opts["n_equal"] > 0:
        eq = EqualWidthBins(j.m, bins.max, **bins.opts)
        st = _ShareState(j.out, "pass2-equal", j.identity)
        st.load([eq])
        _pass_share(
            j.store,
            j.hook,
            j.encoder,
            j.sel,
            j.sel.blocks(j.block_rows),
            j.block_rows,
            [eq],
            st,
            j.commit_rows,
            j.on_commit,
            j.progress,
            "bins equal-width pass",
        )
        arrays.update(eq.result())
    if j.ident.get("latents") is not None:
        selected = np.zeros(j.m, bool)
        selected[j.ident["latents"]] = True
        arrays["latents/selected"] = selected
        for name in ("latents/dead", "latents/dense"):  # an unanalysed latent is neither
            if name in arrays:
                arrays[name] = arrays[name] & selected
        if "stats" in summary:
            summary["stats"]["dead"] = int(arrays["latents/dead"].sum())
    attrs = {**j.ident, "identity": j.identity, "rows_seen": int(rows_seen), "summary": summary}
    if "contexts" in j.spec:
        w = int(j.spec["contexts"].get("window", 8))
        srcs = {}
        if "top/rows" in arrays:
            srcs["top"] = arrays["top/rows"]
        for mode in ("abs", "quantile", "equal"):
            if f"bins/{mode}/rows" in arrays:
                srcs[f"bins/{mode}"] = arrays[f"bins/{mode}/rows"]
        arrays.update(collect_contexts(j.store, j.hook, j.encoder, srcs, w, j.block_rows))
        attrs["contexts"] = {"window": w, "sources": list(srcs)}
    if "lens" in j.spec:
        arrays.update(logit_lens(j.encoder.sae, j.loaded.model, j.seen, **_job_config("lens", j.spec["lens"])))
    if "ablation" in j.spec:
        opts = dict(_job_config("ablation", j.spec["ablation"]))
        n = opts.pop("busiest", None)
        if n is not None:  # the latents that fire most, among those analysed: the report's pages
            opts["latents"] = busiest(arrays["latents/count"], n, j.ident.get("latents")).tolist()
        fwd = Forward(j.loaded, j.hook, j.encoder.sae, opts["batch"])
        try:
            vocab = _vocab_size(j.loaded.model) or np.iinfo(np.int64).max
            arrays.update(ablate(j.store, arrays["top/rows"], fwd, vocab, **opts))
        finally:
            fwd.close()
    if j.loaded is not None:  # the model's own name for the report; not part of the identity
        attrs["model"] = {**attrs["model"], "label": j.loaded.label}
    write_group(j.out, arrays, attrs)
    shutil.rmtree(j.out / STATE, ignore_errors=True)
    return j.out
