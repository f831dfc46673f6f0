"""The row-group flags shared by ``steering``, ``pca``, ``diff`` and ``probe``: which rows,
in which groups (``--sources`` / ``--labels`` / ``--docs``), at which positions."""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis import AnalysisError
from ..analysis.groups import POSITIONS, resolve


def add_group_options(p, default_sources: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sources", help="comma list of the capture's named sources (--sources all: every one)")
    g.add_argument("--labels", help="document label table: CSV, JSON or Parquet with columns doc,label")
    g.add_argument("--docs", help='JSON file {"group": [doc ids], ...}')
    p.add_argument("--positions", default="all", choices=POSITIONS, help="which tokens of each document")
    p.add_argument("--marker", help="prompt marker text for --positions after_prompt (tokenized with --tokenizer)")
    p.add_argument("--marker-ids", help="prompt marker as comma token ids")
    p.add_argument("--tokenizer", help="HF tokenizer folder for --marker (default: --model's)")
    p.add_argument("--drop", default="bos,special", help="leave out rows with these flags (default bos,special)")
    p.add_argument("--block-rows", type=int, default=4096, help="rows read at once")
    p.set_defaults(default_sources=default_sources)


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
    return resolve(
        store, positions=args.positions, marker=marker(args), drop_flags=args.drop, block_rows=args.block_rows, **kw
    )
