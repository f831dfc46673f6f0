"""``actstore report ANALYSIS``: (re)write the HTML report of a finished analysis.

Writes ``ANALYSIS/report/index.html`` (or ``--out DIR``) with
:func:`actstore.analysis.report.render` and prints its path; ``--tokenizer`` decodes the
tokens (default: the analysed model folder's tokenizer, else token ids are shown).
"""

from __future__ import annotations

from ..analysis.report import render


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
    print(render(args.analysis, args.out, tokenizer=args.tokenizer, pages=args.pages))
    return 0
