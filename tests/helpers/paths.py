"""Where things are, for tests in any folder of tests/: the repository root, tests/helpers/
(the subprocess scripts: kill_writer.py, capture_job.py, train_run.py, loader_rank.py,
analysis_kill_job.py) and benchmarks/."""

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
TESTS = HELPERS.parent
ROOT = TESTS.parent
BENCHMARKS = ROOT / "benchmarks"
