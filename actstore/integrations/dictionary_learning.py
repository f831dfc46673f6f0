"""dictionary_learning (PyPI ``dictionary-learning``) trainers fed from an actstore store.

    from dictionary_learning.trainers.top_k import TopKTrainer
    from actstore.integrations.dictionary_learning import DictionaryLearningBuffer, train_dictionary

    buf = DictionaryLearningBuffer("acts", "model.layers.3", 4096, device="cuda", seed=0)
    cfg = dict(trainer=TopKTrainer, steps=10_000, activation_dim=buf.activation_dim, dict_size=16384, k=32,
               layer=3, lm_name="smollm2", device="cuda")
    train_dictionary(buf, [cfg], steps=10_000, save_dir="dl_out")     # dictionary_learning.training.trainSAE

:class:`DictionaryLearningBuffer` is what its trainers take as their activation buffer, in
place of its ``ActivationBuffer`` (which runs the model through nnsight): an iterator whose
``next()`` gives a ``[batch_size, d]`` float batch on ``device``, with the ``config`` dict that
``trainSAE`` writes beside each dictionary and ``d_submodule``/``activation_dim``. Behind it
is an :class:`actstore.ActivationLoader` (shuffled by a seed, ``drop_last``, endless by
default, ``normalize`` as the loader's, resumable with ``state_dict``/``load_state_dict``).
:func:`train_dictionary` checks every trainer config's ``activation_dim`` against the
store's width (a one-line IntegrationError) and runs ``trainSAE`` on the buffer's device.

dictionary_learning has no transcoders (its dictionaries reconstruct their own input), so a
source/target pair of hooks is a one-line IntegrationError pointing at ``actstore train --arch
transcoder``.

dictionary-learning 0.1.0 pins ``nnsight<0.4`` for its own buffer; install it with
``pip install --no-deps dictionary-learning`` beside a current nnsight (its trainers do not
use nnsight).
"""

from __future__ import annotations

import torch

from ..errors import IntegrationError
from ..loader.loader import ActivationLoader
from ..store.reader import Store
from ._common import check_width, one_hook, require


class DictionaryLearningBuffer:
    """An activation buffer for dictionary_learning trainers; see the module docstring."""

    def __init__(
        self,
        store: Store | str,
        hook: str,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        normalize: str | None = None,
        seed: int = 0,
        epochs: int | None = None,
        drop_flags=None,
        buffer_rows: int = 65536,
        threads: int | None = None,
    ):
        self.hook = one_hook(hook, "dictionary_learning", "it has no transcoders")
        self.loader = ActivationLoader(
            store,
            hook,
            batch_size,
            shuffle=True,
            seed=seed,
            epochs=epochs,
            device=device,
            dtype=dtype,
            normalize=normalize,
            drop_flags=drop_flags,
            drop_last=True,
            buffer_rows=buffer_rows,
            threads=threads,
        )
        self.device = str(self.loader.device)
        self.d_submodule = self.activation_dim = self.loader.store._hook(hook).d
        self._it = None

    @property
    def config(self) -> dict:
        """What ``trainSAE`` saves as the buffer's config next to each dictionary (JSON)."""
        return {
            "source": "actstore",
            "store": str(self.loader.store.path),
            "hook": self.hook,
            "d_submodule": self.d_submodule,
            "out_batch_size": self.loader.batch_size,
            "seed": self.loader.seed,
            "normalize": self.loader.normalize,
            "scale_factor": self.loader.scale_factors.get(self.hook),
            "device": self.device,
        }

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)

    def check(self, trainer_configs: list[dict]) -> None:
        """IntegrationError (one line) when a config's ``activation_dim`` is not the hook's width."""
        for i, cfg in enumerate(trainer_configs):
            if "activation_dim" not in cfg:
                raise IntegrationError(
                    f"trainer config {i} has no activation_dim; set activation_dim={self.d_submodule}"
                )
            check_width(
                self.loader.store,
                self.hook,
                cfg["activation_dim"],
                f"dictionary_learning (trainer {i})",
                "activation_dim",
            )

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None

    def close(self) -> None:
        self._it = None
        self.loader.close()


def train_dictionary(buffer: DictionaryLearningBuffer, trainer_configs: list[dict], steps: int, **train_kwargs):
    """``dictionary_learning.training.trainSAE(buffer, trainer_configs, steps, device=buffer.device, **train_kwargs)``
    after checking every config's ``activation_dim`` against the store."""
    training = require("dictionary_learning.training", "--no-deps dictionary-learning")
    buffer.check(trainer_configs)
    train_kwargs.setdefault("device", buffer.device)
    return training.trainSAE(buffer, trainer_configs, steps, **train_kwargs)
