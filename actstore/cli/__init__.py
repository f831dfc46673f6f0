"""The ``actstore`` command line: ``capture``, ``info``, ``demo``, ``train``, ``analyze``, ``report``,
``bench``, and the representation analyses ``steering``, ``steer``, ``pca``, ``diff``, ``probe``,
``mcs``, ``scan``.

One module per command (``capture.py``, ``info.py``, ``demo.py``, ``train.py``, ``analyze.py``,
``report.py``, ``bench.py``, ``steering.py``, ``steer.py``, ``pca.py``, ``diff.py``, ``probe.py``,
``mcs.py``, ``scan.py``; ``_groups.py`` holds the row-group flags they share), each with
``register(subparsers)`` and ``run(args) -> exit code``; a new command is a new module added to
``COMMANDS``. ``python -m actstore.cli`` runs :func:`main`, as does the ``actstore`` console script.

Exit codes: 0 on success; 1 on any failure, printed by the one handler here as a single
line ``actstore: <message>`` on stderr (every ActstoreError, and the ValueError/OSError a
command lets through); 2 only for usage errors, from argparse; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ActstoreError
from . import analyze, bench, capture, demo, diff, info, mcs, pca, probe, report, scan, steer, steering, train
from .info import format_info

COMMANDS = (info, demo, capture, train, analyze, report, bench, steering, steer, pca, diff, probe, mcs, scan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actstore", description="Capture, store and stream transformer activations.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        return args.fn(args)
    except (ActstoreError, ValueError, OSError) as e:
        # ValueError/OSError: what a command's library call raises for bad values or files it was given.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"actstore: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("actstore: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "format_info", "COMMANDS"]
