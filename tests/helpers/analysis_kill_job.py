"""Child process for the SIGKILL test: runs an analysis committing every block and stops
itself (SIGSTOP) right after commit ``stop_at``, so the parent can SIGKILL it at a known
point. ``stop_at`` 0 never stops.

usage: python analysis_kill_job.py STORE OUT STOP_AT
"""

import os
import signal
import sys

from analysis_store import BLOCK, JOBS, relu_sae

import actstore.analysis as an


def main() -> None:
    store, out, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def on_commit(seq: int, rows: int) -> None:
        if seq == stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)

    an.run(store, relu_sae(), JOBS, out, block_rows=BLOCK, commit_rows=1, on_commit=on_commit)


if __name__ == "__main__":
    main()
