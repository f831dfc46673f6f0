"""``actstore analyze``: feature analyses of a store with an SAE into a Zarr group (resumable).

The options are fields of :class:`~actstore.analysis.AnalyzeConfig` (names, types, defaults
and help from the dataclass); ``--option JOB.KEY=JSON`` (repeatable) sets a job's option,
e.g. ``--option top.k=50 --option contexts.window=16``. Progress is a bar in rows/s on
stderr; the same line run again continues from the last commit. Under ``torchrun`` each
rank takes a share and rank 0 writes the output. ``--html`` then writes the HTML report to
``OUT/report/index.html`` (``actstore.analysis.report.render``; ``actstore report OUT`` redoes it).
"""

from __future__ import annotations

import dataclasses
import json

import torch.distributed as dist

from .._dist import init_if_launched
from ..analysis import AnalysisError, AnalyzeConfig
from ..analysis import run as run_analysis
from ..analysis.config import parse_option
from ..analysis.output import read_attrs
from ..analysis.report import render
from ._options import add_options, given

OPTIONS = tuple(f.name for f in dataclasses.fields(AnalyzeConfig) if f.name != "options")
REQUIRED = ("store", "sae", "out")


def register(sub) -> None:
    p = sub.add_parser("analyze", help="feature analyses of a store with an SAE into a Zarr group (resumable)")
    add_options(p, AnalyzeConfig, OPTIONS)
    p.add_argument(
        "--option",
        action="append",
        metavar="JOB.KEY=JSON",
        help="a job's option, repeatable: top.k, bins.samples, contexts.window, top_tokens.t, lens.t, ...",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--html", action="store_true", help="also write the HTML report to OUT/report/index.html")
    p.add_argument(
        "--tokenizer", help="HF tokenizer folder to decode tokens in the report (default: the --model folder's)"
    )
    p.set_defaults(fn=run)


def run(args) -> int:
    opts = given(args, OPTIONS)
    missing = [k for k in REQUIRED if k not in opts]
    if missing:
        raise AnalysisError(f"missing {', '.join('--' + m for m in missing)}")
    job_opts: dict[str, dict] = {}
    for text in args.option or []:
        job, key, value = parse_option(text)
        job_opts.setdefault(job, {})[key] = value
    cfg = AnalyzeConfig(**opts, options=job_opts)
    joined = init_if_launched()
    try:
        out = run_analysis(**cfg.to_run_kwargs(), progress=not args.no_progress)
    finally:
        if joined:
            dist.destroy_process_group()
    if out is None:  # a share of a multi-rank run that another rank finishes
        if args.json:
            print(json.dumps({"out": None}))
        return 0
    attrs = read_attrs(out)
    summary = {
        "out": str(out),
        "rows_seen": attrs["rows_seen"],
        "m": attrs["sae"]["m"],
        "hook": attrs["hook"],
        "jobs": list(attrs["jobs"]),
        "summary": attrs["summary"],
    }
    if args.html:
        summary["report"] = str(render(out, out / "report", tokenizer=args.tokenizer))
    if args.json:
        print(json.dumps(summary))
    else:
        stats = attrs["summary"].get("stats", {})
        extra = f", {stats['dead']} dead, {stats['dense']} dense" if "dead" in stats else ""
        print(
            f"analysed {summary['rows_seen']:,} rows of {summary['hook']} with {summary['m']} latents "
            f"({', '.join(summary['jobs'])}{extra}) into {out}"
        )
        if args.html:
            print(f"report: {summary['report']}")
    return 0
