"""AnalyzeConfig: every option of one ``actstore analyze`` run, frozen; the CLI's flags.

Each field is one flag (``--block-rows`` for ``block_rows``; type, default and help from
here, through ``actstore/cli/_options.py``). ``to_run_kwargs()`` turns it into the
arguments of :func:`actstore.analysis.run_all` (without the row groups, which the CLI
resolves from the flags of ``cli/_groups.py``): ``rows`` ``"A:B"`` (either side may be left
out) becomes ``slice(A, B)`` of store rows, ``jobs`` a comma list, ``options`` per-job
settings ``{job: {key: value}}`` (``--option top.k=50`` on the command line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AnalysisError

# Store rows between commits of the representation jobs. A commit rewrites the pass's
# fixed-size state (sums, top tables; PCA's d x d float64 moments per hook and tree level) and
# appends its new rows, so commits stay rare next to the reading (cost measured by
# benchmarks/bench_resume.py). Here, with no numpy import, because the command line's flags
# show it (cli/_groups.py).
COMMIT_ROWS = 1 << 16
# The row positions of each document a row group keeps (groups.py; the CLI's --positions).
POSITIONS = ("all", "last", "after_prompt")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class AnalyzeConfig:
    store: str = field(metadata=_h("the store to analyse"))
    out: str = field(metadata=_h("output folder (a Zarr v3 group); rerun the same line to resume"))
    sae: str | None = field(
        default=None,
        metadata=_h(
            "SAE folder written by actstore train (OUT or OUT/sae) or actstore.sae.save (the feature jobs, mcs, "
            "scan of decoder rows)"
        ),
    )
    hook: str | None = field(default=None, metadata=_h("the hook the SAE reads (default: the SAE's own hook)"))
    paired_store: str | None = field(
        default=None,
        metadata=_h(
            "crosscoder job, a two-model crosscoder: the second model's store, captured on the same tokens "
            "(as actstore train --paired-store)"
        ),
    )
    model: str | None = field(
        default=None,
        metadata=_h("local HF causal LM folder or python:module:function (lens, ablation; steering and diff's lens)"),
    )
    jobs: str = field(
        default="stats,top,bins",
        metadata=_h(
            "comma list of feature jobs stats,top,bins,contexts,top_tokens,lens,ablation and representation "
            "jobs steering,pca,diff,probe,scan,mcs,crosscoder"
        ),
    )
    hooks: str | None = field(
        default=None, metadata=_h("comma list of hooks the representation jobs read (default: every hook)")
    )
    positive: str | None = field(
        default=None, metadata=_h("steering and probe: the positive group (default: the first)")
    )
    negative: str | None = field(
        default=None, metadata=_h("steering and probe: the negative group (default: the second)")
    )
    rows: str | None = field(default=None, metadata=_h("store rows A:B to analyse (A: or :B leave a side open)"))
    drop: str | None = field(
        default=None,
        metadata=_h("leave out rows with these flags: bos,special,pad (unset: none, and bos,special for the groups)"),
    )
    latents: str | None = field(default=None, metadata=_h("analyse only these latents: ids and ranges, e.g. 0-127,300"))
    block_rows: int = field(default=4096, metadata=_h("rows read and encoded at once"))
    commit_rows: int = field(default=1 << 20, metadata=_h("rows between state commits (how much a crash loses)"))
    device: str | None = field(default=None, metadata=_h("auto | cpu | cuda"))
    options: dict = field(default_factory=dict)  # {job: {key: value}}, from --option JOB.KEY=JSON

    def __post_init__(self):
        for name in ("block_rows", "commit_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AnalysisError(f"{name} must be a positive integer, got {v!r}")

    def row_slice(self) -> slice | tuple[int, int] | None:
        """None (all rows), ``(A, B)`` (checked against the store), or a slice with an open side."""
        if self.rows is None:
            return None
        a, sep, b = self.rows.partition(":")
        try:
            if not sep:
                raise ValueError
            lo, hi = (int(x) if x.strip() else None for x in (a, b))
            return (lo, hi) if lo is not None and hi is not None else slice(lo, hi)
        except ValueError:
            raise AnalysisError(f"rows {self.rows!r} is not A:B (store rows, e.g. 0:100000 or 5000:)") from None

    def job_spec(self) -> dict[str, dict]:
        names = [j.strip() for j in self.jobs.split(",") if j.strip()]
        unknown = sorted(set(self.options) - set(names))
        if unknown:
            raise AnalysisError(f"options given for job(s) {unknown} that are not in --jobs {self.jobs}")
        return {j: dict(self.options.get(j, {})) for j in names}

    def sae_path(self) -> Path | None:
        """``sae`` itself, or its ``sae/`` subfolder when it is a training run's output folder (None: no SAE)."""
        if self.sae is None:
            return None
        p = Path(self.sae)
        return p / "sae" if not (p / "config.json").exists() and (p / "sae" / "config.json").exists() else p

    def to_run_kwargs(self) -> dict:
        return {
            "store": self.store,
            "sae": self.sae_path(),
            "jobs": self.job_spec(),
            "out": self.out,
            "hook": self.hook,
            "model": self.model,
            "paired_store": self.paired_store,
            "hooks": self.hooks,
            "positive": self.positive,
            "negative": self.negative,
            "rows": self.row_slice(),
            "drop_flags": self.drop,
            "latents": self.latents,
            "block_rows": self.block_rows,
            "commit_rows": self.commit_rows,
            "device": self.device,
        }


def parse_option(text: str) -> tuple[str, str, object]:
    """``"top.k=50"`` -> ``("top", "k", 50)``; the value is JSON, or a plain string when it is not."""
    key, eq, val = text.partition("=")
    job, dot, name = key.strip().partition(".")
    if not eq or not dot or not job or not name:
        raise AnalysisError(f"--option {text!r} is not JOB.KEY=VALUE (e.g. top.k=50)")
    try:
        value = json.loads(val)
    except ValueError:
        value = val
    return job, name, value
