"""Streaming stored activations to training: ``ActivationLoader`` and its DataLoader wrapper.

- plan.py     which rows each rank yields, in which order, per epoch (pure arithmetic)
- fetch.py    whole-chunk reads through the shard index, decoded in a thread pool
- loader.py   ActivationLoader: producer thread, native gather, device copy, dequant kernel
- dataset.py  ActivationDataset: a torch IterableDataset for DataLoader workers
"""

from .dataset import ActivationDataset
from .loader import ActivationLoader, parse_drop_flags
from .plan import Block, EpochPlan, make_blocks

__all__ = ["ActivationLoader", "ActivationDataset", "EpochPlan", "Block", "make_blocks", "parse_drop_flags"]
