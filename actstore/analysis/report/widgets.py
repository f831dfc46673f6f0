"""The pieces every report page shares (``render.py``, ``represent.py``): the jinja2
environment over ``templates/``, number formats, token text, and the geometry of the inline
SVG bar charts."""

from __future__ import annotations

import math
import os
from pathlib import Path

import jinja2
import numpy as np

from .._pass import AnalysisError

TEMPLATES = Path(__file__).with_name("templates")


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every token string is untrusted text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def _num(x, digits: int = 4) -> str:
    """A short human form of a number: ints with thousands separators, floats to ``digits`` significant."""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def _exact(x) -> str:
    """The number exactly (round-trips through float()): what data-v attributes and tests read."""
    return repr(float(x)) if not isinstance(x, (int, np.integer)) else str(int(x))


def load_tokenizer(spec):
    """``spec``: None, an object with ``decode``, or a Hugging Face tokenizer folder (loaded offline)."""
    if spec is None or hasattr(spec, "decode"):
        return spec
    path = os.fspath(spec)
    if not os.path.isdir(path):
        raise AnalysisError(f"--tokenizer {path!r} is not a folder: give a Hugging Face tokenizer or model folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    # Deferred: transformers is an optional extra (actstore[capture]) and takes seconds to import.
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise AnalysisError(
            f"no tokenizer in {path!r} ({type(e).__name__}): give --tokenizer a folder with tokenizer files"
        ) from None
    return tok


def _model_tokenizer(attrs: dict):
    """The tokenizer of the analysis' model folder, or None (no model, a factory, or no tokenizer files)."""
    name = (attrs.get("model") or (attrs.get("represent") or {}).get("model") or {}).get("name")
    if not name or not os.path.isdir(name):
        return None
    try:
        tok = load_tokenizer(name)
    except AnalysisError:
        return None
    return tok if len(tok) > 1 else None  # an empty stand-in is no tokenizer


class _Tokens:
    """Token id -> display text (cached); ids when there is no tokenizer."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, i: int) -> str:
        i = int(i)
        if i < 0:
            return ""
        if i not in self.cache:
            if self.tok is None:
                text = f"[{i}]"
            else:
                try:
                    text = self.tok.decode([i])
                except Exception:
                    text = f"[{i}]"
                text = text.replace("\n", "⏎").replace("\t", "⇥") or "∅"
            self.cache[i] = text
        return self.cache[i]


def _bars(counts, labels, width=560, height=120) -> dict:
    """Geometry of an inline SVG bar chart of ``counts`` (bar heights on a linear scale)."""
    counts = [int(c) for c in counts]
    top = max(counts + [1])
    n = max(len(counts), 1)
    w = width / n
    bars = [
        {"x": round(j * w, 2), "w": round(max(w - 1, 1), 2), "h": round(height * c / top, 2), "title": f"{lab}: {c:,}"}
        for j, (c, lab) in enumerate(zip(counts, labels))
    ]
    for b in bars:
        b["y"] = round(height - b["h"], 2)
    return {"width": width, "height": height, "bars": bars, "top": top}


def _ticks(lo: float, hi: float, values, width: int) -> list[dict]:
    """Axis labels at ``values`` on a linear axis [lo, hi] mapped to [0, width]."""
    return [{"x": round((v - lo) / (hi - lo) * width, 2), "label": lab} for v, lab in values]
