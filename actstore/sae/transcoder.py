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
"""

from __future__ import annotations

from .base import SparseAutoencoder
from .jumprelu import JumpReLUSAE
from .topk import BatchTopKSAE, TopKSAE


class TopKTranscoder(TopKSAE):
    arch = "transcoder"


class BatchTopKTranscoder(BatchTopKSAE):
    arch = "transcoder"


class JumpReLUTranscoder(JumpReLUSAE):
    arch = "transcoder"


class TopKSkipTranscoder(TopKSAE):
    arch = "skip_transcoder"


class BatchTopKSkipTranscoder(BatchTopKSAE):
    arch = "skip_transcoder"


class JumpReLUSkipTranscoder(JumpReLUSAE):
    arch = "skip_transcoder"


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
