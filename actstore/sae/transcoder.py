"""Transcoders and skip transcoders: an encoder that reads a **source** hook (an MLP's
input) and a decoder that writes a **target** hook (that MLP's output), ``d_out`` wide.

``y_hat = decode(encode(x)) (+ x @ W_skip.T)``, with ``W_skip [d_out, d]`` zero at init
(SAELens' ``SkipTranscoder``; sparsify's ``--skip_connection``). The encoder does not
subtract ``b_dec`` from its input (``b_dec`` is ``[d_out]``, in the target space; SAELens
forbids ``apply_b_dec_to_input`` for transcoders and sparsify dropped it, PR #49).

Each class is the SAE class of its activation (TopK, BatchTopK or JumpReLU, on the same
fused ops) with another ``arch``: everything that differs for a transcoder (the shapes,
``pre_bias``, ``target_of``, ``add_skip``, ``fold_scale`` with ``scale_out``) lives on
:class:`~actstore.sae.base.SparseAutoencoder` and reads ``cfg``, so the loss of a
transcoder is its SAE's loss against the target. :data:`CLASSES` maps
``(arch, activation)`` to the class.

Files (``actstore.sae.io``; what differs is asked of the class):

- SAELens (``d_out`` in ``cfg.json``, ``apply_b_dec_to_input`` false, ``metadata.hook_name``
  the source and ``hook_name_out`` the target, as SAELens' own transcoder loaders write):
  JumpReLU -> ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` (exact, both ways);
  BatchTopK -> the same JumpReLU form with its inference threshold on every latent (and
  ``training_architecture`` ``batchtopk``, by which it reads back as BatchTopK); TopK has no
  SAELens form (SAELens has no TopK transcoder). SAELens' ReLU ``transcoder`` /
  ``skip_transcoder`` have no actstore counterpart (a JumpReLU at theta 0 would be one, but
  actstore's theta is log-parameterized, so always above 0).
- sparsify (``transcode=True``, ``skip_connection`` for the skip form): TopK, both ways, when
  ``d_out == d`` (sparsify's ``b_dec`` and ``W_skip`` are ``d_in`` wide).
"""

from __future__ import annotations

import torch

from ..errors import SAEError
from .base import SparseAutoencoder
from .jumprelu import JumpReLUSAE
from .topk import BatchTopKSAE, TopKSAE


class _Transcoder:
    """What a transcoder changes in its SAE class's file formats (mixed in before it): SAELens'
    ``d_out``, and no SAELens form unless the class names one."""

    saelens_arch = saelens_reads = ""

    def saelens_config(self) -> dict:
        return {**super().saelens_config(), "d_out": self.cfg.d_target}

    def saelens_state(self) -> dict[str, torch.Tensor]:
        if not self.saelens_arch:
            raise SAEError(
                f"SAELens has no {self.act} transcoder: export this one with to_sparsify (when d_out = d), "
                "or train it with --activation batchtopk or jumprelu for to_saelens"
            )
        return super().saelens_state()


class TopKTranscoder(_Transcoder, TopKSAE):
    arch = "transcoder"
    sparsify_reads = (True, False)


class BatchTopKTranscoder(_Transcoder, BatchTopKSAE):
    arch = "transcoder"
    saelens_arch = "jumprelu_transcoder"  # read back as this class by its training_architecture record


class JumpReLUTranscoder(_Transcoder, JumpReLUSAE):
    arch = "transcoder"
    saelens_arch = saelens_reads = "jumprelu_transcoder"


class TopKSkipTranscoder(_Transcoder, TopKSAE):
    arch = "skip_transcoder"
    sparsify_reads = (True, True)


class BatchTopKSkipTranscoder(_Transcoder, BatchTopKSAE):
    arch = "skip_transcoder"
    saelens_arch = "jumprelu_skip_transcoder"


class JumpReLUSkipTranscoder(_Transcoder, JumpReLUSAE):
    arch = "skip_transcoder"
    saelens_arch = saelens_reads = "jumprelu_skip_transcoder"


CLASSES: dict[tuple[str, str], type[SparseAutoencoder]] = {
    (c.arch, c.act): c
    for c in (
        TopKTranscoder,
        BatchTopKTranscoder,
        JumpReLUTranscoder,
        TopKSkipTranscoder,
        BatchTopKSkipTranscoder,
        JumpReLUSkipTranscoder,
    )
}
