"""Every job of ``actstore analyze``, and :func:`run_all`, which runs a set of them into one folder.

Jobs: the feature jobs of ``_run.py`` (``stats, top, bins, contexts, top_tokens, lens,
ablation``: one streaming pass with an SAE) and the representation jobs (:data:`REPR_JOBS`,
named as their subcommands): ``steering`` (:func:`~actstore.analysis.steering_vectors`),
``pca`` (:func:`~actstore.analysis.pca`, with the principal angles between consecutive hooks
of one width), ``diff`` (:func:`~actstore.analysis.layer_diff`), ``probe``
(:func:`~actstore.analysis.probes`), ``scan`` (:func:`~actstore.analysis.scan`) and ``mcs``
(:func:`~actstore.analysis.mcs` and :func:`~actstore.analysis.neighbours`) and ``crosscoder``
(:func:`~actstore.analysis.crosscoder_diff`: a crosscoder's decoder norms per block and
explained variance per block, the model-diffing view). Their options and
defaults are :data:`OPTIONS` (``--option pca.k=5``); :func:`job_call` is the one place that
turns them into each function's arguments.

What each representation job reads: ``hooks`` (default: every hook of the store) and the row
groups ``groups`` (:func:`~actstore.analysis.groups.resolve`; default: the capture's sources
when the store records them, else one group of every row); ``steering`` and ``probe`` take
``positive`` / ``negative`` (default: the first two groups); ``diff`` takes ``diff.a`` /
``diff.b`` (default: ``hooks`` when there are exactly two); ``scan`` projects ``scan.hook``
(default: the SAE's hook for its decoder rows, a transcoder's target, else the first hook) on ``scan.vectors``: a
``.npy`` ``[V, d]``, a steering or probe output folder, ``"steering"`` / ``"probe"`` (that job's
result in this run), or, left out, the SAE's decoder rows (``scan.latents`` picks some);
``mcs`` compares the SAE with ``mcs.other`` (an SAE folder); ``crosscoder`` reads the SAE (a
crosscoder: one line otherwise) over its own blocks' hooks, from ``store`` and, for a
two-model crosscoder, ``paired_store`` (the same tokens, checked up front). ``model`` (a causal
LM) adds the logit lens to ``steering`` and ``diff``.

Output: ``out`` is the feature analysis group as :func:`~actstore.analysis.run` writes it
(with representation jobs only: a group holding only attributes), and each representation
job writes its result's ``.save()`` group to ``out/<job>/``. The root attribute lists every
job with its options (``jobs``) and the representation plan (``represent``: hooks, groups,
model, hashes of the SAEs and vectors); its identity covers all of it.

Resume: the root group is written first (the feature jobs resume from their last commit, see
``_run.py``), then the representation jobs in :data:`REPR_JOBS` order. Each job's group gets
the completion marker ``analyze = {"job", "plan"}`` in its attributes once it is fully
written; a rerun skips a job whose marker names this plan, redoes one without a marker, and
refuses one naming another plan, as it refuses an ``out`` holding a different analysis.

Ranks: under torch.distributed every rank runs every job (the functions merge the ranks'
shares) and rank 0 writes; ranks meet at a barrier after each job, and the others return None.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import _dist
from ..api import open as open_store
from ..sae import load as load_sae
from ._checkpoint import COMMIT_ROWS, store_identity
from ._pass import AnalysisError
from ._run import JOBS, STATE, _sae_hash, _weights_hash, run
from .crosscoder_diff import crosscoder_diff, resolve_blocks
from .dictionary import MCS, mcs, neighbours
from .groups import RowGroups, resolve
from .layer_diff import layer_diff
from .output import ATTR, FORMAT, read_attrs, write_group
from .pca import PCA, pca, principal_angles
from .probes import probes
from .scan import scan
from .steering import steering_vectors

REPR_JOBS = ("steering", "pca", "diff", "probe", "scan", "mcs", "crosscoder")
ALL_JOBS = JOBS + REPR_JOBS
MARKER = "analyze"  # the completion marker in a representation job's attributes
# Every option of each representation job, with its default (the functions' own defaults).
OPTIONS = {
    "steering": {"pca": False, "top_k": 20, "window": 8, "lens_t": 10, "lens_outlier_z": 0.0},
    "pca": {"k": 10, "standardize": False, "sample": 2000, "seed": 0},
    "diff": {"a": None, "b": None, "top_k": 20, "window": 8, "bins": 50, "lens_t": 10, "lens_outlier_z": 0.0},
    "probe": {"test_frac": 0.25, "seed": 0, "epochs": 20, "lr": 0.01, "batch": 256, "C": 1.0},
    "scan": {"hook": None, "vectors": None, "latents": None, "k": 20, "bins": 50, "window": 8},
    "mcs": {"other": None, "neighbours": 10, "tile": 4096},
    "crosscoder": {"bins": 20, "top": 20},
}
TWO_GROUPS = ("steering", "probe")  # the jobs that compare a positive and a negative group


def split_jobs(jobs) -> tuple[dict[str, dict], dict[str, dict]]:
    """``jobs`` (names, ``"stats,pca"`` or ``{name: options}``) -> (feature jobs, representation
    jobs), each ``{name: options}``; the representation options checked and completed with
    their defaults."""
    if isinstance(jobs, str):
        jobs = [j.strip() for j in jobs.split(",") if j.strip()]
    spec = dict(jobs) if isinstance(jobs, dict) else {j: {} for j in jobs}
    bad = [j for j in spec if j not in ALL_JOBS]
    if bad or not spec:
        raise AnalysisError(f"unknown analysis job(s) {bad or '(none given)'}: use some of {', '.join(ALL_JOBS)}")
    feat = {j: dict(spec[j] or {}) for j in JOBS if j in spec}
    rep = {}
    for j in REPR_JOBS:
        if j in spec:
            given = dict(spec[j] or {})
            unknown = sorted(set(given) - set(OPTIONS[j]))
            if unknown:
                raise AnalysisError(f"unknown option {j}.{unknown[0]}: {j} takes {', '.join(OPTIONS[j])}")
            for k, v in given.items():
                _check_type(j, k, v)
            rep[j] = {**OPTIONS[j], **given}
    return feat, rep


def _check_type(job: str, key: str, value) -> None:
    """A given option has its default's type (an int for a float; text, a list or null where the default is null)."""
    want = type(OPTIONS[job][key])
    if want is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif want is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif want is float:
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, what = value is None or isinstance(value, (str, list)), "text"
    if not ok:
        raise AnalysisError(f"option {job}.{key}={json.dumps(value)}: give {what}")


@dataclass
class Context:
    """What the representation jobs of one run share (resolved and checked by :func:`run_all`)."""

    store: object
    out: Path
    hooks: list[str]
    groups: RowGroups | None
    positive: str | None
    negative: str | None
    model: object
    sae: object  # an SAE module, or None
    sae_hook: str | None  # where the SAE's decoder rows live (scan's default): a transcoder's target
    block_rows: int
    rank: int | None
    world_size: int | None
    commit_rows: int = COMMIT_ROWS  # store rows between a job's state commits (OUT/_state/repr-<job>)
    on_commit: Callable[[str, int, int], None] | None = None  # (pass, seq, rows) after each state commit
    paired: object = None  # the second model's Store of a two-model crosscoder (the crosscoder job)
    device: object = None  # where the crosscoder job encodes (default: the rank's GPU, else the CPU)


@dataclass
class _MCSResult:
    """The ``mcs`` job's result: both-way MCS and the nearest neighbours within the first SAE."""

    res: MCS
    extra: dict

    def save(self, out) -> Path:
        return self.res.save(out, self.extra)


def _mcs_job(a, b, *, neighbours_k: int, tile: int) -> _MCSResult:
    extra = {}
    if neighbours_k > 0:
        cos, idx = neighbours(a, neighbours_k, tile=tile)
        extra = {"dictionary/neighbours_cos": cos, "dictionary/neighbours_index": idx}
    return _MCSResult(mcs(a, b, tile=tile), extra)


def hook_angles(res: PCA) -> dict[str, list[float]]:
    """Principal angles (radians) between the leading components of consecutive hooks of one width."""
    out = {}
    for a, b in zip(res.hooks, res.hooks[1:]):
        if res.components[a].shape[1] == res.components[b].shape[1]:
            out[f"{a} vs {b}"] = principal_angles(res.components[a], res.components[b]).tolist()
    return out


def _pca_job(store, hooks, groups, **kw) -> PCA:
    res = pca(store, hooks, groups, **kw)
    angles = hook_angles(res)
    if angles:
        res.meta["principal_angles"] = angles
    return res


def load_vectors(spec, hook: str, latents=None, sae=None) -> np.ndarray:
    """The ``[V, d]`` vectors of ``scan``: ``spec`` a ``.npy`` file; a steering output folder
    (the hook's unit vector) or a probe output folder (the hook's unit logistic and mass-mean
    directions); an SAE folder; or None with ``sae`` (its decoder rows). ``latents`` (ids or
    ``"3,17"``) picks decoder rows."""
    if spec is None:
        if sae is None:
            raise AnalysisError("scan projects on vectors: pass --option scan.vectors=PATH, or --sae for its decoder")
        w = sae.W_dec.detach().float().cpu().numpy()
    else:
        p = Path(spec)
        if p.suffix == ".npy":
            if not p.is_file():
                raise AnalysisError(f"no vectors file {p}: give a .npy [V, d] file")
            return np.load(p, allow_pickle=False)
        if not p.is_dir():
            raise AnalysisError(
                f"scan vectors {spec!r}: give a .npy file, a steering or probe output, or an SAE folder"
            )
        attrs = read_attrs(p) if (p / "zarr.json").exists() else None
        if attrs is not None and attrs.get("kind") in ("steering", "probes"):
            if hook not in attrs["hooks"]:
                raise AnalysisError(f"{p} holds no vector for hook {hook!r}: it has {', '.join(attrs['hooks'])}")
            import zarr

            g, j = zarr.open_group(str(p), mode="r"), attrs["hooks"].index(hook)
            names = ["vector"] if attrs["kind"] == "steering" else ["lr_weight", "mm_direction"]
            rows = [g[f"{attrs['kind']}/{j}/{n}"][...].astype(np.float64) for n in names]
            return np.stack([r / max(np.linalg.norm(r), 1e-30) for r in rows])
        w = load_sae(p / "sae" if (p / "sae" / "config.json").exists() else p).W_dec.detach().float().numpy()
    if latents is not None and latents != "":
        ids = [int(x) for x in latents.split(",")] if isinstance(latents, str) else [int(x) for x in latents]
        bad = [i for i in ids if not 0 <= i < w.shape[0]]
        if bad:
            raise AnalysisError(f"unknown latent {bad[0]}: the SAE has latents 0..{w.shape[0] - 1}")
        w = w[ids]
    return w


def _scan_target(c: Context, o: dict) -> tuple[str, object]:
    """(hook, vectors spec) of the scan job: the vectors are loaded by :func:`_scan_vectors`."""
    spec = o["vectors"]
    hook = o["hook"] or (c.sae_hook if spec is None and c.sae_hook else c.hooks[0])
    if hook not in c.store.hooks:
        raise AnalysisError(f"unknown hook {hook!r} for scan: this store holds {', '.join(c.store.hooks)}")
    return hook, spec


def _scan_vectors(c: Context, o: dict) -> tuple[str, np.ndarray]:
    hook, spec = _scan_target(c, o)
    if spec in ("steering", "probe"):  # this run's result, written before scan runs
        spec = c.out / spec
    return hook, load_vectors(spec, hook, o["latents"], c.sae)


def _diff_hooks(c: Context, o: dict) -> tuple[str, str]:
    a, b = o["a"], o["b"]
    if a is None and b is None:
        if len(c.hooks) != 2:
            raise AnalysisError(
                f"diff takes two hooks and --hooks names {len(c.hooks)}: pass --hooks A,B or --option diff.a=A "
                "--option diff.b=B"
            )
        a, b = c.hooks
    if a is None or b is None:
        raise AnalysisError("diff takes two hooks: pass both --option diff.a=A and --option diff.b=B")
    return a, b


def state_dir(out: Path, job: str) -> Path:
    """Where representation job ``job`` keeps its resume state (removed once its group is written)."""
    return Path(out) / STATE / f"repr-{job}"


def job_call(job: str, c: Context, o: dict) -> tuple[Callable, tuple, dict]:
    """``(function, args, kwargs)`` of representation job ``job`` with options ``o``: the one
    place that builds them (a keyword every store pass takes, such as a state folder, goes in
    ``passes``)."""
    pick = lambda *keys: {k: o[k] for k in keys}  # noqa: E731
    passes = {"block_rows": c.block_rows, "rank": c.rank, "world_size": c.world_size}
    if job != "mcs":  # every store pass commits its state, so a killed run resumes mid-job
        passes.update(state_dir=state_dir(c.out, job), commit_rows=c.commit_rows, on_commit=c.on_commit)
    two = (c.store, c.hooks, c.groups, c.positive, c.negative)  # the args of the two-group jobs
    if job == "steering":
        kw = pick("pca", "top_k", "window", "lens_t", "lens_outlier_z")
        return steering_vectors, two, {**kw, "model": c.model, **passes}
    if job == "pca":
        return _pca_job, (c.store, c.hooks, c.groups), {**pick("k", "standardize", "sample", "seed"), **passes}
    if job == "diff":
        kw = pick("top_k", "window", "bins", "lens_t", "lens_outlier_z")
        return layer_diff, (c.store, *_diff_hooks(c, o), c.groups), {**kw, "model": c.model, **passes}
    if job == "probe":
        kw = pick("test_frac", "seed", "epochs", "lr", "batch", "C")
        return probes, two, {**kw, **passes}
    if job == "scan":
        hook, vecs = _scan_vectors(c, o)
        return scan, (c.store, hook, vecs, c.groups), {**pick("k", "bins", "window"), **passes}
    if job == "mcs":
        return _mcs_job, (c.sae, _other_sae(o)), {"neighbours_k": o["neighbours"], "tile": o["tile"]}
    if job == "crosscoder":
        kw = {**pick("bins", "top"), "paired_store": c.paired, "device": c.device}
        return crosscoder_diff, (c.sae, c.store, c.groups), {**kw, **passes}
    raise AnalysisError(f"unknown representation job {job!r}: use some of {', '.join(REPR_JOBS)}")


def _other_sae(o: dict):
    if o["other"] is None:
        raise AnalysisError("mcs compares two SAEs: pass --option mcs.other=PATH (an SAE folder) beside --sae")
    p = Path(o["other"])
    if not p.is_dir():
        raise AnalysisError(f"mcs.other {str(p)!r} is not a folder: give an SAE folder (actstore train OUT/sae)")
    return load_sae(p / "sae" if (p / "sae" / "config.json").exists() else p)


def _check(c: Context, rep: dict) -> dict:
    """Check every representation job before any work; returns the identity parts of the inputs."""
    extra = {}
    if (c.world_size or _dist.rank_world()[1]) > 1 and _dist.group() is None:
        raise AnalysisError("representation jobs split across ranks only under torch.distributed: launch with torchrun")
    if set(rep) - {"mcs"} and c.groups is None:
        raise AnalysisError("representation jobs read row groups: pass groups= (actstore.analysis.row_groups)")
    if set(TWO_GROUPS) & set(rep):
        names = ", ".join(j for j in TWO_GROUPS if j in rep)
        if len(c.groups.names) < 2:
            raise AnalysisError(
                f"{names} compare two row groups and the selection has {list(c.groups.names)}: pass --sources, "
                "--labels or --docs with two groups"
            )
        for side in (c.positive, c.negative):
            if side not in c.groups.names:
                raise AnalysisError(f"unknown group {side!r}: the groups are {', '.join(c.groups.names)}")
        if c.positive == c.negative:
            raise AnalysisError("positive and negative are the same group: name two different groups")
    if "diff" in rep:
        a, b = _diff_hooks(c, rep["diff"])
        for h in (a, b):
            if h not in c.store.hooks:
                raise AnalysisError(f"unknown hook {h!r} for diff: this store holds {', '.join(c.store.hooks)}")
        if c.store.schema.hooks[a].d != c.store.schema.hooks[b].d:
            raise AnalysisError(f"diff hooks {a!r} and {b!r} differ in width: pick two hooks of one width")
        extra["diff"] = [a, b]
    if "scan" in rep:
        o = rep["scan"]
        hook, spec = _scan_target(c, o)
        if spec in ("steering", "probe"):
            if spec not in rep:
                raise AnalysisError(f"scan.vectors={spec} scans this run's {spec} result: add {spec} to the jobs")
            extra["scan"] = {"hook": hook, "vectors": spec}
        else:
            vecs = np.asarray(load_vectors(spec, hook, o["latents"], c.sae))
            d = c.store.schema.hooks[hook].d
            if vecs.ndim not in (1, 2) or vecs.shape[-1] != d:
                raise AnalysisError(
                    f"scan vectors of shape {vecs.shape} do not match hook {hook!r} of width {d}: give [V, {d}]"
                )
            h = hashlib.sha256(str(vecs.shape).encode() + np.ascontiguousarray(vecs, np.float64).tobytes())
            extra["scan"] = {"hook": hook, "vectors": h.hexdigest()}
    if "mcs" in rep:
        if c.sae is None:
            raise AnalysisError("mcs compares the SAE with another: pass --sae (and --option mcs.other=PATH)")
        other = _other_sae(rep["mcs"])
        if other.cfg.d_target != c.sae.cfg.d_target:  # decoder rows: a transcoder's are d_out wide
            raise AnalysisError(
                f"mcs: the SAEs' decoders have widths {c.sae.cfg.d_target} and {other.cfg.d_target}: "
                "compare SAEs of one hook"
            )
        extra["mcs"] = {"other": _sae_hash(other)}
    if "crosscoder" in rep:
        if c.sae is None:
            raise AnalysisError("the crosscoder job reads a crosscoder: pass --sae (actstore train --arch crosscoder)")
        for k in ("bins", "top"):
            if rep["crosscoder"][k] < 1:
                raise AnalysisError(f"option crosscoder.{k}={rep['crosscoder'][k]}: give a positive integer")
        resolve_blocks(c.sae, c.store, c.paired)
        extra["crosscoder"] = {"paired_store": None if c.paired is None else store_identity(c.paired)}
    return extra


def _model_id(model):
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        return {"name": str(model)}
    return {"name": type(model).__name__, "hash": _weights_hash(type(model).__name__, model)}


def _plan(c: Context, rep: dict, extra: dict) -> dict:
    info = c.store.info()
    return {
        "store": {
            "path": str(c.store.path),
            "rows": c.store.rows,
            "segments": [[s["name"], s["rows"]] for s in info["segments"]],
        },
        "hooks": list(c.hooks),
        "groups": None if c.groups is None else c.groups.to_json(),
        "positive": c.positive,
        "negative": c.negative,
        "model": _model_id(c.model),
        "sae": None if c.sae is None else _sae_hash(c.sae),
        "block_rows": int(c.block_rows),
        "inputs": extra,
        "jobs": rep,
    }


def _write_marker(path: Path, marker: dict) -> None:
    """Add the completion marker to the attributes of the finished group at ``path`` (atomic replace)."""
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"][ATTR][MARKER] = marker
    tmp = path / ".zarr.json.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / "zarr.json")


def job_done(path: Path, job: str, plan_id: str) -> bool:
    """Whether ``path`` holds job ``job`` of this plan, finished; refuses one of another plan."""
    if not (path / "zarr.json").exists():
        return False
    a = read_attrs(path)
    got = a.get(MARKER)
    if got is None:
        return False  # written, not yet marked: redo it
    if got != {"job": job, "plan": plan_id}:
        raise AnalysisError(f"{path} holds a different analysis: pick another output folder or delete it")
    return True


def _barrier(world: int) -> None:
    d = _dist.group()
    if world > 1 and d is not None:
        d.barrier()


def run_all(
    store,
    jobs=("stats", "top", "bins"),
    out="analysis",
    *,
    sae=None,
    hooks=None,
    groups: RowGroups | None = None,
    positive: str | None = None,
    negative: str | None = None,
    model=None,
    paired_store=None,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    on_job: Callable[[str], None] | None = None,
    on_pass_commit: Callable[[str, int, int], None] | None = None,
    **feature_kw,
) -> Path | None:
    """Run ``jobs`` (feature and representation jobs; see the module docstring) of ``store``
    (a Store or path) into the folder ``out``; returns ``out``, or None on a rank other than 0.

    sae: an SAE module or folder (the feature jobs, ``mcs``, and ``scan`` of decoder rows).
    hooks: comma list or list of hooks (default: every hook of the store). groups: a
    :class:`RowGroups` (default: the capture's sources, else every row as one group).
    model: a causal LM for ``lens``/``ablation`` and the logit lens of ``steering``/``diff``.
    paired_store: the second model's store (Store or path) of a two-model crosscoder (``crosscoder``).
    feature_kw: the other keywords of :func:`~actstore.analysis.run` (hook, rows, drop_flags,
    docs, latents, commit_rows, device, progress, on_commit). With feature jobs only this is
    :func:`~actstore.analysis.run`. on_job: called with each representation job's name once
    its group is written and marked (after the ranks' barrier), not for a skipped one.
    Each representation job commits its passes' state to ``out/_state/repr-<job>`` every
    ``commit_rows`` store rows (default 65,536), so a killed run resumes inside the job;
    on_pass_commit: called with ``(pass, seq, rows)`` after each of those commits."""
    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    out = Path(out)
    feat, rep = split_jobs(jobs)
    if feat and sae is None:
        raise AnalysisError(f"jobs {', '.join(feat)} read an SAE's latents: pass sae= (--sae)")
    sae = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
    if isinstance(paired_store, (str, os.PathLike)):
        paired_store = open_store(paired_store)
    if paired_store is not None and "crosscoder" not in rep:
        raise AnalysisError("--paired-store is read by the crosscoder job only: add crosscoder to --jobs")
    common = dict(model=model, block_rows=block_rows, rank=rank, world_size=world_size)
    if not rep:
        return run(store, sae, feat, out, **common, **feature_kw)
    hooks = list(store.hooks) if hooks is None else hooks
    hooks = [h.strip() for h in hooks.split(",") if h.strip()] if isinstance(hooks, str) else list(hooks)
    unknown = [h for h in hooks if h not in store.hooks]
    if unknown or not hooks:
        raise AnalysisError(f"unknown hook(s) {unknown or '(none given)'}: this store holds {', '.join(store.hooks)}")
    if groups is None and set(rep) - {"mcs"}:
        groups = resolve(store, sources=True if store.sources else None)
    names = groups.names if groups is not None else ()
    positive = positive or (names[0] if len(names) > 1 else None)
    negative = negative or (names[1] if len(names) > 1 else None)
    sae_hook = _decoder_hook(store, sae, feature_kw.get("hook"))
    commit_rows = int(feature_kw.get("commit_rows") or COMMIT_ROWS)
    c = Context(store, out, hooks, groups, positive, negative, model, sae, sae_hook, block_rows, rank, world_size,
                commit_rows, on_pass_commit, paired_store, feature_kw.get("device"))  # fmt: skip
    plan = _plan(c, rep, _check(c, rep))
    plan_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    r, world = _dist.rank_world(rank, world_size)
    if feat:
        run(store, sae, feat, out, plan=plan, **common, **feature_kw)
    else:
        _root(out, plan, plan_id, r, world)
    for job, opts in rep.items():
        path = out / job
        if not job_done(path, job, plan_id):
            fn, args, kw = job_call(job, c, opts)
            res = fn(*args, **kw)
            if r == 0:
                if path.exists() and not (path / "zarr.json").exists():
                    shutil.rmtree(path)  # a write cut short: this plan's (the root matched), redone whole
                res.save(path)
                _write_marker(path, {"job": job, "plan": plan_id})
            _barrier(world)
            if r == 0:
                shutil.rmtree(state_dir(out, job), ignore_errors=True)
            if on_job is not None:
                on_job(job)
    return out if r == 0 else None


def _decoder_hook(store, sae, hook: str | None) -> str | None:
    """The store hook the SAE's decoder rows live in (``scan``'s default): a transcoder's
    target (its ``W_dec`` rows are ``d_out`` wide); an SAE's ``hook``, else its own hook when
    the store holds it."""
    if sae is None:
        return hook
    if sae.cfg.is_transcoder:
        return sae.cfg.target or hook or sae.cfg.hook
    return hook or (sae.cfg.hook if sae.cfg.hook in store.hooks else None)


def _root(out: Path, plan: dict, plan_id: str, rank: int, world: int) -> None:
    """The root group of a run of representation jobs only (attributes, no arrays), written first."""
    done = read_attrs(out) if out.exists() else None
    if done is not None:
        if done.get("identity") != plan_id:
            raise AnalysisError(f"{out} holds a different analysis: pick another output folder or delete it")
        return
    if out.exists() and any(p.name not in (*REPR_JOBS, "_state", "_build") for p in out.iterdir()):
        raise AnalysisError(f"{out} exists and holds no actstore analysis: pick another output folder")
    _barrier(world)  # every rank has looked before rank 0 writes
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        attrs = {
            "format": FORMAT,
            "store": plan["store"],
            "jobs": plan["jobs"],
            "represent": {k: v for k, v in plan.items() if k not in ("jobs", "store")},
            "identity": plan_id,
        }
        if plan["model"] is not None:
            attrs["model"] = plan["model"]
        write_group(out, {}, attrs)
    _barrier(world)
