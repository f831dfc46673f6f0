"""The HTML page of a representation-analysis output (steering vectors, PCA, layer diff,
probes, vector scan, dictionary comparison, a crosscoder's model diff). ``sections(path, tok)`` builds a result's
sections (one builder per kind, :data:`BUILDERS`); the analyze report (``render.py``) shows
them for each representation job of a run, and ``render_repr(out)`` writes one self-contained
``out/report/index.html`` (inline CSS and SVG, jinja2 template ``represent.html.j2``, the
SAE report's base and macros): the per-hook tables, the saved SVG plots, histograms, logit
lens tokens and the top rows' token windows coloured by their value. Tokens are decoded
with ``tokenizer`` (an object with ``decode`` or a tokenizer folder), else shown as ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .._pass import AnalysisError
from ..output import read_attrs
from .widgets import _bars, _env, _exact, _num, _ticks, _Tokens, load_tokenizer


def _contexts(tok, rows, values, tokens, wrows, wvals, label_fmt="{:.3g}") -> list[dict]:
    lines = []
    for r, v, t, wr, wv in zip(rows, values, tokens, wrows, wvals):
        if r < 0:
            continue
        peak = float(np.abs(wv[wr >= 0]).max()) if (wr >= 0).any() else 1.0
        cells = [
            {
                "text": tok(int(ti)),
                "ex": int(rr) == int(r),
                "alpha": round(min(1.0, abs(float(x)) / max(peak, 1e-12)) * 0.85, 3),
                "title": f"row {int(rr)}: {label_fmt.format(float(x))}",
            }  # fmt: skip
            for ti, rr, x in zip(t, wr, wv)
            if rr >= 0
        ]
        lines.append({"row": int(r), "value": float(v), "cells": cells})
    return lines


def _hist_chart(counts, edges, label) -> dict:
    lo, hi = float(edges[0]), float(edges[-1])
    c = _bars(counts, [f"[{_num(a)}, {_num(b)})" for a, b in zip(edges[:-1], edges[1:])])
    c["ticks"] = _ticks(lo, hi if hi > lo else lo + 1, [(lo, _num(lo)), (hi, _num(hi))], c["width"])
    c["xlabel"], c["label"] = label, label
    return c


def _lens_tokens(tok, g, p, label) -> list[dict]:
    out = []
    for side in ("top", "bottom"):
        if f"{p}/{side}_ids" in g:
            ids = g[f"{p}/{side}_ids"][...]
            out.append({"label": f"{label} {side}", "items": [tok(i) for i in ids.reshape(-1)[:10] if i >= 0]})
    return out


def _steering(g, a, tok):
    hooks = a["hooks"]
    rows = [[h, _num(n), _num(au)] for h, n, au in zip(hooks, g["steering/norms"][...], g["steering/auroc"][...])]
    secs = [{"title": "vectors", "table": {"cols": ["hook", "norm", "AUROC"], "rows": rows}}]
    for j, h in enumerate(hooks):
        p = f"steering/{j}"
        sec = {"title": h, "tokens": _lens_tokens(tok, g, f"{p}/lens", "logit lens")}
        if f"{p}/top/rows" in g:
            t = {k: g[f"{p}/top/{k}"][...] for k in ("rows", "values", "tokens", "window_rows", "proj")}
            lines = _contexts(tok, t["rows"], t["values"], t["tokens"], t["window_rows"], t["proj"])
            sec["contexts"] = [{"label": "rows with the highest projection", "lines": lines}]
        secs.append(sec)
    return secs


def _pca(g, a, tok, path):
    secs = []
    for j, h in enumerate(a["hooks"]):
        r = g[f"pca/{j}/explained_ratio"][...]
        table = {"cols": ["component", "explained"], "rows": [[str(i + 1), f"{100 * x:.2f}%"] for i, x in enumerate(r)]}
        svg = path / f"pca_{j}.svg"
        secs.append({"title": h, "table": table, "svgs": [svg.read_text()] if svg.exists() else []})
    if a.get("principal_angles"):
        rows = [[k, ", ".join(f"{np.degrees(x):.1f}°" for x in v[:6])] for k, v in a["principal_angles"].items()]
        secs.append({"title": "principal angles", "table": {"cols": ["subspaces", "angles"], "rows": rows}})
    return secs


def _diff(g, a, tok):
    nm = a["norm"]
    rows = [
        ["‖Δ‖ mean, std", f"{_num(nm['mean'])}, {_num(nm['std'])}"],
        ["‖Δ‖ min, max", f"{_num(nm['min'])}, {_num(nm['max'])}"],
        ["row norm A → B", f"{_num(a['mean_norm_a'])} → {_num(a['mean_norm_b'])}"],
    ]
    sec = {"title": f"{a['hook_b']} − {a['hook_a']}", "table": {"cols": ["", "value"], "rows": rows}}
    sec["charts"] = [_hist_chart(g["diff/hist"][...], g["diff/hist_edges"][...], "‖Δ‖")]
    sec["tokens"] = _lens_tokens(tok, g, "diff/lens/mean", "logit lens of the mean Δ")
    t = {k: g[f"diff/top/{k}"][...] for k in ("rows", "norms", "tokens", "window_rows", "window_norms")}
    lines = _contexts(tok, t["rows"], t["norms"], t["tokens"], t["window_rows"], t["window_norms"])
    sec["contexts"] = [{"label": "rows with the largest ‖Δ‖", "lines": lines}]
    return [sec]


def _probes(g, a, tok, path):
    rows = []
    for j, h in enumerate(a["hooks"]):
        rows.append(
            [h] + [_num(g[f"probes/{k}/{m}"][j]) for k in ("mass_mean", "logistic") for m in ("accuracy", "auroc")]
        )
    cols = ["hook", "mass-mean acc", "mass-mean AUROC", "logistic acc", "logistic AUROC"]
    svg = path / "probes.svg"
    return [
        {
            "title": "test documents",
            "table": {"cols": cols, "rows": rows},
            "svgs": [svg.read_text()] if svg.exists() else [],
        }
    ]


def _scan(g, a, tok):
    secs = []
    hist, edges = g["scan/hist"][...], g["scan/edges"][...]
    for i in range(hist.shape[0]):
        sec = {"title": f"vector {i}", "charts": [_hist_chart(hist[i], edges[i], "x · v")], "contexts": []}
        for side in ("top", "bottom"):
            t = {k: g[f"scan/{side}_{k}"][...][i] for k in ("rows", "values", "tokens", "window_rows", "window_proj")}
            lines = _contexts(tok, t["rows"], t["values"], t["tokens"], t["window_rows"], t["window_proj"])
            sec["contexts"].append({"label": f"{side} rows", "lines": lines})
        secs.append(sec)
    return secs


def _dictionary(g, a, tok):
    secs = []
    for name, label in (("ab", "MCS of A's directions in B"), ("ba", "MCS of B's directions in A")):
        v = g[f"dictionary/{name}"][...]
        counts, edges = np.histogram(v, bins=20, range=(min(0.0, float(v.min())), 1.0))
        rows = [["mean", _num(v.mean())], ["> 0.9", f"{100 * (v > 0.9).mean():.1f}%"]]
        chart = _hist_chart(counts, edges, "max cosine")
        secs.append({"title": label, "charts": [chart], "table": {"cols": ["", "value"], "rows": rows}})
    return secs


def _crosscoder(g, a, tok):
    """The latents (live, dead), the relative decoder norms (two blocks: the histogram of r;
    more: each block's share) with the class counts, the explained variance per block and
    each block's most specific latents."""
    labels, K = a["blocks"], len(a["blocks"])
    arr = lambda k: g[f"crosscoder/{k}"][...]  # noqa: E731
    hist, edges = arr("hist"), arr("hist_edges")
    norms, cos, count = arr("norms"), arr("cosine"), arr("count")
    lo, hi = 1 - a["thresholds"]["specific"], a["thresholds"]["specific"]
    live, every = a["classes"], a["classes_all"]
    rows = [
        ["latents", _num(a["sae"]["m"])],
        ["live (a decoder, fired on these rows)", _num(live["latents"])],
        ["dead", _num(a["dead"])],
        ["· never fired on these rows", _num(int((count == 0).sum()))],
        ["· zero decoder", _num(a["zero_decoder"])],
        ["mean L0", _num(a["l0"])],
    ]
    secs = [{"title": "latents", "table": {"cols": ["", "count"], "rows": rows}}]
    ticks = [(v, _num(v)) for v in (0.0, lo, 0.5, hi, 1.0)]
    if K == 2:
        title = "relative decoder norm r = ‖W_dec^B‖ / (‖W_dec^A‖ + ‖W_dec^B‖)"
        charts = [_hist_chart(hist[1], edges, f"r (A = {labels[0]}, B = {labels[1]}; live latents)")]
        s_lo, s_hi = a["thresholds"]["shared"]
        names = [
            (f"A-only (r < {_num(lo)})", "specific", labels[0]),
            (f"between ({_num(lo)} ≤ r ≤ {_num(hi)})", "between", None),
            (f"· shared ({_num(s_lo)} ≤ r ≤ {_num(s_hi)})", "shared", None),
            (f"B-only (r > {_num(hi)})", "specific", labels[1]),
        ]
        between = (arr("classes") == K) & ~np.isnan(cos[:, 0])
        c, e = np.histogram(cos[between, 0], bins=20, range=(-1.0, 1.0))
        pair = _hist_chart(c, e, "cosine of the A and B decoder vectors (live latents between)")
        pair["ticks"] = _ticks(-1.0, 1.0, [(v, _num(v)) for v in (-1.0, 0.0, 1.0)], pair["width"])
        charts.append(pair)
    else:
        title = "each block's share of the decoder norm ‖W_dec^k‖ / Σ_j ‖W_dec^j‖"
        charts = [_hist_chart(hist[k], edges, f"share of {lab} (live latents)") for k, lab in enumerate(labels)]
        names = [(f"only {lab} (share > {_num(hi)})", "specific", lab) for lab in labels]
        names.append((f"spread (no share > {_num(hi)})", "between", None))
    for ch in charts[: 1 if K == 2 else K]:
        ch["ticks"] = _ticks(0.0, 1.0, ticks, ch["width"])
    rows = [[n, _num(live[key] if lab is None else live[key][lab]),
             _num(every[key] if lab is None else every[key][lab])] for n, key, lab in names]  # fmt: skip
    rows.append(["total", _num(live["latents"]), _num(every["latents"])])
    table = {"cols": ["class", "live latents", "with the never-fired (every latent with a decoder)"], "rows": rows}
    secs.append({"title": title, "charts": charts, "table": table})
    ev, fvu, var = arr("ev"), arr("fvu"), arr("variance")
    rows = [[lab, r["store"], r["hook"], f"{100 * e:.2f}%", _num(f), _num(v)]
            for lab, r, e, f, v in zip(labels, a["reads"], ev, fvu, var)]  # fmt: skip
    rows.append(["all blocks", "", "", f"{100 * a['ev_total']:.2f}%", _num(1 - a["ev_total"]), _num(var.sum())])
    cols = ["block", "store", "hook", "explained variance", "FVU", "variance (sum over rows)"]
    secs.append({"title": "explained variance per block", "table": {"cols": cols, "rows": rows}})
    ids, top = arr("top_latents"), arr("top_share")
    for k, lab in enumerate(labels):
        rows = []
        for i, v in zip(ids[k], top[k]):
            if i < 0:
                continue
            other = float(norms[i].sum() - norms[i, k])
            pair = [_num(x) for x in cos[i]] if K == 2 else []
            rows.append([str(int(i)), _num(v), _num(norms[i, k]), _num(other), *pair, _num(count[i])])
        cols = ["latent", f"share of {lab}", "norm here", "norm elsewhere", *(["cosine A·B"] if K == 2 else []),
                "rows fired"]  # fmt: skip
        secs.append({"title": f"latents most specific to {lab}", "table": {"cols": cols, "rows": rows}})
    return secs


BUILDERS = {
    "steering": lambda g, a, tok, path: _steering(g, a, tok),
    "pca": _pca,
    "layer_diff": lambda g, a, tok, path: _diff(g, a, tok),
    "probes": _probes,
    "scan": lambda g, a, tok, path: _scan(g, a, tok),
    "dictionary": lambda g, a, tok, path: _dictionary(g, a, tok),
    "crosscoder": lambda g, a, tok, path: _crosscoder(g, a, tok),
}


def sections(path, tok) -> tuple[dict, list[dict]]:
    """The attributes and the page sections of the representation result at ``path`` (each
    ``{title, table, svgs, charts, tokens, contexts}``); ``tok`` maps a token id to its text.
    What both :func:`render_repr` and the analyze report (``render.py``) show."""
    path = Path(path)
    a = read_attrs(path)
    if a is None or "kind" not in a:
        raise AnalysisError(f"no representation-analysis result at {path}: write one with actstore steering, pca, ...")
    if a["kind"] not in BUILDERS:
        raise AnalysisError(f"{path} holds a {a['kind']!r} result, which has no report page")
    secs = BUILDERS[a["kind"]](zarr.open_group(str(path), mode="r"), a, tok, path)
    for s in secs:
        for k in ("table", "svgs", "charts", "tokens", "contexts"):
            s.setdefault(k, [] if k != "table" else None)
    return a, secs


def head(a: dict) -> list[tuple[str, object]]:
    """The (label, value) line over a result's sections: its store, rows and groups."""
    out = [
        (k, v) for k, v in (("store", (a.get("store") or {}).get("path")), ("rows", a.get("count"))) if v is not None
    ]
    if "positive" in a:
        out.append(("groups", f"{a['positive']} vs {a['negative']}"))
    if a.get("paired_store"):
        out.append(("paired store", a["paired_store"]["path"]))
    return out


def render_repr(path, out_dir=None, *, tokenizer=None) -> Path:
    """Write ``out_dir/index.html`` (default ``path/report``) for the result at ``path``; returns its path."""
    path = Path(path)
    tok = _Tokens(load_tokenizer(tokenizer) if tokenizer is not None else None)
    a, secs = sections(path, tok)
    out = Path(out_dir) if out_dir is not None else path / "report"
    out.mkdir(parents=True, exist_ok=True)
    html = (
        _env()
        .get_template("represent.html.j2")
        .render(kind=a["kind"], title=path.name, head=head(a), sections=secs, exact=_exact)
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    return out / "index.html"
