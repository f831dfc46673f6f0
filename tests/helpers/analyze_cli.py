"""torchrun child (or a plain process) that runs ``actstore ARGS...`` in-process, as the
console script does: the rank test of ``actstore analyze`` with representation jobs
(tests/analysis/test_analyze_repr.py).

usage: [torchrun --nproc_per_node W] analyze_cli.py analyze --store S ...
"""

import sys

from actstore.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
