"""SAELens' own trainer on activations streamed from an actstore store.

    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from actstore.integrations.saelens import train_saelens

    sae = train_saelens(
        "acts", "blocks.6.hook_resid_post",
        TopKTrainingSAEConfig(d_in=768, d_sae=16384, k=32),            # any SAELens training architecture
        SAETrainerConfig(total_training_samples=50_000_000, train_batch_size_samples=4096, lr=2e-4,
                         device="cuda", n_checkpoints=10, checkpoint_path="ckpts"),
        normalize="mean_norm", seed=0, out="sae_out",
    )                                                                 # rerun the same call to resume

SAELens' ``SAETrainer`` (its optimizer, schedules, dead-feature tracking, checkpoints, wandb
logging) pulls ``next(data_provider)``; here that is :class:`SAELensDataProvider`, an
:class:`actstore.ActivationLoader` running without end (``epochs=None``, ``drop_last``), so
actstore does the shuffling (seeded block permutation plus a shuffle window), the
normalization and the resume:

- **Normalization**: ``normalize="mean_norm"`` scales rows by ``sqrt(d) / mean_norm`` from the
  store's statistics, SAELens' ``expected_average_only_in`` convention, with no batches spent
  estimating it; the factor is folded into the returned SAE (SAELens'
  ``fold_activation_norm_scaling_factor``), which then takes raw activations. Checkpoints hold
  the unfolded weights, as SAELens' own do. Keep the SAE config's ``normalize_activations``
  at ``"none"`` then; ``normalize=None`` leaves it to SAELens.
- **Resume**: each SAELens checkpoint (``n_checkpoints``, and one on Ctrl-C) also gets
  ``actstore_loader.json``, the loader's state; with ``resume=True`` the newest checkpoint
  under ``checkpoint_path`` that has one is loaded (SAELens' trainer state and weights, and the
  loader), and training continues with the batches an uninterrupted run would have seen.
  SAELens saves ``n_training_steps`` one short (before the step counter moves); the resume
  sets it from the samples seen.
- **Held-out split**: ``rows=(start, stop)`` or ``docs=(lo, hi)`` train on only those rows of
  the store (as :class:`actstore.ActivationLoader` takes them), so one store serves a training
  run and an evaluation over the complementary range; a resume keeps the same selection.
- A store hook whose width differs from the config's ``d_in`` is a one-line IntegrationError.
- **Transcoders**: SAELens removed its transcoder training in v6.5.0 (its ``Transcoder``
  classes load and run, they do not train), so a source/target pair of hooks, or a SAELens
  transcoder config (one with ``d_out``), is a one-line IntegrationError pointing at
  ``actstore train --arch transcoder`` and ``actstore.sae.to_saelens``. Matryoshka SAEs train
  here like any SAELens training architecture (``MatryoshkaBatchTopKTrainingSAEConfig``);
  ``actstore.sae.from_saelens`` reads the saved result back as a ``MatryoshkaBatchTopKSAE``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from ..errors import IntegrationError
from ..loader.loader import ActivationLoader
from ..store.reader import Store
from ._common import check_width, no_transcoder, one_hook, require

LOADER_STATE = "actstore_loader.json"
# Why a transcoder cannot go through SAELens' trainer (the one-line refusals say it).
NO_TRANSCODERS = "SAELens removed its transcoder training in v6.5.0"


class SAELensDataProvider:
    """``Iterator[Tensor]``: ``next()`` gives a ``[batch_size, d]`` float batch on ``device``.

    An endless, shuffled, resumable :class:`actstore.ActivationLoader` (``loader``) over one
    hook (``rows=(start, stop)`` / ``docs=(lo, hi)``: only those rows, as the loader takes
    them); SAELens' ``SAETrainer`` takes it as its ``data_provider``. ``save_to_checkpoint`` /
    ``load_from_checkpoint`` write and read the loader state beside a SAELens checkpoint.
    """

    def __init__(
        self,
        store: Store | str,
        hook: str,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        normalize: str | None = "mean_norm",
        seed: int = 0,
        drop_flags=None,
        buffer_rows: int = 65536,
        threads: int | None = None,
        rows: tuple[int, int] | None = None,
        docs: tuple[int, int] | None = None,
    ):
        if normalize not in (None, "mean_norm"):
            raise IntegrationError(
                f"normalize={normalize!r}: SAELens folds a scalar scale into its SAEs; use 'mean_norm' or None"
            )
        self.hook = one_hook(hook, "SAELens", NO_TRANSCODERS)
        self.loader = ActivationLoader(
            store,
            hook,
            batch_size,
            shuffle=True,
            seed=seed,
            epochs=None,
            device=device,
            dtype=dtype,
            normalize=normalize,
            drop_flags=drop_flags,
            drop_last=True,
            buffer_rows=buffer_rows,
            threads=threads,
            rows=rows,
            docs=docs,
        )
        self.d_in = self.loader.store._hook(hook).d
        self._it = None

    @property
    def scaling_factor(self) -> float | None:
        """The ``mean_norm`` factor the rows are multiplied by (None without normalization)."""
        return self.loader.scale_factors.get(self.hook)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)  # stops the running iterator: the next batch comes from `state`
        self._it = None

    def save_to_checkpoint(self, checkpoint_path: Path | str | None) -> None:
        """SAELens' ``save_checkpoint_fn``: the loader state as JSON in the checkpoint folder."""
        if checkpoint_path is None:
            return
        path = Path(checkpoint_path) / LOADER_STATE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        os.replace(tmp, path)

    def load_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        self.load_state_dict(json.loads((Path(checkpoint_path) / LOADER_STATE).read_text()))

    def close(self) -> None:
        self._it = None
        self.loader.close()


def latest_checkpoint(checkpoint_path: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder under ``checkpoint_path`` with the most samples that has a loader state."""
    if checkpoint_path is None or not Path(checkpoint_path).is_dir():
        return None
    found = [p for p in Path(checkpoint_path).iterdir() if (p / LOADER_STATE).is_file()]
    if not found:
        return None

    def samples(p: Path) -> int:
        tail = p.name.rsplit("_", 1)[-1]  # "12345" or "final_12345"
        return int(tail) if tail.isdigit() else -1

    return max(found, key=lambda p: (samples(p), p.name))


def make_saelens_trainer(
    store: Store | str,
    hook: str,
    sae_cfg,
    trainer_cfg,
    *,
    normalize: str | None = "mean_norm",
    seed: int = 0,
    drop_flags=None,
    buffer_rows: int = 65536,
    threads: int | None = None,
    resume: bool = True,
    rows: tuple[int, int] | None = None,
    docs: tuple[int, int] | None = None,
):
    """SAELens' ``SAETrainer`` over a :class:`SAELensDataProvider`, resumed from the newest
    checkpoint when ``resume``; returns ``(trainer, provider)``. :func:`train_saelens` runs it.
    ``rows`` / ``docs``: train on only those rows of the store (see :class:`SAELensDataProvider`)."""
    sae_lens = require("sae_lens", "sae-lens")
    one_hook(hook, "SAELens", NO_TRANSCODERS)
    if getattr(sae_cfg, "d_out", None) is not None:  # SAELens' TranscoderConfig family: inference only
        raise no_transcoder("SAELens", NO_TRANSCODERS, f"a {type(sae_cfg).__name__} (d_out={sae_cfg.d_out})")
    if trainer_cfg.lr_end is None:  # SAELens' runner config fills it in (lr / 10); its trainer asserts it
        trainer_cfg = dataclasses.replace(trainer_cfg, lr_end=trainer_cfg.lr / 10)
    if normalize is not None and getattr(sae_cfg, "normalize_activations", "none") != "none":
        raise IntegrationError(
            f"the SAELens config normalizes activations ({sae_cfg.normalize_activations!r}) and actstore would "
            f"too (normalize={normalize!r}); set normalize_activations='none' in the config, or normalize=None"
        )
    provider = SAELensDataProvider(
        store,
        hook,
        trainer_cfg.train_batch_size_samples,
        device=trainer_cfg.device,
        normalize=normalize,
        seed=seed,
        drop_flags=drop_flags,
        buffer_rows=buffer_rows,
        threads=threads,
        rows=rows,
        docs=docs,
    )
    try:
        check_width(provider.loader.store, hook, sae_cfg.d_in, "SAELens", "d_in")
        sae = sae_lens.TrainingSAE.from_dict(sae_cfg.to_dict()).to(trainer_cfg.device)
        trainer = sae_lens.SAETrainer(
            cfg=trainer_cfg, sae=sae, data_provider=provider, save_checkpoint_fn=provider.save_to_checkpoint
        )
        ckpt = latest_checkpoint(trainer_cfg.checkpoint_path) if resume else None
        if ckpt is not None:
            trainer.load_trainer_state(ckpt)
            sae.load_weights_from_checkpoint(ckpt)
            provider.load_from_checkpoint(ckpt)
            # SAELens saves its step counter before it moves; every batch is full (drop_last).
            trainer.n_training_steps = trainer.n_training_samples // trainer_cfg.train_batch_size_samples
            done = trainer.n_training_samples
            trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= done]
    except BaseException:
        provider.close()
        raise
    return trainer, provider


def train_saelens(
    store: Store | str,
    hook: str,
    sae_cfg,
    trainer_cfg,
    *,
    normalize: str | None = "mean_norm",
    seed: int = 0,
    drop_flags=None,
    buffer_rows: int = 65536,
    threads: int | None = None,
    resume: bool = True,
    out: str | os.PathLike | None = None,
    rows: tuple[int, int] | None = None,
    docs: tuple[int, int] | None = None,
):
    """Train a SAELens SAE with SAELens' ``SAETrainer`` on ``hook`` of ``store``; see the module docstring.

    Returns the trained SAELens ``TrainingSAE``, taking raw activations (the ``mean_norm``
    factor folded in); with ``out`` it is also saved there (``save_inference_model``:
    ``cfg.json`` + ``sae_weights.safetensors``, loadable with ``SAE.load_from_disk``).
    Ctrl-C saves a checkpoint (when ``checkpoint_path`` is set) and re-raises. ``rows=(start,
    stop)`` / ``docs=(lo, hi)``: train on only those store rows (a held-out split in one store).
    """
    if trainer_cfg.lr_end is None:
        trainer_cfg = dataclasses.replace(trainer_cfg, lr_end=trainer_cfg.lr / 10)
    trainer, provider = make_saelens_trainer(
        store,
        hook,
        sae_cfg,
        trainer_cfg,
        normalize=normalize,
        seed=seed,
        drop_flags=drop_flags,
        buffer_rows=buffer_rows,
        threads=threads,
        resume=resume,
        rows=rows,
        docs=docs,
    )
    try:
        try:
            sae = trainer.fit()
        except KeyboardInterrupt:
            if trainer_cfg.checkpoint_path is not None:
                trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
            raise
        return finish(sae, provider.scaling_factor, out)
    finally:
        provider.close()


def finish(sae, scaling_factor: float | None, out: str | os.PathLike | None = None):
    """Fold the loader's ``mean_norm`` factor into ``sae`` (in place), so that it takes raw
    activations, and save it to ``out`` (SAELens' inference format) when given."""
    if scaling_factor is not None and math.isfinite(scaling_factor):
        sae.fold_activation_norm_scaling_factor(scaling_factor)
    if out is not None:
        sae.save_inference_model(os.fspath(out))
    return sae
