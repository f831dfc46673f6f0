"""Capture: hooks on any PyTorch transformer -> capture kernel -> async pipeline -> store.

Modules: ``hooks`` (resolving specs, early-stopping forwards), ``models`` (HF,
TransformerLens, any nn.Module), ``data`` (documents as token ids), ``plan`` (windows,
batches, budget, ranks), ``pipeline`` (staging, pinned ring, writer thread), ``runner``
(``capture()``: resume, progress, Ctrl-C).
"""

from .hooks import HookPoint, resolve_hooks
from .runner import capture

__all__ = ["capture", "resolve_hooks", "HookPoint"]
