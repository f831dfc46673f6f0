"""``actstore analyze``: feature analyses of a store with an SAE, and representation analyses
of its hooks, into one Zarr group (resumable).

The options are fields of :class:`~actstore.analysis.AnalyzeConfig` (names, types, defaults
and help from the dataclass); ``--option JOB.KEY=JSON`` (repeatable) sets a job's option,
e.g. ``--option top.k=50 --option pca.k=5 --option steering.pca=true``. ``--jobs`` mixes the
feature jobs (``stats,top,bins,contexts,top_tokens,lens,ablation``; they need ``--sae``) and
the representation jobs (``steering,pca,diff,probe,scan,mcs``, named as their subcommands, and
``crosscoder``, a crosscoder's model-diffing view, which reads ``--sae`` over its own hooks and
``--paired-store`` for a two-model one; ``actstore.analysis.jobs``), which read ``--hooks``
(default: every hook of the store) and the row groups of the flags of ``cli/_groups.py``
(``--sources`` / ``--labels`` / ``--docs``, ``--positions``, ``--marker``; ``--drop`` defaults
to ``bos,special`` for them and to nothing for the feature jobs) and write ``OUT/<job>/``.
Progress is a bar in rows/s on stderr (the feature pass); the same line run again continues
from the last commit and skips the finished representation jobs. Under ``torchrun`` each rank
takes a share and rank 0 writes the output. ``--html`` then writes the HTML report, with a
section per representation job, to ``OUT/report/index.html``
(``actstore.analysis.report.render``; ``actstore report OUT`` redoes it).
"""

from __future__ import annotations

import dataclasses
import json

from ..analysis.config import AnalyzeConfig, parse_option
from ..errors import AnalysisError
from ._groups import add_group_options, groups_from_args
from ._options import add_options, given

OPTIONS = tuple(f.name for f in dataclasses.fields(AnalyzeConfig) if f.name != "options")
REQUIRED = ("store", "out")
# Group flags analyze has itself (its resume state is OUT/_state).
SHARED = ("drop", "block_rows", "tokenizer", "commit_rows", "state_dir")


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="feature analyses with an SAE and representation analyses of a store into a Zarr group"
    )
    add_options(p, AnalyzeConfig, OPTIONS)
    p.add_argument(
        "--option",
        action="append",
        metavar="JOB.KEY=JSON",
        help="a job's option, repeatable: top.k, bins.samples, contexts.window, lens.t, steering.pca, pca.k, "
        "diff.a, diff.b, scan.vectors, mcs.other, crosscoder.bins, ...",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--html", action="store_true", help="also write the HTML report to OUT/report/index.html")
    p.add_argument(
        "--tokenizer",
        help="HF tokenizer folder to decode tokens in the report and for --marker (default: the --model folder's)",
    )
    add_group_options(p, default_sources=True, shared=SHARED)
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    import torch.distributed as dist

    from .._dist import init_if_launched
    from ..analysis import JOBS, run_all
    from ..analysis.jobs import split_jobs
    from ..analysis.output import read_attrs
    from ..analysis.report import render
    from ..api import open as open_store

    opts = given(args, OPTIONS)
    missing = [k for k in REQUIRED if k not in opts]
    if missing:
        raise AnalysisError(f"missing {', '.join('--' + m for m in missing)}")
    job_opts: dict[str, dict] = {}
    for text in args.option or []:
        job, key, value = parse_option(text)
        job_opts.setdefault(job, {})[key] = value
    cfg = AnalyzeConfig(**opts, options=job_opts)
    kwargs = cfg.to_run_kwargs()
    feat, rep = split_jobs(kwargs["jobs"])
    if cfg.sae is None and (
        feat or "mcs" in rep or "crosscoder" in rep or ("scan" in rep and rep["scan"]["vectors"] is None)
    ):
        raise AnalysisError("missing --sae")
    if set(rep) - {"mcs"}:
        kwargs["store"] = open_store(cfg.store)
        kwargs["groups"] = groups_from_args(kwargs["store"], args)
    joined = init_if_launched()
    try:
        out = run_all(**kwargs, progress=not args.no_progress)
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
        "rows_seen": attrs.get("rows_seen"),
        "m": attrs["sae"]["m"] if "sae" in attrs else None,
        "hook": attrs.get("hook"),
        "target": attrs.get("target"),
        "jobs": list(attrs["jobs"]),
        "summary": attrs.get("summary", {}),
        "represent": {j: str(out / j) for j in attrs["jobs"] if j not in JOBS},
    }
    if args.html:
        summary["report"] = str(render(out, out / "report", tokenizer=args.tokenizer))
    if args.json:
        print(json.dumps(summary))
    else:
        if summary["rows_seen"] is not None:
            stats = summary["summary"].get("stats", {})
            extra = f", {stats['dead']} dead, {stats['dense']} dense" if "dead" in stats else ""
            feats = ", ".join(j for j in summary["jobs"] if j in JOBS)
            into = f" (a transcoder into {summary['target']})" if summary["target"] else ""
            print(
                f"analysed {summary['rows_seen']:,} rows of {summary['hook']}{into} with {summary['m']} latents "
                f"({feats}{extra}) into {out}"
            )
        for job, path in summary["represent"].items():
            print(f"{job}: {path}" + (_crosscoder_line(read_attrs(out / job)) if job == "crosscoder" else ""))
        if args.html:
            print(f"report: {summary['report']}")
    return 0


def _crosscoder_line(a: dict) -> str:
    """`` (explained variance A 87.7%, B 86.7%; 120 specific to A, 98 to B, 410 between, 12 dead)``."""
    ev = ", ".join(f"{k} {100 * v:.1f}%" for k, v in a["ev"].items())
    c = a["classes"]
    spec = ", ".join(f"{n} to {k}" for k, n in c["specific"].items())
    return f" (explained variance {ev}; specific: {spec}; {c['between']} between, {a['dead']} dead)"
