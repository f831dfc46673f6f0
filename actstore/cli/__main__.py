"""``python -m actstore.cli`` (what ``torchrun -m actstore.cli`` runs): the ``actstore`` command."""

import sys

from . import main

sys.exit(main())
