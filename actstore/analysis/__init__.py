"""``actstore.analysis``: feature analyses over a whole store, as one streaming pass.

- :func:`run` (store, SAE, jobs, out): reads the selected rows in store order in blocks,
  encodes each block once with the SAE and feeds every job; resumable after any crash
  (byte-identical output), split across ranks with an exact merge. See ``_run.py``.
- Jobs (:data:`JOBS`), one file each: ``stats`` (feature_stats.py), ``top`` (top.py),
  ``bins`` (bins.py), ``contexts`` (contexts.py), ``top_tokens`` (top_tokens.py), ``lens``
  (lens.py) and ``ablation`` (ablation.py), which need ``model=``.
- :class:`AnalyzeConfig`: every option of a run, as ``actstore analyze`` takes them.
- :func:`run_all` (store, jobs, out, sae=, hooks=, groups=, ...): the feature jobs and the
  representation jobs below (:data:`REPR_JOBS`: steering, pca, diff, probe, scan, mcs,
  crosscoder) into one folder, each representation result in ``out/<job>/``, resumable job by
  job (``jobs.py``); what ``actstore analyze`` runs.
- :func:`open` (path) -> :class:`Analysis`, per-latent views of a finished output (a Zarr v3
  group; layout in docs/FORMAT.md, "Analysis output").

Representation analyses (no SAE; several hooks in one pass, ``_rows.py``):

- :func:`row_groups` (``groups.resolve``): which rows, in which named groups (capture
  sources, a label table, document lists) and at which positions (all, last, after_prompt);
- :func:`steering_vectors` -> :class:`SteeringVectors` (steering.py): mean(pos) - mean(neg)
  per hook, paired PCA, AUROC, cosine across layers, logit lens, top rows with contexts;
  exports to the steering-vectors and repeng formats;
- :func:`steer` (steer.py): add them to a model after the prompt, during generate or a forward;
- :func:`pca` -> :class:`PCA` (pca.py), :func:`principal_angles`; :func:`layer_diff` ->
  :class:`LayerDiff` (layer_diff.py); :func:`probes` -> :class:`Probes` (probes.py);
  :func:`mcs` and :func:`neighbours` (dictionary.py, two SAEs, no store); :func:`scan` ->
  :class:`Scan` (scan.py): projections of the rows on any vectors; :func:`steering_between`
  (two_stores.py): mean(store B) - mean(store A); :func:`crosscoder_diff` ->
  :class:`CrosscoderDiff` (crosscoder_diff.py): a crosscoder's decoder norms per block (the
  relative norm of two models' blocks, classes, most specific latents) and explained variance
  per block.
"""

from typing import TYPE_CHECKING

from .. import _lazy

if TYPE_CHECKING:  # the same names, imported at once: for type checkers and the API docs (mkdocstrings
    # reads the source statically and follows these imports; they never run)
    from ..errors import AnalysisError
    from ._pass import Batch, Reducer
    from ._run import JOBS, run
    from .bins import Bins, EqualWidthBins
    from .config import AnalyzeConfig
    from .crosscoder_diff import CrosscoderDiff, crosscoder_diff
    from .dictionary import MCS, mcs, neighbours
    from .feature_stats import FeatureStats
    from .groups import RowGroups, row_groups
    from .jobs import ALL_JOBS, REPR_JOBS, run_all
    from .layer_diff import LayerDiff, layer_diff
    from .output import Analysis, LatentView
    from .pca import PCA, pca, principal_angles
    from .probes import Probes, probes
    from .scan import Scan, scan
    from .steer import steer
    from .steering import SteeringVectors, steering_vectors
    from .top import Top
    from .top_tokens import TopTokens
    from .two_stores import steering_between

# Imported on first use (actstore/_lazy.py): the command line reads AnalyzeConfig and the
# group flags' choices from here without importing the analyses (and torch).
_lazy.attach(
    __name__,
    {
        "..errors": ("AnalysisError",),
        "._pass": ("Batch", "Reducer"),
        "._run": ("JOBS", "run"),
        ".bins": ("Bins", "EqualWidthBins"),
        ".config": ("AnalyzeConfig",),
        ".crosscoder_diff": ("CrosscoderDiff", "crosscoder_diff"),
        ".dictionary": ("MCS", "mcs", "neighbours"),
        ".feature_stats": ("FeatureStats",),
        ".groups": ("RowGroups", "row_groups"),
        ".jobs": ("ALL_JOBS", "REPR_JOBS", "run_all"),
        ".layer_diff": ("LayerDiff", "layer_diff"),
        ".output": ("Analysis", "LatentView"),
        ".pca": ("PCA", "pca", "principal_angles"),
        ".probes": ("Probes", "probes"),
        ".scan": ("Scan", "scan"),
        ".steer": ("steer",),
        ".steering": ("SteeringVectors", "steering_vectors"),
        ".top": ("Top",),
        ".top_tokens": ("TopTokens",),
        ".two_stores": ("steering_between",),
    },
)


def open(path):  # noqa: A001 - the public name, like actstore.open
    """The finished analysis at ``path``: an :class:`Analysis`, with per-latent views (``a[i].top``, ...)."""
    from .output import Analysis

    return Analysis(path)


__all__ = [
    "run",
    "run_all",
    "open",
    "JOBS",
    "REPR_JOBS",
    "ALL_JOBS",
    "AnalyzeConfig",
    "Analysis",
    "LatentView",
    "AnalysisError",
    "Reducer",
    "Batch",
    "FeatureStats",
    "Top",
    "Bins",
    "EqualWidthBins",
    "TopTokens",
    "RowGroups",
    "row_groups",
    "SteeringVectors",
    "steering_vectors",
    "steer",
    "PCA",
    "pca",
    "principal_angles",
    "LayerDiff",
    "layer_diff",
    "Probes",
    "probes",
    "MCS",
    "mcs",
    "neighbours",
    "Scan",
    "scan",
    "steering_between",
    "CrosscoderDiff",
    "crosscoder_diff",
]
