"""The row-group flags shared by ``steering``, ``pca``, ``diff``, ``probe``, ``scan`` and
``analyze``: which rows, in which groups (``--sources`` / ``--labels`` / ``--docs``), at which
positions; and where the run's resume state lives (``--state-dir``, default ``OUT/_state``,
removed once the output is written). A command that has its own ``--drop``, ``--block-rows``,
``--tokenizer``, ``--commit-rows`` or state folder (analyze) passes them in ``shared``; left unset
there (None), the groups drop ``bos,special`` rows and read 4096 rows at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..analysis.config import COMMIT_ROWS, POSITIONS
from ..errors import AnalysisError

DROP = "bos,special"
BLOCK_ROWS = 4096


def add_group_options(p, default_sources: bool = True, shared: tuple[str, ...] = ()) -> None:
    """Add the group flags to parser ``p``, but not those of ``shared`` (the command's own)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sources", help="comma list of the capture's named sources (--sources all: every one)")
    g.add_argument("--labels", help="document label table: CSV, JSON or Parquet with columns doc,label")
    g.add_argument("--docs", help='JSON file {"group": [doc ids], ...}')
    p.add_argument("--positions", default="all", choices=POSITIONS, help="which tokens of each document")
    p.add_argument("--marker", help="prompt marker text for --positions after_prompt (tokenized with --tokenizer)")
    p.add_argument("--marker-ids", help="prompt marker as comma token ids")
    if "tokenizer" not in shared:
        p.add_argument("--tokenizer", help="HF tokenizer folder for --marker (default: --model's)")
    if "drop" not in shared:
        p.add_argument("--drop", default=DROP, help=f"leave out rows with these flags (default {DROP})")
    if "block_rows" not in shared:
        p.add_argument("--block-rows", type=int, default=BLOCK_ROWS, help="rows read at once")
    if "state_dir" not in shared:
        p.add_argument("--state-dir", help="resume state, kept until the output is written (default: OUT/_state)")
    if "commit_rows" not in shared:
        p.add_argument("--commit-rows", type=int, default=COMMIT_ROWS, help="store rows between state commits")
    p.set_defaults(default_sources=default_sources)


def state_dir(args, part: str | None = None) -> Path:
    """Where the analysis commits its state: ``--state-dir`` or ``OUT/_state`` (``/part`` for a second run)."""
    root = Path(args.state_dir) if args.state_dir else Path(args.out) / "_state"
    return root / part if part else root


def drop_state(args) -> None:
    """The output is written: the resume state is no longer needed."""
    shutil.rmtree(state_dir(args), ignore_errors=True)


def marker(args) -> list[int] | None:
    if args.marker_ids:
        try:
            return [int(x) for x in args.marker_ids.split(",") if x.strip()]
        except ValueError:
            raise AnalysisError(f"--marker-ids {args.marker_ids!r} is not a comma list of token ids") from None
    if args.marker is None:
        return None
    src = args.tokenizer or getattr(args, "model", None)
    if src is None:
        raise AnalysisError("--marker is text: pass --tokenizer (or --model) to tokenize it, or --marker-ids")
    from transformers import AutoTokenizer  # deferred: only a text marker needs a tokenizer

    return list(AutoTokenizer.from_pretrained(src)(args.marker, add_special_tokens=False)["input_ids"])


def groups_from_args(store, args):
    kw = {}
    if args.labels:
        kw["labels"] = args.labels
    elif args.docs:
        kw["docs"] = json.loads(Path(args.docs).read_text())
    elif args.sources and args.sources != "all":
        kw["sources"] = [s.strip() for s in args.sources.split(",")]
    elif args.sources == "all" or (args.default_sources and store.sources):
        kw["sources"] = True
    from ..analysis.groups import resolve  # deferred: numpy and the store, which building the parser must not load

    drop = args.drop if args.drop is not None else DROP
    block_rows = args.block_rows if args.block_rows is not None else BLOCK_ROWS
    return resolve(store, positions=args.positions, marker=marker(args), drop_flags=drop, block_rows=block_rows, **kw)
