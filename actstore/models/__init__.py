"""Models: loading them, naming their hook sites, recording and editing activations.

What capture, analysis, ablation, steering and the logit lens share; none of it imports
``actstore.capture``. Modules: ``hooks`` (specs -> :class:`HookSite`, finding the tensor a
module gives), ``recorder`` (:class:`HookRecorder`: record at sites, stop the forward
early), ``intervention`` (:class:`Intervention`: add to or replace an activation at chosen
positions), ``loading`` (:func:`prepare_model`: HF folder, ``python:`` factory, TransformerLens
or any ``nn.Module`` -> how to call it), ``norms`` (:func:`~actstore.models.norms.detect_norms`:
whether each hook is a normalization's output or input, found in one forward).
"""

from .hooks import HookPoint, HookSite, first_tensor, replace_first_tensor, resolve_hooks
from .intervention import Intervention
from .loading import LoadedModel, prepare_model
from .recorder import HookRecorder, StopForward

__all__ = [
    "HookSite",
    "HookPoint",
    "resolve_hooks",
    "first_tensor",
    "replace_first_tensor",
    "HookRecorder",
    "StopForward",
    "Intervention",
    "LoadedModel",
    "prepare_model",
]
