"""Capture: hooks on any PyTorch transformer -> capture kernel -> async pipeline -> store.

Modules: ``config`` (:class:`CaptureConfig`, every option of a run), ``data`` (documents
as token ids), ``plan`` (windows, batches, budget, ranks), ``pipeline`` (staging, pinned
ring, writer thread), ``runner`` (``capture()``: resume, progress, Ctrl-C). Hook
resolution, recording and model loading live in :mod:`actstore.models`; the names capture
exposed before are re-exported here.
"""

from typing import TYPE_CHECKING

from .. import _lazy

if TYPE_CHECKING:  # the same names, imported at once: for type checkers and the API docs (mkdocstrings
    # reads the source statically and follows these imports; they never run)
    from ..models import HookPoint, HookRecorder, HookSite, prepare_model, resolve_hooks
    from .config import CaptureConfig
    from .runner import capture

# Imported on first use (actstore/_lazy.py): ``actstore capture --help`` reads CaptureConfig
# without importing the capture pipeline (and torch).
_lazy.attach(
    __name__,
    {
        "..models": ("HookPoint", "HookRecorder", "HookSite", "prepare_model", "resolve_hooks"),
        ".config": ("CaptureConfig",),
        ".runner": ("capture",),
    },
)

__all__ = ["capture", "CaptureConfig", "resolve_hooks", "HookSite", "HookPoint", "HookRecorder", "prepare_model"]
