"""sparse_decode (the decoder of a ``[n, k]`` top-k code) against its reference, on the
kernel with a float16 decoder too."""

from __future__ import annotations

import pytest
import torch

from actstore.ops import sparse_decode
from actstore.reference.topk_sae import sparse_decode_reference
from helpers.tolerances import assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def test_sparse_decode_matches_reference():
    g = torch.Generator().manual_seed(8)
    v = torch.randn(33, 8, generator=g)
    i = torch.randint(0, 96, (33, 8), generator=g)
    Wd, bd = torch.randn(96, 100, generator=g), torch.randn(100, generator=g)
    assert_values_close(sparse_decode(v, i, Wd, bd), sparse_decode_reference(v, i, Wd, bd))
    with pytest.raises(ValueError, match="both be"):
        sparse_decode(v, i[:, :4], Wd, bd)


def test_sparse_decode_fp16_decoder_on_the_kernel(device):
    g = torch.Generator().manual_seed(2)
    v = torch.rand(17, 8, generator=g)
    i = torch.randint(0, 96, (17, 8), generator=g)
    Wd = (torch.randn(96, 100, generator=g) / 10).half()
    out = sparse_decode(v.to(device), i.to(device), Wd.to(device), backend="triton")
    assert out.dtype == torch.float32
    assert_values_close(out, sparse_decode_reference(v, i, Wd))
