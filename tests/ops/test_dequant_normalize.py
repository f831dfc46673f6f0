"""The loader's dequantize/normalize kernel against its reference.

Without a GPU the Triton kernel runs under TRITON_INTERPRET=1 (tests/conftest.py). Its
decodes are integer arithmetic, so every stored dtype must match the reference bit for
bit, for fp32 and fp16 outputs (bf16 output is checked only on a GPU: the interpreter's
bf16 downcast truncates, DESIGN.md)."""

from __future__ import annotations

import pytest
import torch

from actstore.ops import dequant_normalize
from actstore.reference.dequant_normalize import dequant_normalize_reference
from actstore.store.format import DTYPES, parse_dtype
from actstore.store.quantize import quantize, quantize_fp8, quantize_int8
from helpers.device import DEVICE as DEV

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present
OUT = [torch.float32, torch.float16] + ([torch.bfloat16] if DEV == "cuda" else [])


def _stored(dtype: str, x: torch.Tensor):
    if dtype == "fp8":
        return quantize_fp8(x)
    if dtype == "int8":
        return quantize_int8(x)
    if dtype == "q16":
        return quantize(x, DTYPES["q16"])
    if dtype == "bf16":
        return x.to(torch.bfloat16).view(torch.int16), None
    return x.to({"fp16": torch.float16, "fp32": torch.float32}[dtype]), None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.float().nan_to_num(7.0), b.float().nan_to_num(7.0))
    )


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "fp8", "int8", "q16"])
@pytest.mark.parametrize("n,d", [(1, 48), (37, 100), (64, 64), (5, 300)])
@pytest.mark.parametrize("affine", ["none", "mul", "shift_mul"])
def test_kernel_matches_reference(dtype, n, d, affine):
    g = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=g) * 3
    stored, scale = _stored(dtype, x)
    shift = torch.randn(d, generator=g) if affine == "shift_mul" else None
    mul = (torch.rand(d, generator=g) + 0.5) if affine != "none" else None
    for out in OUT:
        ref = dequant_normalize_reference(stored, dtype, scale, shift, mul, out)
        mv = lambda t: None if t is None else t.to(DEV)  # noqa: E731
        got = dequant_normalize(stored.to(DEV), dtype, mv(scale), mv(shift), mv(mul), out, backend="triton")
        assert _same(got.cpu(), ref), (dtype, out, (got.cpu().float() - ref.float()).abs().max())


def test_every_fp8_code_decodes_exactly_including_nan_and_subnormals():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(4, 64)
    ref = dequant_normalize_reference(codes, "fp8")
    got = dequant_normalize(codes.to(DEV), "fp8", backend="triton").cpu()
    assert torch.isnan(ref).sum() == 2 and torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.equal(got.nan_to_num(0.0), ref.nan_to_num(0.0))
    assert torch.equal(torch.signbit(got), torch.signbit(ref))  # -0.0 stays negative


def test_bf16_bits_cover_inf_nan_and_negative_zero():
    bits = torch.tensor([[0x7F80, 0xFF80, 0x7FC0, 0x8000, 0x0001, 0x3F80, 0xC000, 0x7F7F]], dtype=torch.int32)
    stored = (bits - (bits >= 0x8000).int() * 0x10000).to(torch.int16)  # the same bits as int16
    ref = dequant_normalize_reference(stored, "bf16")
    got = dequant_normalize(stored.to(DEV), "bf16", backend="triton").cpu()
    assert torch.equal(got.nan_to_num(0.0), ref.nan_to_num(0.0)) and torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.equal(torch.signbit(got), torch.signbit(ref))


def test_strided_rows_are_read_in_place():
    x = torch.randn(20, 96)
    stored = x.to(torch.float16)[:, :80]  # row stride 96, last dim contiguous
    assert not stored.is_contiguous()
    ref = dequant_normalize_reference(stored, "fp16")
    got = dequant_normalize(stored.to(DEV), "fp16", backend="triton").cpu()
    assert torch.equal(got, ref)


def test_bad_arguments_are_one_line():
    with pytest.raises(ValueError, match="unknown storage dtype 'float64'"):
        dequant_normalize(torch.zeros(2, 2), "float64")
    with pytest.raises(ValueError, match=r"x must be \[n, d\]"):
        dequant_normalize(torch.zeros(2), "fp32")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "fp8", "int8", "q16"])
def test_logical_names_are_aliases_of_the_storage_names(dtype):
    spec = parse_dtype(dtype)
    stored, scale = _stored(dtype, torch.randn(3, 40, generator=torch.Generator().manual_seed(1)))
    short = dequant_normalize(stored.to(DEV), dtype, None if scale is None else scale.to(DEV), backend="triton")
    alias = dequant_normalize(stored.to(DEV), spec.logical, None if scale is None else scale.to(DEV), backend="triton")
    assert parse_dtype(spec.logical) is spec and torch.equal(short, alias)
