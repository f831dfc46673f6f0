"""``actstore report ANALYSIS``: (re)write the HTML report of a finished analysis, with a section
per representation job of an ``actstore analyze`` run (``OUT/<job>/``), or the page of a
representation-analysis output: steering, pca, diff, probe, scan, mcs; ``report/represent.py``).

Writes ``ANALYSIS/report/index.html`` (or ``--out DIR``) with
:func:`actstore.analysis.report.render` and prints its path; ``--tokenizer`` decodes the
tokens (default: the analysed model folder's tokenizer, else token ids are shown).
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report of a finished analysis (ANALYSIS/report/index.html)")
    p.add_argument("analysis", help="the output folder of actstore analyze")
    p.add_argument("--out", help="report folder (default: ANALYSIS/report)")
    p.add_argument("--tokenizer", help="HF tokenizer folder to decode tokens (default: the analysed model's)")
    p.add_argument(
        "--pages", type=int, help="pages for only the N latents that fire most (default: every latent; a few "
        "hundred KB each)"
    )  # fmt: skip
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    from ..analysis.output import read_attrs
    from ..analysis.report import render
    from ..analysis.report.represent import render_repr

    attrs = read_attrs(Path(args.analysis))
    if attrs is not None and "kind" in attrs:  # steering, pca, diff, probe, scan, mcs outputs
        print(render_repr(args.analysis, args.out, tokenizer=args.tokenizer))
        return 0
    print(render(args.analysis, args.out, tokenizer=args.tokenizer, pages=args.pages))
    return 0
