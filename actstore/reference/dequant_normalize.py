"""Reference of the loader's last step: stored rows -> normalized floats.

``y[i, j] = (decode(x[i, j]) * scale[i] - shift[j]) * mul[j]``, computed in float32 and
rounded once to the output dtype. ``decode`` reads the stored representation exactly:

- ``bfloat16``: int16 holding bf16 bits (the store keeps them as uint16);
- ``float16`` / ``float32``: the values;
- ``float8_e4m3fn``: uint8 bits, times the per-row ``scale``;
- ``int8``: the integers, times the per-row ``scale``.

``shift`` and ``mul`` are optional ``[d]`` float32 vectors: the loader passes
``mul = sqrt(d) / mean_norm`` for SAELens' norm scaling (mean norm -> sqrt(d)) and
``shift = mean, mul = 1/std`` to standardize.
"""

from __future__ import annotations

import torch

LOGICAL = ("bfloat16", "float16", "float32", "float8_e4m3fn", "int8")


def decode_stored(x: torch.Tensor, logical: str) -> torch.Tensor:
    """Stored ``[n, d]`` -> float32 ``[n, d]`` values (before the per-row scale)."""
    if logical == "bfloat16":
        return x.view(torch.bfloat16).to(torch.float32)
    if logical == "float8_e4m3fn":
        return x.view(torch.float8_e4m3fn).to(torch.float32)
    if logical in ("float16", "float32", "int8"):
        return x.to(torch.float32)
    raise ValueError(f"unknown stored dtype {logical!r}: use one of {', '.join(LOGICAL)}")


def dequant_normalize_reference(x: torch.Tensor, logical: str, scale: torch.Tensor | None = None,
                                shift: torch.Tensor | None = None, mul: torch.Tensor | None = None,
                                out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x ``[n, d]`` stored, scale ``[n]``, shift/mul ``[d]`` -> ``[n, d]`` of ``out_dtype``."""
    v = decode_stored(x, logical)
    if scale is not None:
        v = v * scale.to(torch.float32)[:, None]
    if shift is not None:
        v = v - shift.to(torch.float32)
    if mul is not None:
        v = v * mul.to(torch.float32)
    return v.to(out_dtype)
