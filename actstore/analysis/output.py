"""The analysis output: a Zarr v3 group that plain zarr reads, and per-latent views of it.

Layout (documented in docs/FORMAT.md, "Analysis output"): the folder ``out`` is the group;
arrays ``latents/*``, ``summary/*``, ``top/*``, ``bins/<mode>/*``, ``contexts/<src>/*``,
``top_tokens/*``, each with the latent as the first axis where it has one; the root
attribute ``actstore_analysis`` holds the provenance (store, segments, hook, SAE hash and
config, row selection, jobs and options, rows seen, identity hash) and each job's summary.

Writing is all-or-nothing for readers: the group is built in ``out/_build`` and its
children are moved into ``out`` with the root ``zarr.json`` last, so until that rename
there is no group at ``out``. Nothing time-dependent is written, so the same analysis
gives the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from ._pass import AnalysisError

ATTR = "actstore_analysis"
FORMAT = "actstore-analysis/1"
CHUNK_LATENTS = 4096


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_group(out: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    build = out / "_build"
    shutil.rmtree(build, ignore_errors=True)
    g = zarr.open_group(str(build), mode="w", zarr_format=3)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        chunks = (min(CHUNK_LATENTS, a.shape[0]) or 1,) + a.shape[1:] if a.ndim else ()
        g.create_array(name, data=a, chunks=chunks)
    g.attrs[ATTR] = attrs
    _fsync_tree(build)
    for child in sorted(p.name for p in build.iterdir() if p.name != "zarr.json"):
        shutil.rmtree(out / child, ignore_errors=True)
        os.replace(build / child, out / child)
    os.replace(build / "zarr.json", out / "zarr.json")
    build.rmdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_out(out: Path, kind: str) -> None:
    """Make ``out`` ready for a ``kind`` output: refuse a folder that holds anything but an
    output of the same kind (its resume state ``_state`` and a half-written ``_build`` aside)."""
    if out.exists() and any(p.name not in ("_state", "_build") for p in out.iterdir()):
        held = read_attrs(out)
        if held is None or held.get("kind") != kind:
            raise AnalysisError(f"{out} exists and holds something else: pick another output folder")
    out.mkdir(parents=True, exist_ok=True)


def read_attrs(out: Path) -> dict | None:
    """The analysis attribute of a finished output at ``out``, or None when there is none."""
    try:
        doc = json.loads((out / "zarr.json").read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise AnalysisError(f"{out}/zarr.json is not valid JSON ({e}): remove {out} or pick another --out") from None
    a = (doc.get("attributes") or {}).get(ATTR)
    if not isinstance(a, dict):
        raise AnalysisError(f"{out} is a zarr group but not an actstore analysis: pick another output folder")
    return a


class LatentView:
    """One latent of an analysis: ``.stats`` (dict), ``.top`` (list of (value, row)),
    ``.bins`` (mode -> list of bins), ``.contexts`` (source -> list of windows),
    ``.top_tokens`` (list of (token, count, mean))."""

    def __init__(self, res: "Analysis", i: int):
        self._r, self.index = res, i

    def _get(self, name):
        return self._r.array(name)[self.index] if name in self._r else None

    @property
    def stats(self) -> dict:
        names = ("count", "doc_count", "sum", "sumsq", "max", "mean", "density", "dead", "dense")
        out = {n: self._get(f"latents/{n}").item() for n in names if f"latents/{n}" in self._r}
        if "latents/hist" in self._r:
            out["hist"] = self._get("latents/hist")
        return out

    @property
    def top(self) -> list[tuple[float, int]]:
        if "top/rows" not in self._r:
            return []
        v, r = self._get("top/values"), self._get("top/rows")
        return [(float(a), int(b)) for a, b in zip(v, r) if b >= 0]

    @property
    def bins(self) -> dict:
        out = {}
        for mode in ("abs", "quantile", "equal"):
            if f"bins/{mode}/count" not in self._r:
                continue
            cnt, rows, vals = (self._get(f"bins/{mode}/{k}") for k in ("count", "rows", "values"))
            e = self._r.array(f"bins/{mode}/edges")
            e = e if e.ndim == 1 else e[self.index]
            out[mode] = [
                {
                    "lo": float(e[j]),
                    "hi": float(e[j + 1]),
                    "count": int(cnt[j]),
                    "examples": [(float(v), int(r)) for v, r in zip(vals[j], rows[j]) if r >= 0],
                }
                for j in range(cnt.size)
            ]
        return out

    @property
    def contexts(self) -> dict:
        out = {}
        for src in self._r.context_sources():
            tok, act, rows = (self._get(f"contexts/{src}/{k}") for k in ("tokens", "acts", "rows"))
            lead = tok.reshape(-1, tok.shape[-1]), act.reshape(-1, act.shape[-1]), rows.reshape(-1, rows.shape[-1])
            w = tok.shape[-1] // 2
            out[src] = [
                {"row": int(r[w]), "tokens": t[r >= 0].tolist(), "acts": a[r >= 0].tolist(), "rows": r[r >= 0].tolist()}
                for t, a, r in zip(*lead)
                if r[w] >= 0
            ]
        return out

    @property
    def top_tokens(self) -> list[tuple[int, int, float]]:
        if "top_tokens/tokens" not in self._r:
            return []
        t, c, mu = (self._get(f"top_tokens/{k}") for k in ("tokens", "counts", "mean"))
        return [(int(a), int(b), float(x)) for a, b, x in zip(t, c, mu) if a >= 0]


class Analysis:
    """A finished analysis folder, read with plain zarr. ``a[i]`` / ``a.latent(i)`` -> :class:`LatentView`."""

    def __init__(self, path):
        self.path = Path(path)
        self.attrs = read_attrs(self.path)
        if self.attrs is None:
            raise AnalysisError(f"no finished analysis at {self.path}: run actstore.analysis.run(...) to make one")
        if "kind" in self.attrs:  # a representation analysis (steering, pca, ...): no latents
            raise AnalysisError(
                f"{self.path} holds a {self.attrs['kind']} result, not an SAE analysis: read it with plain zarr "
                "or its class's load (e.g. SteeringVectors.load)"
            )
        if "sae" not in self.attrs:  # a run of representation jobs only (jobs.py): their groups are out/<job>
            raise AnalysisError(
                f"{self.path} holds representation jobs only ({', '.join(self.attrs.get('jobs', {}))}): read "
                f"{self.path}/<job> with plain zarr or its class's load"
            )
        self.group = zarr.open_group(str(self.path), mode="r")
        self.m = int(self.attrs["sae"]["m"])
        self._cache: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        if name in self._cache:
            return True
        try:
            self.group[name]
            return True
        except KeyError:
            return False

    def array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self.group[name][...]
        return self._cache[name]

    def context_sources(self) -> list[str]:
        return list(self.attrs.get("contexts", {}).get("sources", []))

    def latent(self, i: int) -> LatentView:
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < self.m:
            raise AnalysisError(f"unknown latent {i!r}: this analysis has latents 0..{self.m - 1}")
        chosen = self.attrs.get("latents")
        if chosen is not None and int(i) not in set(chosen):
            raise AnalysisError(f"latent {i} was not analysed (this run covered {len(chosen)} chosen latents)")
        return LatentView(self, int(i))

    __getitem__ = latent

    def __len__(self) -> int:
        return self.m
