"""actstore as the data layer of the tools people already use.

Each module adapts a store (or a model capture) to one peer package, which it imports only
when called, so ``import actstore.integrations`` costs nothing and needs none of them:

- ``torch_rows``: :class:`RowDataset`, a map-style ``torch.utils.data.Dataset`` over a
  store's rows (``ds[i]`` is row ``i``; a ``DataLoader`` fetches a batch in one read);
- ``hf_datasets``: :func:`to_hf_dataset`, a store as a ``datasets.IterableDataset`` of rows,
  sharded by row ranges (``DataLoader`` workers and ``.shuffle()`` work per shard);
- ``saelens``: :class:`SAELensDataProvider` and :func:`train_saelens`: SAELens' own
  ``SAETrainer`` (any architecture) fed by :class:`actstore.ActivationLoader` (shuffling,
  normalization, resume);
- ``dictionary_learning``: :class:`DictionaryLearningBuffer`, the activation buffer its
  trainers and ``trainSAE`` take (``next()`` gives ``[B, d]`` on the device), and
  :func:`train_dictionary`;
- ``nnsight``: :func:`capture` from an nnsight ``TransformersModel`` (or the deprecated
  ``LanguageModel``), hooks named as nnsight users write them (``model.transformer.h[5].output``,
  ``.input``, or the Envoy itself).

A store hook whose width differs from the peer's config, or a module path the model lacks,
is a one-line :class:`actstore.errors.IntegrationError`; a missing peer package is a
:class:`actstore.errors.DependencyError` naming the pip command.
"""

from .torch_rows import RowDataset

__all__ = ["RowDataset"]
