"""The one device the kernel tests run on: ``"cuda"`` where a GPU is present, else
``"cpu"`` (Triton kernels then run in its interpreter, switched on in tests/conftest.py).

Tests that run on this device carry ``@pytest.mark.gpu`` so that a GPU session selects
them with ``pytest -m gpu`` (benchmarks/gpu_session.sh); without a GPU they still run, on
the CPU. Test bodies take the ``device`` fixture; module-level code (inputs built at
import, parametrize lists) imports ``DEVICE`` from here, the same value.
"""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
