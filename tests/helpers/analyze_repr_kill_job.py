"""Child process for the SIGKILL test of the representation jobs (test_analyze_repr.py): runs
``steering,pca,probe`` over the planted store (tests/helpers/repr_store.py) and stops itself
(SIGSTOP) right after job ``STOP_AFTER`` is written, or, for ``STOP_AFTER`` = ``PASS:SEQ``,
right after commit SEQ of a job's pass PASS (inside the job: every block commits), so the parent
can SIGKILL it there.

usage: python analyze_repr_kill_job.py STORE OUT STOP_AFTER
"""

import os
import signal
import sys

import actstore.analysis as an

JOBS = {"steering": {"top_k": 3}, "pca": {"k": 3, "sample": 20}, "probe": {"epochs": 1}}
BLOCK = 97


def main() -> None:
    store, out, stop_after = sys.argv[1], sys.argv[2], sys.argv[3]

    def on_job(job: str) -> None:
        if job == stop_after:
            os.kill(os.getpid(), signal.SIGSTOP)

    def on_pass_commit(name: str, seq: int, rows: int) -> None:
        if f"{name}:{seq}" == stop_after:
            os.kill(os.getpid(), signal.SIGSTOP)

    an.run_all(
        store, JOBS, out, hooks="a,b", block_rows=BLOCK, on_job=on_job, on_pass_commit=on_pass_commit, commit_rows=1
    )


if __name__ == "__main__":
    main()
