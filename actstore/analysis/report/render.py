"""``render(analysis_dir, out_dir)``: a self-contained HTML report of a finished analysis.

Output (``out_dir``, default ``analysis_dir/report``): ``index.html`` (the run's summary, the
log-density histogram and a sortable, filterable table of every latent) and one page per
latent, ``latents/<i:05d>.html`` (statistics, activation histogram, top input tokens, logit
lens, contexts of the top examples and of every bin's samples, ablation rows). The index also
holds a section per representation job of the run (``OUT/<job>/``: ``represent.sections``,
plots as inline SVG); a run of representation jobs only gets just those. Everything is
inline (CSS, a small JS for the table, SVG charts): the pages work from ``file://`` with no
server and no network. The table applies ``?sort=KEY`` (``-KEY`` descending), ``?q=TEXT``
and ``?hide=dead`` on load, so a link (or a headless browser) can ask for an order.

Tokens are decoded with ``tokenizer`` (an object with ``decode(list[int]) -> str``, or a
path to a Hugging Face tokenizer folder); without one, with the analysis' model folder's
tokenizer when it has one; else they are shown as ids. All text is escaped (jinja2 autoescape).

The report records the analysis' identity in ``out_dir/report.json``; a folder holding a
report of another analysis, or anything that is not a report, is refused. Pages are built in
a sibling temporary folder and swapped in at the end, so a failed render leaves nothing
half-written visible.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .._pass import AnalysisError
from ..feature_stats import busiest
from ..jobs import MARKER as DONE
from ..jobs import REPR_JOBS
from ..output import Analysis, read_attrs
from .represent import head as repr_head
from .represent import sections
from .widgets import _bars, _env, _exact, _model_tokenizer, _num, _ticks, _Tokens, load_tokenizer

MARKER = "report.json"
PAD = 3  # empty histogram bins shown on each side of a latent's nonzero ones
SHOW_TOKENS = 5  # top input / logit tokens per latent in the index table
BIN_MODES = (("equal", "equal width on [0, max]"), ("abs", "absolute"), ("quantile", "rank quantiles"))


class _Report:
    def __init__(self, a: Analysis, tokenizer):
        self.a, self.tok = a, _Tokens(tokenizer)
        self.m = a.m
        self.digits = max(5, len(str(self.m - 1)))
        self.has = lambda name: name in a
        # The latents the analysis covered (all, or those it was asked for): the index lists
        # these, and only these get pages.
        chosen = a.attrs.get("latents")
        self.latents = list(range(self.m)) if chosen is None else [int(i) for i in chosen]
        self.paged = list(self.latents)  # the latents that get a page, ascending
        self._paged_set = set(self.paged)

    def page(self, i: int) -> str:
        return f"latents/{i:0{self.digits}d}.html"

    def col(self, name):
        return self.a.array(name) if self.has(name) else None

    def set_pages(self, pages) -> None:
        """``pages``: None (every latent), a count n (the n latents that fire most, then by
        id), or latent ids."""
        universe = np.asarray(self.latents, dtype=np.int64)
        if pages is None:
            chosen = universe
        elif isinstance(pages, int):
            count = self.col("latents/count")
            chosen = busiest(count, pages, universe) if count is not None else universe[: max(0, pages)]
        else:
            chosen = [int(i) for i in pages]
            bad = [i for i in chosen if not 0 <= i < self.m]
            if bad:
                raise AnalysisError(f"no latent {bad[0]} in an SAE of {self.m} latents: pick pages in 0..{self.m - 1}")
            missed = sorted(set(chosen) - set(self.latents))
            if missed:
                raise AnalysisError(f"latent {missed[0]} was not analysed: pick pages among the analysed latents")
        self.paged = sorted({int(i) for i in chosen})
        self._paged_set = set(self.paged)

    def _neighbour(self, i: int, step: int):
        """``{"href": file name, "i": latent}`` of the previous (step -1) or next (+1) latent
        that has a page (not i - 1 or i + 1 when pages are limited), or None."""
        pos = bisect.bisect_left(self.paged, i)
        if step < 0:
            j = pos - 1
        else:
            j = pos + 1 if pos < len(self.paged) and self.paged[pos] == i else pos
        if not 0 <= j < len(self.paged):
            return None
        return {"href": self.page(self.paged[j]).split("/")[-1], "i": self.paged[j]}

    # -- index -----------------------------------------------------------------------------------
    def index_rows(self) -> list[dict]:
        rows = []
        cnt, dens, mx, mean = (self.col(f"latents/{k}") for k in ("count", "density", "max", "mean"))
        dead, dense = self.col("latents/dead"), self.col("latents/dense")
        tt = self.col("top_tokens/tokens")
        lens = self.col("lens/top_ids")
        topv = self.col("top/values")
        for i in self.latents:
            r = {"i": i, "href": self.page(i) if i in self._paged_set else None, "cells": {}}
            if cnt is not None:
                r["cells"] = {
                    "density": dens[i],
                    "count": cnt[i],
                    "max": mx[i],
                    "mean": mean[i],
                }
            elif topv is not None:
                r["cells"] = {"max": topv[i, 0]}
            r["dead"] = bool(dead[i]) if dead is not None else False
            r["dense"] = bool(dense[i]) if dense is not None else False
            r["lens"] = [self.tok(t) for t in lens[i, :SHOW_TOKENS] if t >= 0] if lens is not None else None
            r["inputs"] = [self.tok(t) for t in tt[i, :SHOW_TOKENS] if t >= 0] if tt is not None else None
            rows.append(r)
        return rows

    def density_chart(self):
        if not self.has("summary/log_density_hist"):
            return None
        h, e = self.col("summary/log_density_hist"), self.col("summary/log_density_edges")
        labels = [f"10^{e[j]:.1f} – 10^{e[j + 1]:.1f}" for j in range(h.size)]
        c = _bars(h, labels)
        c["ticks"] = _ticks(float(e[0]), float(e[-1]), [(k, f"1e{k}") for k in range(-10, 1, 2)], c["width"])
        c["xlabel"] = "log10 density (live latents)"
        return c

    # -- latent pages ----------------------------------------------------------------------------
    def stats(self, i: int) -> list[tuple[str, str, str]]:
        """(label, shown, exact) for the latent's statistics."""
        if not self.has("latents/count"):
            return []
        g = lambda k: self.col(f"latents/{k}")[i]  # noqa: E731
        n, s, ss = int(g("count")), float(g("sum")), float(g("sumsq"))
        std = math.sqrt(max(ss / n - (s / n) ** 2, 0.0)) if n else 0.0
        out = [
            ("fires on rows", g("count")),
            ("documents", g("doc_count")),
            ("density", g("density")),
            ("max", g("max")),
            ("mean (when firing)", g("mean")),
            ("std (when firing)", std),
            ("sum", g("sum")),
            ("dead", g("dead")),
            ("dense", g("dense")),
        ]
        return [(k, _num(v), _exact(v) if not isinstance(v, (bool, np.bool_)) else str(bool(v))) for k, v in out]

    def act_chart(self, i: int):
        """The latent's log-spaced histogram, cropped to its nonzero bins plus a margin of ``PAD`` bins."""
        if not self.has("latents/hist"):
            return None
        h, e = self.col("latents/hist")[i], self.col("latents/hist_edges")
        # Bar 0 is (0, e[0]), bar j in 1..E-1 is [e[j-1], e[j]), bar E is [e[-1], inf).
        inner = [f"[{e[j]:.3g}, {e[j + 1]:.3g})" for j in range(e.size - 1)]
        labels = [f"(0, {e[0]:.3g})", *inner, f"≥ {e[-1]:.3g}"]
        nz = np.flatnonzero(h)
        a, b = (max(int(nz[0]) - PAD, 0), min(int(nz[-1]) + PAD + 1, h.size)) if nz.size else (0, h.size)
        c = _bars(h[a:b], labels[a:b])
        w = c["width"] / (b - a)
        per = (e.size - 1) / max(float(np.log10(e[-1] / e[0])), 1e-12)  # bins per decade
        ticks = []
        for t in range(e.size):  # edge e[t] is the left side of bar t+1
            k = float(np.log10(e[t]))
            if abs(k - round(k)) < 1e-9 and a <= t + 1 <= b and (per >= 2 or t % 2 == 0):
                ticks.append({"x": round((t + 1 - a) * w, 2), "label": f"1e{round(k)}"})
        c["ticks"] = ticks
        c["xlabel"] = "activation (log-spaced bins)"
        return c

    def _context(self, toks, acts, rows, value, vmax) -> dict:
        w = toks.size // 2
        cells = []
        for j in range(toks.size):
            if rows[j] < 0:
                continue
            v = float(acts[j])
            alpha = min(max(v / vmax, 0.0), 1.0) if vmax > 0 else 0.0
            cells.append(
                {
                    "text": self.tok(toks[j]),
                    "act": v,
                    # "0" for a silent token: the template then writes no style at all, which
                    # is most of a window's tokens (a page is mostly context markup).
                    "alpha": f"{alpha:.3f}".rstrip("0").rstrip(".") or "0",
                    "title": f"{v:.4g} (token {int(toks[j])}, row {int(rows[j])})",
                    "ex": j == w,
                }
            )
        return {"value": float(value), "row": int(rows[w]), "cells": cells}

    def top_examples(self, i: int, vmax: float) -> list[dict]:
        if not self.has("top/rows"):
            return []
        vals = self.col("top/values")[i]
        if not self.has("contexts/top/tokens"):  # values and rows only
            pairs = zip(vals, self.col("top/rows")[i])
            return [{"value": float(v), "row": int(r), "cells": []} for v, r in pairs if r >= 0]
        t, ac, r = (self.col(f"contexts/top/{k}")[i] for k in ("tokens", "acts", "rows"))
        w = t.shape[-1] // 2
        return [self._context(t[k], ac[k], r[k], vals[k], vmax) for k in range(t.shape[0]) if r[k, w] >= 0]

    def bin_sections(self, i: int, vmax: float) -> list[dict]:
        out = []
        for mode, label in BIN_MODES:
            if not self.has(f"bins/{mode}/count"):
                continue
            cnt = self.col(f"bins/{mode}/count")[i]
            total = int(cnt.sum())
            e = self.col(f"bins/{mode}/edges")
            e = e if e.ndim == 1 else e[i]
            ctx = self.has(f"contexts/bins/{mode}/tokens")
            vals = self.col(f"bins/{mode}/values")[i]
            rows = self.col(f"bins/{mode}/rows")[i]
            bins = []
            for j in range(cnt.size):
                if cnt[j] == 0:
                    continue
                ex = []
                if ctx:
                    t, ac, r = (self.col(f"contexts/bins/{mode}/{k}")[i, j] for k in ("tokens", "acts", "rows"))
                    w = t.shape[-1] // 2
                    ex = [self._context(t[s], ac[s], r[s], vals[j, s], vmax) for s in range(t.shape[0]) if r[s, w] >= 0]
                else:
                    pairs = zip(vals[j], rows[j])
                    ex = [{"value": float(v), "row": int(rr), "cells": []} for v, rr in pairs if rr >= 0]
                pct = 100.0 * int(cnt[j]) / max(total, 1)
                bins.append(
                    {
                        "lo": _num(e[j]),
                        "hi": _num(e[j + 1]),
                        "count": int(cnt[j]),
                        "pct": f"{pct:.3g}",
                        "examples": ex,
                    }
                )
            out.append({"mode": mode, "label": label, "total": total, "bins": bins})
        return out

    def lens(self, i: int):
        if not self.has("lens/top_ids"):
            return None
        out = {}
        for side in ("top", "bottom"):
            ids, vals = self.col(f"lens/{side}_ids")[i], self.col(f"lens/{side}_values")[i]
            out[side] = [{"text": self.tok(t), "id": int(t), "value": float(v)} for t, v in zip(ids, vals) if t >= 0]
        return out

    def ablation(self, i: int) -> list[dict]:
        if not self.has("ablation/rows"):
            return []
        rows, base = self.col("ablation/rows")[i], self.col("ablation/base")[i]
        delta, toks = self.col("ablation/delta")[i], self.col("ablation/tokens")[i]
        out = []
        for e in range(rows.size):
            if rows[e] < 0:
                continue
            d = delta[e]
            scale = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0
            cells = []
            for c in range(toks.shape[1]):
                if toks[e, c] < 0:
                    continue
                if c == toks.shape[1] - 1:
                    cells.append({"text": self.tok(toks[e, c]), "title": f"the example: {base[e]:.4g}", "ex": True})
                    continue
                v = float(d[c])
                a = abs(v) / scale if scale > 0 and math.isfinite(v) else 0.0
                cells.append(
                    {
                        "text": self.tok(toks[e, c]),
                        "title": f"deleted: {v:+.4g}",
                        "ex": False,
                        "neg": v < 0,
                        "alpha": f"{a:.3f}",
                        "delta": v,
                    }
                )
            out.append({"row": int(rows[e]), "base": float(base[e]), "cells": cells})
        return out

    def ablation_index(self) -> list[dict]:
        """The index's ablation section: per latent that has ablation examples (ascending id),
        its page (or None), how many examples, its first example's line (the top activation's,
        as on its page) and ``key``: the earlier token whose deletion lowers that activation
        most, with the change (None when no deletion lowers it)."""
        if not self.has("ablation/rows"):
            return []
        rows = self.col("ablation/rows")
        out = []
        for i in self.latents:
            if not (rows[i] >= 0).any():
                continue
            lines = self.ablation(i)
            drops = [c for c in lines[0]["cells"] if not c["ex"] and math.isfinite(c["delta"]) and c["delta"] < 0]
            key = min(drops, key=lambda c: c["delta"]) if drops else None
            out.append(
                {
                    "i": i,
                    "href": self.page(i) if i in self._paged_set else None,
                    "examples": len(lines),
                    "first": lines[0],
                    "key": None if key is None else {"text": key["text"], "delta": key["delta"]},
                }
            )
        return out

    def top_tokens(self, i: int) -> list[dict]:
        if not self.has("top_tokens/tokens"):
            return []
        t, c, mu = (self.col(f"top_tokens/{k}")[i] for k in ("tokens", "counts", "mean"))
        keep = t >= 0
        return [
            {"text": self.tok(a), "id": int(a), "count": int(b), "mean": float(x)}
            for a, b, x in zip(t[keep], c[keep], mu[keep])
        ]

    def latent_context(self, i: int) -> dict:
        vmax = float(self.col("latents/max")[i]) if self.has("latents/max") else 0.0
        if vmax <= 0 and self.has("top/values"):
            vmax = float(self.col("top/values")[i, 0])
        return {
            "i": i,
            "prev": self._neighbour(i, -1),
            "next": self._neighbour(i, +1),
            "stats": self.stats(i),
            "chart": self.act_chart(i),
            "top_tokens": self.top_tokens(i),
            "lens": self.lens(i),
            "top": self.top_examples(i, vmax),
            "bins": self.bin_sections(i, vmax),
            "ablation": self.ablation(i),
            "dead": bool(self.col("latents/dead")[i]) if self.has("latents/dead") else False,
            "dense": bool(self.col("latents/dense")[i]) if self.has("latents/dense") else False,
        }


def _check_out(out: Path, identity: str) -> None:
    if not out.exists():
        return
    marker = out / MARKER
    if marker.is_file():
        try:
            got = json.loads(marker.read_text()).get("identity")
        except ValueError:
            got = None
        if got != identity:
            raise AnalysisError(f"{out} holds the report of a different analysis: pick another folder or delete it")
        return
    if any(out.iterdir()):
        raise AnalysisError(f"{out} exists and holds no actstore report: pick another folder")


def _represent(path: Path, attrs: dict, tok: _Tokens) -> list[dict]:
    """One entry per representation job of the run (``jobs.py``), in run order: its sections
    (``represent.sections``), or ``sections`` None for a job whose group is not finished."""
    out = []
    for job in attrs.get("jobs", {}):
        if job not in REPR_JOBS:
            continue
        p = path / job
        got = read_attrs(p) if (p / "zarr.json").exists() else None
        if got is None or got.get(DONE) is None:
            out.append({"job": job, "kind": None, "head": [], "sections": None})
            continue
        a, secs = sections(p, tok)
        out.append({"job": job, "kind": a["kind"], "head": repr_head(a), "sections": secs})
    return out


def _render_represent_only(path: Path, attrs: dict, out: Path, tok) -> Path:
    """The index page of a run of representation jobs only (no SAE: no latent table)."""
    head = {
        "store": attrs["store"]["path"],
        "jobs": list(attrs["jobs"]),
        "tokens": "decoded" if tok is not None else "shown as ids [n]",
        "identity": attrs.get("identity", "")[:12],
        "m": None,
    }
    represent = _represent(path, attrs, _Tokens(tok))
    _check_out(out, attrs.get("identity", ""))
    with _publish(out, attrs.get("identity", ""), path) as build:
        idx = (
            _env()
            .get_template("index.html.j2")
            .render(head=head, rows=None, chart=None, represent=represent, ablation=[], exact=_exact)
        )
        (build / "index.html").write_text(idx, encoding="utf-8")
    return out / "index.html"


@contextmanager
def _publish(out: Path, identity: str, analysis: Path):
    """A fresh build folder beside ``out``; on a clean exit it gets the report marker and
    replaces ``out`` (a reader never sees a half-written report); on an error it is removed."""
    build = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.build")
    try:
        build.mkdir(parents=True)
        yield build
        (build / MARKER).write_text(json.dumps({"identity": identity, "analysis": str(analysis)}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def render(analysis_dir, out_dir=None, *, tokenizer=None, pages=None) -> Path:
    """Write the HTML report of the analysis at ``analysis_dir`` into ``out_dir`` (default
    ``analysis_dir/report``); returns the path of its ``index.html``. ``pages``: which latents
    get a page (None: all; n: the n that fire most; or latent ids); the index lists every
    latent and links those. A page holds every example's context, a few hundred KB with
    the default jobs, so a wide SAE's full report runs to hundreds of MB. Each representation
    job of the run (``OUT/<job>/``, ``jobs.py``) gets a section of the index; a run of those
    jobs only gets an index of its sections."""
    path = Path(analysis_dir)
    attrs = read_attrs(path)
    if attrs is not None and "sae" not in attrs and "kind" not in attrs and "represent" in attrs:
        out = Path(out_dir) if out_dir is not None else path / "report"
        tok = load_tokenizer(tokenizer) if tokenizer is not None else _model_tokenizer(attrs)
        return _render_represent_only(path, attrs, out, tok)
    a = Analysis(analysis_dir)
    out = Path(out_dir) if out_dir is not None else a.path / "report"
    identity = a.attrs.get("identity", "")
    _check_out(out, identity)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else _model_tokenizer(a.attrs)
    rep = _Report(a, tok)
    rep.set_pages(pages)
    env = _env()
    at = a.attrs
    summary = at.get("summary", {}).get("stats", {})
    model = at.get("model") or {}
    head = {
        "store": at["store"]["path"],
        "hook": at["hook"] if "target" not in at else f"{at['hook']} → {at['target']}",  # a transcoder's
        "rows_seen": at["rows_seen"],
        "m": a.m,
        "d": at["sae"]["d"],
        "arch": at["sae"]["arch"],
        # The model's own name (its Hugging Face name_or_path) where the analysis recorded one;
        # the --model spec it was loaded by (a folder, python:module:function) as a tooltip.
        "model": model.get("label") or model.get("name"),
        "model_spec": model.get("name"),
        "jobs": list(at["jobs"]),
        "dead": summary.get("dead"),
        "dense": summary.get("dense"),
        "mean_l0": summary.get("mean_l0"),
        "tokens": "decoded" if tok is not None else "shown as ids [n]",
        "identity": identity[:12],
    }
    with _publish(out, identity, a.path) as build:
        (build / "latents").mkdir()
        idx = env.get_template("index.html.j2").render(
            head=head,
            rows=rep.index_rows(),
            chart=rep.density_chart(),
            represent=_represent(a.path, at, rep.tok),
            ablation=rep.ablation_index(),
            exact=_exact,
        )
        (build / "index.html").write_text(idx, encoding="utf-8")
        page = env.get_template("latent.html.j2")
        for i in rep.paged:
            html = page.render(head=head, L=rep.latent_context(i), exact=_exact)
            (build / rep.page(i)).write_text(html, encoding="utf-8")
    return out / "index.html"
