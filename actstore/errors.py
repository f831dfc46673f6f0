"""Every exception actstore raises. Each message is one line naming the cause and what to do.

``ActstoreError`` is the base of all of them; subclasses also inherit the builtin that is
their contract (``ValueError`` for bad values, ``KeyError`` for unknown names), so callers
that catch the builtin keep working. ``actstore.store.errors`` re-exports the store's.
"""


class ActstoreError(Exception):
    """Any failure that actstore reports: the CLI prints it as ``actstore: <message>`` and exits 1."""


class StoreError(ActstoreError):
    """Any problem with a store: missing, unreadable, or refused."""


class MissingObjectError(StoreError, FileNotFoundError):
    """A key the storage does not hold (a store that is not there yet, or a missing object)."""


class FormatVersionError(StoreError):
    """The store was written in a format version this actstore does not read."""


class CorruptDataError(StoreError):
    """A chunk, shard or record that the manifest says is committed is missing, short, malformed or fails to decode."""


class AppendError(StoreError, ValueError):
    """Rows given to a writer do not match the store's schema (hooks, shapes, dtypes)."""


class DTypeError(StoreError, ValueError):
    """A storage dtype name that actstore does not know (``actstore.store.format.parse_dtype``)."""


class UnknownHookError(StoreError, KeyError):
    """A hook name that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CaptureError(StoreError):
    """A capture cannot start or go on: bad hook names, data, options, or a failed write."""


class LoaderError(StoreError, ValueError):
    """A loader cannot start or resume: bad options, no rows, or a state that does not fit."""


class SAEError(ActstoreError, ValueError):
    """An SAE cannot be built, trained, loaded or converted: bad options, weights or files."""


class SAEFileError(SAEError, FileNotFoundError):
    """An SAE folder, checkpoint or weight file that is missing."""


class AnalysisError(ActstoreError, ValueError):
    """An analysis cannot run: a bad SAE, hook, latent, row selection, store or output folder.

    Defined here rather than in ``actstore.analysis`` so that the command line can name it
    without importing the analyses (and torch); ``actstore.analysis.AnalysisError`` is this class."""


class ModelError(CaptureError):
    """A model that cannot be loaded, a hook spec that names no module, or a hook that gives no tensor.

    A ``CaptureError`` too, since capture was its first user and callers catch that."""


class DependencyError(ActstoreError, ImportError):
    """An optional package that a feature needs is not installed; the message names the pip command."""


class IntegrationError(ActstoreError, ValueError):
    """actstore and another tool (SAELens, dictionary_learning, nnsight, datasets) disagree: a store
    hook's width that differs from the tool's config, or a module path the tool's model lacks."""
