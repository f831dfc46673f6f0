"""Tests for actstore._native: the C++ kernels against the NumPy fallbacks and torch.

The native cases skip (with the reason) when actstore._C is not built, except
test_native_required, which fails when ACTSTORE_REQUIRE_NATIVE=1 (set in CI) so
that a broken build cannot pass unnoticed.
"""

import json
import os
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
import torch

from actstore import _native as nat

needs_native = pytest.mark.skipif(not nat.HAVE_NATIVE, reason=f"actstore._C not in use: {nat.NATIVE_ERROR}")

# "native" goes through the public functions, which dispatch to _C when HAVE_NATIVE.
GATHER = {
    "native": pytest.param(nat.gather_rows, marks=needs_native, id="native"),
    "numpy": pytest.param(nat.gather_rows_numpy, id="numpy"),
}
TO_BF16 = {
    "native": pytest.param(nat.fp32_to_bf16, marks=needs_native, id="native"),
    "numpy": pytest.param(nat.fp32_to_bf16_numpy, id="numpy"),
}
FROM_BF16 = {
    "native": pytest.param(nat.bf16_to_fp32, marks=needs_native, id="native"),
    "numpy": pytest.param(nat.bf16_to_fp32_numpy, id="numpy"),
}
IMPLS = [
    pytest.param("native", marks=needs_native, id="native"),
    pytest.param("numpy", id="numpy"),
]
FUNCS = {
    "native": (nat.gather_rows, nat.fp32_to_bf16, nat.bf16_to_fp32),
    "numpy": (nat.gather_rows_numpy, nat.fp32_to_bf16_numpy, nat.bf16_to_fp32_numpy),
}


def test_native_required():
    if os.environ.get("ACTSTORE_REQUIRE_NATIVE", "") in ("", "0"):
        pytest.skip("ACTSTORE_REQUIRE_NATIVE is not set")
    assert nat.HAVE_NATIVE, f"actstore._C is required but not in use: {nat.NATIVE_ERROR}"


def test_native_status_is_consistent():
    assert isinstance(nat.HAVE_NATIVE, bool)
    assert (nat.NATIVE_ERROR is None) == nat.HAVE_NATIVE
    assert 1 <= nat.default_threads() <= 8


# ---------------------------------------------------------------------------
# gather_rows


def random_rows(rng, n_rows, dtype, cols):
    """Random bytes viewed as dtype: covers every bit pattern (NaNs included), no zeros."""
    itemsize = np.dtype(dtype).itemsize
    raw = rng.integers(1, 256, size=(n_rows, cols * itemsize), dtype=np.uint8)
    return raw.view(dtype)


def reference_gather(sources, src_ids, rows, row_bytes):
    out = np.empty((len(rows), row_bytes), dtype=np.uint8)
    for i, (s, r) in enumerate(zip(src_ids.tolist(), rows.tolist())):
        out[i] = sources[s][r].view(np.uint8)
    return out


def make_gather_case(rng, n, dtype, cols, n_sources=3):
    counts = [int(c) for c in rng.integers(1, 300, size=n_sources)]
    sources = [random_rows(rng, c, dtype, cols) for c in counts]
    src_ids = rng.integers(0, n_sources, size=n).astype(np.int32)
    rows = np.array([rng.integers(0, counts[s]) for s in src_ids], dtype=np.int64)
    return sources, src_ids, rows


# Row widths 1, 3, 8, 40, 384, 385, 768 bytes over several dtypes.
WIDTHS = [
    (np.uint8, 1),
    (np.uint8, 3),
    (np.float64, 1),
    (np.float64, 5),
    (np.float32, 96),
    (np.uint8, 385),
    (np.uint16, 384),
]


@pytest.mark.parametrize("impl", GATHER.values())
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 4099])
@pytest.mark.parametrize("dtype,cols", WIDTHS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_gather_matches_reference(impl, n, dtype, cols):
    rng = np.random.default_rng([n, cols, np.dtype(dtype).itemsize])
    sources, src_ids, rows = make_gather_case(rng, n, dtype, cols)
    row_bytes = np.dtype(dtype).itemsize * cols
    want = reference_gather(sources, src_ids, rows, row_bytes)
    out = impl(sources, src_ids, rows)
    assert out.dtype == np.dtype(dtype) and out.shape == (n, cols)
    np.testing.assert_array_equal(out.view(np.uint8), want)


@pytest.mark.parametrize("impl", GATHER.values())
@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_gather_threads(impl, threads):
    # 20011 rows x 768 bytes = 15 MB: well above the 1 MiB single-thread cutoff,
    # and not a multiple of the thread count.
    rng = np.random.default_rng(threads)
    sources, src_ids, rows = make_gather_case(rng, 20011, np.uint16, 384, n_sources=5)
    want = reference_gather(sources, src_ids, rows, 768)
    out = np.full((20011, 384), 0xABCD, dtype=np.uint16)
    assert impl(sources, src_ids, rows, out=out, threads=threads) is out
    np.testing.assert_array_equal(out.view(np.uint8), want)


@needs_native
def test_gather_native_equals_numpy_mixed_dtypes():
    # Only the row width in bytes has to match: 4 x float32 = 8 x int16 = 16 x uint8.
    rng = np.random.default_rng(7)
    sources = [random_rows(rng, 50, np.float32, 4), random_rows(rng, 9, np.int16, 8)]
    src_ids = rng.integers(0, 2, size=333).astype(np.int32)
    rows = np.where(src_ids == 0, rng.integers(0, 50, 333), rng.integers(0, 9, 333))
    a = np.empty((333, 16), np.uint8)
    b = np.empty((333, 16), np.uint8)
    nat.gather_rows(sources, src_ids, rows, out=a, threads=2)
    nat.gather_rows_numpy(sources, src_ids, rows, out=b)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, reference_gather(sources, src_ids, rows, 16))


@pytest.mark.parametrize("impl", GATHER.values())
def test_gather_single_source_and_tuple(impl):
    rng = np.random.default_rng(11)
    src = random_rows(rng, 1000, np.float32, 7)
    rows = rng.permutation(1000).astype(np.int64)
    out = impl((src,), np.zeros(1000, np.int32), rows)
    np.testing.assert_array_equal(out, src[rows])


@needs_native
def test_gather_concurrent_calls():
    # Several Python threads in the native gather at once (the GIL is released):
    # each result must still be exact.
    rng = np.random.default_rng(3)
    sources, src_ids, rows = make_gather_case(rng, 5000, np.uint8, 385)
    want = reference_gather(sources, src_ids, rows, 385)
    outs = [np.zeros((5000, 385), np.uint8) for _ in range(4)]
    errors = []

    def work(out):
        try:
            for _ in range(5):
                nat.gather_rows(sources, src_ids, rows, out=out, threads=2)
        except Exception as e:  # surfaced below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(o,)) for o in outs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for out in outs:
        np.testing.assert_array_equal(out, want)


def _gather_ok_args():
    rng = np.random.default_rng(5)
    sources = [random_rows(rng, 10, np.float32, 4), random_rows(rng, 20, np.float32, 4)]
    src_ids = np.array([0, 1, 1, 0], np.int32)
    rows = np.array([9, 19, 0, 3], np.int64)
    out = np.full((4, 4), 7.0, np.float32)
    return sources, src_ids, rows, out


def _readonly(a):
    a.flags.writeable = False
    return a


def _bad_gather_cases():
    """(name, expected exception, message fragment, mutate(args) -> args)."""

    def with_(**kw):
        def f(args):
            d = dict(zip(("sources", "src_ids", "rows", "out"), args))
            d.update({k: (v(d) if callable(v) else v) for k, v in kw.items()})
            return d["sources"], d["src_ids"], d["rows"], d["out"]

        return f

    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    f32 = lambda r, c: np.ones((r, c), np.float32)  # noqa: E731
    return [
        ("src_id_high", IndexError, "src_ids[2] = 2 is out of range for 2 sources", with_(src_ids=i32(0, 1, 2, 0))),
        ("src_id_negative", IndexError, "src_ids[0] = -1 is out of range", with_(src_ids=i32(-1, 1, 1, 0))),
        (
            "row_high",
            IndexError,
            "rows[1] = 20 is out of range for sources[1] with 20 rows",
            with_(rows=i64(9, 20, 0, 3)),
        ),
        (
            "row_negative",
            IndexError,
            "rows[3] = -1 is out of range for sources[0] with 10 rows",
            with_(rows=i64(9, 19, 0, -1)),
        ),
        ("row_huge", IndexError, "rows[0] = 9223372036854775807", with_(rows=i64(2**63 - 1, 19, 0, 3))),
        (
            "src_ids_int64",
            ValueError,
            "src_ids must be a 1-D int32 array",
            with_(src_ids=np.array([0, 1, 1, 0], np.int64)),
        ),
        ("rows_int32", ValueError, "rows must be a 1-D int64 array", with_(rows=np.array([9, 19, 0, 3], np.int32))),
        (
            "src_ids_big_endian",
            ValueError,
            "src_ids must be a 1-D int32 array",
            with_(src_ids=np.array([0, 1, 1, 0], ">i4")),
        ),
        ("rows_2d", ValueError, "rows must be a 1-D int64 array", with_(rows=np.zeros((4, 1), np.int64))),
        (
            "rows_noncontig",
            ValueError,
            "rows must be C-contiguous",
            with_(rows=np.array([9, 0, 19, 0, 0, 0, 3, 0], np.int64)[::2]),
        ),
        ("len_mismatch", ValueError, "len(src_ids)=3, len(rows)=4 and out.shape[0]=4", with_(src_ids=i32(0, 1, 1))),
        (
            "source_noncontig",
            ValueError,
            "sources[1] must be C-contiguous",
            with_(sources=lambda d: [d["sources"][0], f32(20, 8)[:, ::2]]),
        ),
        (
            "source_noncontig_rows",
            ValueError,
            "sources[0] must be C-contiguous",
            with_(sources=lambda d: [f32(20, 4)[::2], d["sources"][1]]),
        ),
        (
            "source_width",
            ValueError,
            "sources[1] rows are 20 bytes (5 x float32) but out rows are 16",
            with_(sources=lambda d: [d["sources"][0], f32(20, 5)]),
        ),
        (
            "source_width_dtype",
            ValueError,
            "sources[0] rows are 32 bytes (4 x float64)",
            with_(sources=lambda d: [np.ones((10, 4), np.float64), d["sources"][1]]),
        ),
        ("source_1d", ValueError, "sources[0] must be 2-D", with_(sources=[np.ones(40, np.float32)])),
        (
            "source_not_array",
            TypeError,
            "sources[0] must be a numpy.ndarray, got list",
            with_(sources=[[[1.0] * 4] * 10]),
        ),
        (
            "source_object",
            ValueError,
            "holds Python objects",
            with_(sources=lambda d: [np.empty((10, 2), object), d["sources"][1]], out=np.empty((4, 2), np.float64)),
        ),
        ("out_noncontig", ValueError, "out must be C-contiguous", with_(out=np.zeros((4, 8), np.float32)[:, ::2])),
        ("out_readonly", ValueError, "out is read-only", with_(out=_readonly(np.zeros((4, 4), np.float32)))),
        ("out_1d", ValueError, "out must be 2-D", with_(out=np.zeros(16, np.float32))),
        ("out_overlaps", ValueError, "out overlaps sources[1]", with_(out=lambda d: d["sources"][1][:4])),
    ]


BAD_GATHER = _bad_gather_cases()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", BAD_GATHER, ids=[c[0] for c in BAD_GATHER])
def test_gather_rejects_bad_input(impl, case):
    _, exc, fragment, mutate = case
    sources, src_ids, rows, out = mutate(_gather_ok_args())
    before = out.copy() if isinstance(out, np.ndarray) else None
    gather = FUNCS[impl][0]
    with pytest.raises(exc, match=None) as info:
        gather(sources, src_ids, rows, out=out)
    msg = str(info.value)
    assert fragment in msg, msg
    assert "\n" not in msg
    if before is not None and out.flags.writeable:
        np.testing.assert_array_equal(out, before)  # nothing written before the check failed


@needs_native
@pytest.mark.parametrize("case", BAD_GATHER, ids=[c[0] for c in BAD_GATHER])
def test_gather_native_and_numpy_errors_agree(case):
    _, _, _, mutate = case
    caught = []
    for fn in (nat.gather_rows, nat.gather_rows_numpy):
        sources, src_ids, rows, out = mutate(_gather_ok_args())
        with pytest.raises(Exception) as info:
            fn(sources, src_ids, rows, out=out)
        caught.append((type(info.value), str(info.value)))
    assert caught[0] == caught[1]


@pytest.mark.parametrize("impl", IMPLS)
def test_gather_bad_threads(impl):
    sources, src_ids, rows, out = _gather_ok_args()
    with pytest.raises(ValueError, match="threads must be >= 0"):
        FUNCS[impl][0](sources, src_ids, rows, out=out, threads=-1)
    with pytest.raises(TypeError):
        FUNCS[impl][0](sources, src_ids, rows, out=out, threads=1.5)


def test_gather_out_none_needs_a_source():
    with pytest.raises(ValueError, match="sources is empty"):
        nat.gather_rows([], np.zeros(0, np.int32), np.zeros(0, np.int64))
    # With out given, no sources and no rows is a valid empty gather.
    out = np.empty((0, 3), np.float32)
    assert nat.gather_rows([], np.zeros(0, np.int32), np.zeros(0, np.int64), out=out) is out


# ---------------------------------------------------------------------------
# bf16 conversion


def torch_bf16_bits(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def f32(bits) -> np.ndarray:
    return np.array(bits, dtype=np.uint32).view(np.float32)


def is_bf16_nan(b: np.ndarray) -> np.ndarray:
    return (b & 0x7FFF) > 0x7F80


def random_non_nan_f32(rng, shape):
    """Uniform random bit patterns (finite values of every exponent, subnormals,
    +-inf), NaNs replaced: torch canonicalizes NaN, so they are checked separately."""
    bits = rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x[np.isnan(x)] = 1.5
    return x


@pytest.mark.parametrize("impl", TO_BF16.values())
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 4099, (1 << 20) + 3])
@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_fp32_to_bf16_matches_torch(impl, n, threads):
    rng = np.random.default_rng([n, threads])
    x = random_non_nan_f32(rng, n)
    # Normal-range values too, where real activations live.
    x[: n // 2] = rng.standard_normal(n // 2).astype(np.float32) * 3
    got = impl(x, threads=threads)
    assert got.dtype == np.uint16 and got.shape == x.shape
    np.testing.assert_array_equal(got, torch_bf16_bits(x))


@pytest.mark.parametrize("impl", TO_BF16.values())
def test_fp32_to_bf16_multidim_and_int16_out(impl):
    rng = np.random.default_rng(1)
    x = random_non_nan_f32(rng, (7, 13, 5))
    got = impl(x)
    assert got.shape == (7, 13, 5)
    np.testing.assert_array_equal(got, torch_bf16_bits(x))
    out = np.empty(7 * 13 * 5, np.int16)  # same size, other shape, int16 bits
    assert impl(x, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint16), torch_bf16_bits(x).reshape(-1))


# (float32 bits, expected bf16 bits) worked out by hand.
SPECIAL = [
    (0x00000000, 0x0000),  # +0
    (0x80000000, 0x8000),  # -0
    (0x7F800000, 0x7F80),  # +inf
    (0xFF800000, 0xFF80),  # -inf
    (0x3F800000, 0x3F80),  # 1.0
    (0x3F808000, 0x3F80),  # 1 + 2^-8: halfway, kept bit even -> down
    (0x3F818000, 0x3F82),  # halfway, kept bit odd -> up to even
    (0xBF808000, 0xBF80),  # negative halfway, even -> down
    (0xBF818000, 0xBF82),  # negative halfway, odd -> up (away from zero)
    (0x3F808001, 0x3F81),  # just above halfway -> up
    (0x3F807FFF, 0x3F80),  # just below halfway -> down
    (0x3F80FFFF, 0x3F81),
    (0x3FFF8000, 0x4000),  # halfway with carry into the exponent
    (0x7F7FFFFF, 0x7F80),  # max float32 rounds to +inf
    (0xFF7FFFFF, 0xFF80),  # -max float32 rounds to -inf
    (0x7F7F8000, 0x7F80),  # halfway below inf, odd -> inf
    (0x7F7F7FFF, 0x7F7F),  # largest that stays finite
    (0x7F7E8000, 0x7F7E),  # halfway, even -> stays finite
    (0x00000001, 0x0000),  # smallest subnormal -> +0
    (0x80000001, 0x8000),  # -> -0
    (0x00008000, 0x0000),  # subnormal halfway, even -> down
    (0x00018000, 0x0002),  # subnormal halfway, odd -> up
    (0x007FFFFF, 0x0080),  # largest subnormal rounds up to the smallest normal
    (0x00400000, 0x0040),  # subnormal exactly representable
    (0x00800000, 0x0080),  # smallest normal
]


@pytest.mark.parametrize("impl", TO_BF16.values())
def test_fp32_to_bf16_special_values(impl):
    bits = np.array([b for b, _ in SPECIAL], np.uint32)
    want = np.array([w for _, w in SPECIAL], np.uint16)
    x = bits.view(np.float32)
    np.testing.assert_array_equal(torch_bf16_bits(x), want)  # the table agrees with torch
    got = impl(x)
    bad = [f"{b:#010x}->{g:#06x} (want {w:#06x})" for b, g, w in zip(bits, got, want) if g != w]
    assert not bad, bad


NANS = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF, 0x7FA00000, 0x7F810000]


@pytest.mark.parametrize("impl", TO_BF16.values())
def test_fp32_to_bf16_nan_stays_nan(impl):
    bits = np.array(NANS, np.uint32)
    got = impl(bits.view(np.float32))
    assert is_bf16_nan(got).all(), [hex(g) for g in got]
    # Sign kept, quiet bit set, upper payload kept.
    np.testing.assert_array_equal(got, (bits >> 16).astype(np.uint16) | 0x0040)
    assert np.isnan(nat.bf16_to_fp32_numpy(got)).all()


@needs_native
def test_fp32_to_bf16_native_equals_numpy_all_patterns():
    # Every exponent/sign with many mantissas, NaNs included (native vs fallback
    # must agree bit for bit even where torch canonicalizes).
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, size=3_000_000, dtype=np.uint64).astype(np.uint32)
    bits[:65536] = np.arange(65536, dtype=np.uint32) << 16 | 0x8000  # every tie
    x = bits.view(np.float32)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(nat.fp32_to_bf16(x, threads=threads), nat.fp32_to_bf16_numpy(x))


@pytest.mark.parametrize("impl", FROM_BF16.values())
@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_bf16_to_fp32_all_patterns(impl, threads):
    # All 65536 bf16 patterns, repeated to pass the multi-thread cutoff, plus an odd tail.
    b = np.tile(np.arange(65536, dtype=np.uint32).astype(np.uint16), 5)[: 5 * 65536 - 3]
    got = impl(b, threads=threads)
    assert got.dtype == np.float32 and got.shape == b.shape
    np.testing.assert_array_equal(got.view(np.uint32), b.astype(np.uint32) << 16)
    t = torch.from_numpy(b.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(got.view(np.uint32), t.view(np.uint32))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [0, 1, 7, 4099])
def test_bf16_round_trip(impl, n):
    _, to_bf16, from_bf16 = FUNCS[impl]
    rng = np.random.default_rng(n)
    b = rng.integers(0, 2**16, size=(n,), dtype=np.uint32).astype(np.uint16)
    b[is_bf16_nan(b)] = 0x3F80
    out = np.empty((n,), np.int16)
    np.testing.assert_array_equal(to_bf16(from_bf16(b), out=out).view(np.uint16), b)
    np.testing.assert_array_equal(from_bf16(out).view(np.uint32), b.astype(np.uint32) << 16)


def _bad_convert_cases():
    f = np.ones(6, np.float32)
    u = np.ones(6, np.uint16)
    ro = np.ones(6, np.uint16)
    ro.flags.writeable = False
    ro_f = np.ones(6, np.float32)
    ro_f.flags.writeable = False
    return [
        ("to_bf16", "f64_in", ValueError, "x must be float32, got float64", (np.ones(6), u)),
        ("to_bf16", "f32_out", ValueError, "out must be uint16 (or int16)", (f, np.ones(6, np.float32))),
        ("to_bf16", "big_endian", ValueError, "x must be float32, got >f4", (f.astype(">f4"), u)),
        ("to_bf16", "noncontig_in", ValueError, "x must be C-contiguous", (np.ones(12, np.float32)[::2], u)),
        ("to_bf16", "noncontig_out", ValueError, "out must be C-contiguous", (f, np.ones(12, np.uint16)[::2])),
        ("to_bf16", "size", ValueError, "x has 6 elements but out has 5", (f, u[:5])),
        ("to_bf16", "readonly", ValueError, "out is read-only", (f, ro)),
        ("to_bf16", "list", TypeError, "x must be a numpy.ndarray, got list", ([1.0] * 6, u)),
        ("to_bf16", "overlap", ValueError, "out overlaps x", (f, f.view(np.uint16)[:6])),
        ("from_bf16", "f32_in", ValueError, "x must be uint16 (or int16)", (f, f.copy())),
        ("from_bf16", "f64_out", ValueError, "out must be float32, got float64", (u, np.ones(6))),
        ("from_bf16", "size", ValueError, "x has 6 elements but out has 7", (u, np.ones(7, np.float32))),
        ("from_bf16", "readonly", ValueError, "out is read-only", (u, ro_f)),
        ("from_bf16", "noncontig_in", ValueError, "x must be C-contiguous", (np.ones(12, np.uint16)[::2], f)),
    ]


BAD_CONVERT = _bad_convert_cases()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", BAD_CONVERT, ids=[f"{c[0]}-{c[1]}" for c in BAD_CONVERT])
def test_convert_rejects_bad_input(impl, case):
    which, _, exc, fragment, (x, out) = case
    fn = FUNCS[impl][1 if which == "to_bf16" else 2]
    with pytest.raises(exc) as info:
        fn(x, out=out)
    assert fragment in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        fn(np.ones(2, np.float32 if which == "to_bf16" else np.uint16), threads=-2)


@needs_native
@pytest.mark.parametrize("case", BAD_CONVERT, ids=[f"{c[0]}-{c[1]}" for c in BAD_CONVERT])
def test_convert_native_and_numpy_errors_agree(case):
    which, _, _, _, (x, out) = case
    k = 1 if which == "to_bf16" else 2
    caught = []
    for impl in ("native", "numpy"):
        with pytest.raises(Exception) as info:
            FUNCS[impl][k](x, out=out)
        caught.append((type(info.value), str(info.value)))
    assert caught[0] == caught[1]


# ---------------------------------------------------------------------------
# ACTSTORE_NO_NATIVE=1 forces the fallback, with the same results.

_SUBPROCESS = r"""
import json, sys
import numpy as np
from actstore import _native as nat
rng = np.random.default_rng(0)
srcs = [rng.integers(1, 1000, size=(r, 96)).astype(np.float32) for r in (50, 70)]
ids = rng.integers(0, 2, size=999).astype(np.int32)
rows = np.where(ids == 0, rng.integers(0, 50, 999), rng.integers(0, 70, 999)).astype(np.int64)
x = rng.standard_normal(12345).astype(np.float32)
np.save(sys.argv[1] + "/gather.npy", nat.gather_rows(srcs, ids, rows))
np.save(sys.argv[1] + "/bf16.npy", nat.fp32_to_bf16(x))
np.save(sys.argv[1] + "/fp32.npy", nat.bf16_to_fp32(nat.fp32_to_bf16(x)))
print(json.dumps({"have": nat.HAVE_NATIVE, "error": nat.NATIVE_ERROR}))
"""


def _run_subprocess(out_dir, no_native: bool):
    env = {k: v for k, v in os.environ.items() if k != "ACTSTORE_NO_NATIVE"}
    if no_native:
        env["ACTSTORE_NO_NATIVE"] = "1"
    out_dir.mkdir()
    res = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout.strip().splitlines()[-1])
    arrays = {k: np.load(out_dir / f"{k}.npy") for k in ("gather", "bf16", "fp32")}
    return status, arrays


@pytest.mark.slow  # over ~15 s on 2 busy cores (subprocesses or compiles): scheduled first
def test_no_native_env_forces_fallback(tmp_path):
    status, fallback = _run_subprocess(tmp_path / "off", no_native=True)
    assert status == {"have": False, "error": "disabled by ACTSTORE_NO_NATIVE=1"}
    # Default environment: native when it is built (compared with the fallback's output).
    status, default = _run_subprocess(tmp_path / "on", no_native=False)
    if os.environ.get("ACTSTORE_REQUIRE_NATIVE", "") not in ("", "0"):
        assert status["have"], status["error"]
    for k in fallback:
        assert fallback[k].dtype == default[k].dtype
        np.testing.assert_array_equal(fallback[k], default[k])


# --- row_moments: the statistics pass of the writer -------------------------------------


@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (1000, 48), (4099, 385)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_row_moments_matches_numpy(n, d, threads):
    rng = np.random.default_rng(n * 7 + d)
    x = (rng.standard_normal((n, d)) * 3 + rng.standard_normal(d) * 50).astype(np.float32)
    shift = x[0].astype(np.float64)
    s1, s2, norm = nat.row_moments(x, shift, threads=threads)
    r1, r2, rn = nat.row_moments_numpy(x, shift)
    np.testing.assert_allclose(s1, r1, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(s2, r2, rtol=1e-12, atol=1e-9)
    assert abs(norm - rn) <= 1e-9 * max(1.0, rn)


def _row_order_moments(x64: np.ndarray, shift: np.ndarray, threads: int):
    """The kernel's arithmetic in its order: rows split into ``threads`` contiguous parts,
    each part's columns summed row after row from 0.0, each row's squares in column order
    (cumsum is sequential), the parts added in order."""
    n, d = x64.shape
    base, rem = divmod(n, threads)
    s1, s2, norm = np.zeros(d), np.zeros(d), 0.0
    r0 = 0
    for p in range(threads):
        r1 = r0 + base + (p < rem)
        c = x64[r0:r1] - shift
        a1, a2 = np.zeros(d), np.zeros(d)
        for row in c:  # row after row, as the kernel
            a1 += row
            a2 += row * row
        sq = np.cumsum(x64[r0:r1] * x64[r0:r1], axis=1)[:, -1] if r1 > r0 else np.zeros(0)
        part_norm = np.cumsum(np.concatenate([[0.0], np.sqrt(sq)]))[-1]
        s1, s2, norm = s1 + a1, s2 + a2, norm + part_norm
        r0 = r1
    return s1, s2, norm


@needs_native
@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (1027, 48), (4099, 385)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_row_moments_bit_exact_in_row_order_and_from_bf16_bits(n, d, threads):
    # The writer's statistics must not change with the kernel: row_moments keeps the
    # row-at-a-time order of its sums (any blocking of rows must not reorder them), and
    # row_moments_bf16 on bf16 bits gives row_moments on their float32 values, bit for bit.
    rng = np.random.default_rng(n * 11 + d)
    x = (rng.standard_normal((n, d)) * 3 + rng.standard_normal(d) * 50).astype(np.float32)
    bits = nat.fp32_to_bf16(x)
    xb = nat.bf16_to_fp32(bits)  # the bf16 values as float32
    if n * d * 4 < (1 << 20):
        threads = 1  # under 1 MiB the kernel runs on one thread whatever is asked
    # A shift with all 53 bits of mantissa: the sums then round, so their order shows.
    shift = x[0].astype(np.float64) + rng.random(d)
    for data, got in (
        (x, nat.row_moments(x, shift, threads=threads)),
        (xb, nat.row_moments(xb, shift, threads=threads)),
        (xb, nat.row_moments_bf16(bits, shift, threads=threads)),
    ):
        want = _row_order_moments(data.astype(np.float64), shift, threads)
        assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()
        assert np.float64(got[2]).tobytes() == np.float64(want[2]).tobytes()
    r1, r2, rn = nat.row_moments_bf16_numpy(bits, shift)
    np.testing.assert_allclose(r1, want[0], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(r2, want[1], rtol=1e-12, atol=1e-9)
    assert abs(rn - want[2]) <= 1e-9 * max(1.0, want[2])


def test_row_moments_propagates_nonfinite():
    x = np.ones((5, 4), dtype=np.float32)
    x[2, 1] = np.nan
    s1, s2, _ = nat.row_moments(x, np.zeros(4))
    assert np.isnan(s1[1]) and np.isfinite(s1[0])


def test_stats_precise_when_mean_dwarfs_spread():
    import torch

    from actstore.store.stats import RunningStats

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 16, generator=g, dtype=torch.float64) * 1e-2 + 1e4
    st = RunningStats(16)
    for part in x.float().split(3000):
        st.update(part)
    ref = x.float().double()
    np.testing.assert_allclose(st.var, ref.var(0, unbiased=False).numpy(), rtol=1e-6)
    np.testing.assert_allclose(st.mean, ref.mean(0).numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------
# scatter_rows

SCATTER = {
    "native": pytest.param(nat.scatter_rows, marks=needs_native, id="native"),
    "numpy": pytest.param(nat.scatter_rows_numpy, id="numpy"),
}


@pytest.mark.parametrize("impl", SCATTER.values())
@pytest.mark.parametrize("n,cols,threads", [(0, 8, 0), (1, 3, 1), (777, 384, 0), (20011, 384, 2)])
def test_scatter_matches_reference(impl, n, cols, threads):
    rng = np.random.default_rng(n + cols)
    src = rng.integers(0, 60000, size=(max(n, 1) + 13, cols), dtype=np.uint16)
    sizes = [n // 3 + 1, n // 2 + 1, n - n // 3 - n // 2 + 5]
    dsts = [np.full((s, cols), 7, dtype=np.uint16) for s in sizes]
    # Distinct destination rows: a random injective map into the destinations.
    slots = np.array([(k, r) for k, s in enumerate(sizes) for r in range(s)])[rng.permutation(sum(sizes))[:n]]
    dst_ids = slots[:, 0].astype(np.int32) if n else np.zeros(0, np.int32)
    dst_rows = slots[:, 1].astype(np.int64) if n else np.zeros(0, np.int64)
    rows = rng.integers(0, src.shape[0], size=n).astype(np.int64)
    want = [d.copy() for d in dsts]
    for i in range(n):
        want[dst_ids[i]][dst_rows[i]] = src[rows[i]]
    impl(src, rows, dsts, dst_ids, dst_rows, threads=threads)
    for got, exp in zip(dsts, want):
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize("impl", SCATTER.values())
@pytest.mark.parametrize(
    "case,exc,msg",
    [
        ("row", IndexError, "rows[1] = 10 is out of range for src with 10 rows"),
        ("dst_id", IndexError, "dst_ids[2] = 2 is out of range for 2 destinations"),
        ("dst_row", IndexError, "dst_rows[0] = 4 is out of range for dsts[0] with 4 rows"),
        ("width", ValueError, "dsts[1] rows are 12 bytes (3 x uint32) but src rows are 16 bytes (4 x uint32)"),
        ("dtype", ValueError, "dst_ids must be a 1-D int32 array"),
        ("length", ValueError, "len(rows)=3, len(dst_ids)=2 and len(dst_rows)=3 must be equal"),
    ],
)
def test_scatter_errors_are_one_line_and_write_nothing(impl, case, exc, msg):
    src = np.arange(40, dtype=np.uint32).reshape(10, 4)
    dsts = [np.zeros((4, 4), np.uint32), np.zeros((4, 4), np.uint32)]
    rows, ids, drows = np.array([0, 1, 2], np.int64), np.array([0, 1, 1], np.int32), np.array([1, 2, 3], np.int64)
    if case == "row":
        rows[1] = 10
    elif case == "dst_id":
        ids[2] = 2
    elif case == "dst_row":
        drows[0] = 4
    elif case == "width":
        dsts[1] = np.zeros((4, 3), np.uint32)
    elif case == "dtype":
        ids = ids.astype(np.int64)
    elif case == "length":
        ids = ids[:2]
    with pytest.raises(exc) as e:
        impl(src, rows, dsts, ids, drows)
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert all(not d.any() for d in dsts)


# -- decode_scatter: the loader's fused crc32c + decode + scatter -----------------------------


@needs_native
def test_crc32c_matches_google_crc32c_across_the_three_stream_split():
    import google_crc32c

    rng = np.random.default_rng(0)
    # Under 4096 bytes one stream runs; from 4096 on three, joined by crc32c_combine, with
    # a tail of 0-7 bytes past the thirds; 1 MiB and odd sizes as the loader's chunks.
    for n in [0, 1, 7, 8, 9, 4095, 4096, 4097, 4103, 4104, 12293, 99_999, (1 << 20) + 5]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert nat._C.crc32c(data) == google_crc32c.value(data), n


def _stored_chunks(preset: str, n_chunks: int, chunk_rows: int, d: int, rng):
    from actstore.store.codecs import PRESETS

    codec = PRESETS[preset]
    if codec.cname:
        codec = codec.with_typesize(2)
    raw = rng.integers(0, 1 << 16, (n_chunks, chunk_rows, d), dtype=np.uint16)
    return codec, raw, [codec.encode(raw[j]) for j in range(n_chunks)]


@needs_native
@pytest.mark.parametrize("preset", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("widen", [False, True])
def test_decode_scatter_equals_decode_then_scatter(preset, widen):
    if not nat.decode_scatter_ready(preset != "none"):
        pytest.skip("numcodecs' blosc_decompress_ctx was not found")
    rng = np.random.default_rng(1)
    cr, d, per = 48, 33, 40  # rows of a chunk not a power of two, odd width
    codec, raw, stored = _stored_chunks(preset, 3, cr, d, rng)
    slots = rng.permutation(2 * 70)[: 3 * per]  # distinct rows of two destinations
    ids, drows = (slots // 70).astype(np.int32), (slots % 70).astype(np.int64)
    rows = np.concatenate([np.sort(rng.choice(cr, per, replace=False)) for _ in range(3)]).astype(np.int64)
    order = [2, 0, 1]  # chunks in any order, each with its own span of the entries
    spans = np.array([(j * per, (j + 1) * per) for j in order], dtype=np.int64)
    out_dtype = np.float32 if widen else np.int16
    got = [np.zeros((70, d), out_dtype) for _ in range(2)]
    want = [np.zeros((70, d), out_dtype) for _ in range(2)]
    assert (
        nat.decode_scatter(
            [stored[j] for j in order], spans, rows, got, ids, drows, cr * d * 2, d * 2, preset != "none", widen
        )
        is None
    )
    for j in range(3):
        dec = np.empty((cr, d), np.uint16)
        codec.decode_into(stored[j], dec)
        assert np.array_equal(dec, raw[j])
        src = nat.bf16_to_fp32_numpy(dec) if widen else dec.view(np.int16)
        sl = slice(j * per, (j + 1) * per)
        nat.scatter_rows_numpy(src, rows[sl], want, ids[sl], drows[sl])
    for g, w in zip(got, want):
        assert np.array_equal(g.view(np.uint8), w.view(np.uint8))


@needs_native
def test_decode_scatter_names_the_first_bad_chunk_with_the_codecs_reason():
    if not nat.decode_scatter_ready(True):
        pytest.skip("numcodecs' blosc_decompress_ctx was not found")
    rng = np.random.default_rng(2)
    cr, d = 32, 16
    _, raw, stored = _stored_chunks("zstd", 2, cr, d, rng)
    rows = np.tile(np.arange(cr, dtype=np.int64), 2)
    ids, drows = np.zeros(2 * cr, np.int32), np.arange(2 * cr, dtype=np.int64)
    spans = np.array([(0, cr), (cr, 2 * cr)], dtype=np.int64)
    flipped = bytearray(stored[1])
    flipped[40] ^= 1
    out = [np.zeros((2 * cr, d), np.int16)]
    assert nat.decode_scatter(
        [stored[0], bytes(flipped)], spans, rows, out, ids, drows, cr * d * 2, d * 2, True, False
    ) == (
        1,
        "crc32c mismatch",
    )
    assert np.array_equal(out[0][:cr].view(np.uint16), raw[0]) and not out[0][cr:].any()  # chunk 0 done, then stop
    half = [np.zeros((2 * cr, d // 2), np.int16)]  # told chunks decode to half their size
    bad = nat.decode_scatter(stored, spans, rows, half, ids, drows, cr * d, d, True, False)
    assert bad == (0, f"decodes to {cr * d * 2} bytes, expected {cr * d}")
    with pytest.raises(IndexError, match="out of range"):
        nat.decode_scatter(stored, spans, rows + 1, out, ids, drows, cr * d * 2, d * 2, True, False)


# Frames of every codec and shuffle the store writes (format.py: typesize = the dtype's
# itemsize; bf16 and q16 2, int8/fp8 1; shuffle from the preset or the array's spec), with
# small block sizes so chunks span several blocks, blocks end inside rows, and the last
# block is a leftover (split rules differ for it). numcodecs' c-blosc makes lz4 blocks at
# least 64 KiB whatever blocksize asks, so lz4 chunks here are larger. decode_scatter decodes byte-shuffled
# (or unshuffled) zstd/lz4 frames straight into the rows and everything else through
# blosc_decompress_ctx + scatter; both must give the codec's own bytes.
_DIRECT_FRAMES = [
    # cname, shuffle, typesize, blocksize, row elements, chunk rows, direct?
    ("zstd", "shuffle", 2, 1 << 20, 384, 40, True),  # the zstd preset, one block
    ("zstd", "shuffle", 2, 1000, 33, 48, True),  # blocks end mid-row, leftover block
    ("lz4", "shuffle", 2, 1000, 33, 1100, True),  # lz4 splits blocks into byte planes
    ("lz4", "shuffle", 2, 1000, 64, 1024, True),  # blocks a whole number of rows
    ("zstd", "shuffle", 1, 1000, 33, 48, True),  # int8/fp8: typesize 1, no unshuffle
    ("lz4", "shuffle", 1, 700, 31, 2200, True),
    ("zstd", "noshuffle", 2, 1000, 33, 48, True),
    ("zstd", "shuffle", 4, 1000, 10, 48, True),  # other element sizes: plain unshuffle
    ("lz4", "bitshuffle", 2, 1000, 33, 1100, False),  # the lz4 preset and q16: fallback
    ("zstd", "bitshuffle", 2, 1000, 33, 48, False),
    ("zlib", "shuffle", 2, 1000, 33, 48, False),  # a codec the direct path does not carry
]


def _frame_chunks(cname, shuffle, typesize, blocksize, width, cr, n_chunks, rng, compressible=True):
    from actstore.store.codecs import ChunkCodec

    codec = ChunkCodec(cname, 1, shuffle, blocksize, typesize)
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32}[typesize]
    if compressible:  # bf16-like: few distinct high bytes, so blocks compress
        raw = (rng.normal(size=(n_chunks, cr, width)).astype(np.float32).view(np.uint32) >> (32 - 8 * typesize)).astype(
            dt
        )
    else:
        raw = rng.integers(0, np.iinfo(dt).max, (n_chunks, cr, width), dtype=dt, endpoint=True)
    return codec, raw, [np.frombuffer(codec.encode(raw[j]), np.uint8).tobytes() for j in range(n_chunks)]


def _scatter_both_ways(stored, cr, row_bytes, widen, rng):
    """decode_scatter of stored with the direct decode on and off: (on, off) outputs,
    results, and the (direct, fallback) counts the on call added."""
    n_chunks = len(stored)
    dst_rows = n_chunks * cr // 2 + 1
    per = cr - 3  # leave some rows of each chunk unread, as a resumed epoch does
    rows = np.concatenate([np.sort(rng.choice(cr, per, replace=False)) for _ in range(n_chunks)]).astype(np.int64)
    rows[:per] = rng.permutation(rows[:per])  # entries need not come in row order
    slots = rng.permutation(2 * dst_rows)[: n_chunks * per]
    ids, drows = (slots // dst_rows).astype(np.int32), (slots % dst_rows).astype(np.int64)
    spans = np.array([(j * per, (j + 1) * per) for j in range(n_chunks)], dtype=np.int64)
    out_dtype, width = (np.float32, row_bytes // 2) if widen else (np.uint8, row_bytes)
    outs, results, counts = [], [], None
    prev = nat.decode_direct()
    try:
        for on in (True, False):
            nat.decode_direct(on)
            before = nat.decode_direct()
            got = [np.zeros((dst_rows, width), out_dtype) for _ in range(2)]
            results.append(
                nat.decode_scatter(stored, spans, rows, got, ids, drows, cr * row_bytes, row_bytes, True, widen)
            )
            if on:
                after = nat.decode_direct()
                counts = (after[1] - before[1], after[2] - before[2])
            outs.append(got)
    finally:
        nat.decode_direct(prev[0])
    return outs, results, counts, (spans, rows, ids, drows, dst_rows)


@needs_native
@pytest.mark.parametrize(
    "frame,widen",
    # widen (bf16 bits -> float32) applies to 2-byte elements only
    [(f, w) for f in _DIRECT_FRAMES for w in (False, True) if f[2] == 2 or not w],
    ids=lambda v: "-".join(map(str, v[:4])) if isinstance(v, tuple) else f"widen{v}",
)
def test_decode_scatter_direct_blosc_decode_is_bit_identical(frame, widen):
    if not nat.decode_scatter_ready(True):
        pytest.skip("numcodecs' blosc_decompress_ctx was not found")
    cname, shuffle, ts, blocksize, width, cr, direct = frame
    rng = np.random.default_rng(zlib.crc32(repr(frame).encode()))
    codec, raw, stored = _frame_chunks(cname, shuffle, ts, blocksize, width, cr, 3, rng)
    row_bytes = width * ts
    (on, off), (r_on, r_off), counts, (spans, rows, ids, drows, _) = _scatter_both_ways(
        stored, cr, row_bytes, widen, rng
    )
    assert r_on is None and r_off is None
    assert counts == ((3, 0) if direct else (0, 3))
    want = [np.zeros_like(o) for o in on]
    for j in range(3):
        dec = np.empty_like(raw[j])
        codec.decode_into(stored[j], dec)
        assert np.array_equal(dec, raw[j])
        src = nat.bf16_to_fp32_numpy(dec) if widen else dec.view(np.uint8)
        sl = slice(*spans[j])
        nat.scatter_rows_numpy(src, rows[sl], want, ids[sl], drows[sl])
    for a, b, w in zip(on, off, want):
        assert np.array_equal(a.view(np.uint8), w.view(np.uint8))
        assert np.array_equal(b.view(np.uint8), w.view(np.uint8))


@needs_native
@pytest.mark.parametrize("cname", ["zstd", "lz4"])
def test_decode_scatter_direct_copies_memcpyed_frames(cname):
    # Incompressible bytes: Blosc stores the chunk raw after the header (flag 0x2).
    if not nat.decode_scatter_ready(True):
        pytest.skip("numcodecs' blosc_decompress_ctx was not found")
    rng = np.random.default_rng(5)
    cr = 48 if cname == "zstd" else 1100
    codec, raw, stored = _frame_chunks(cname, "shuffle", 2, 1000, 33, cr, 2, rng, compressible=False)
    assert all(s[2] & 0x2 for s in stored), "expected memcpyed frames"
    for widen in (False, True):
        (on, off), results, counts, _ = _scatter_both_ways(stored, cr, 66, widen, rng)
        assert results == [None, None] and counts == (2, 0)
        assert all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(on, off))
        assert any(a.view(np.uint8).any() for a in on)


def _recrc(frame: bytes) -> bytes:
    return frame + int(nat._C.crc32c(frame)).to_bytes(4, "little")


def _corrupt(stored: bytes, how: str) -> bytes:
    f = bytearray(stored[:-4])  # the Blosc frame, without its crc32c
    nblocks = -(-int.from_bytes(f[4:8], "little") // int.from_bytes(f[8:12], "little"))
    last_start = int.from_bytes(f[16 + 4 * (nblocks - 1) : 20 + 4 * (nblocks - 1)], "little")
    if how == "version":
        f[0] = 3
    elif how == "future_flag":
        f[2] |= 0x08
    elif how == "compformat":
        f[2] = (f[2] & 0x1F) | (7 << 5)
    elif how == "compversion":
        f[1] = 9
    elif how == "bstart":
        f[16:20] = (len(f) + 10).to_bytes(4, "little")
    elif how == "stream_size":
        f[last_start : last_start + 4] = (len(f)).to_bytes(4, "little")
    elif how == "stream_bytes":  # garbage inside the first block's compressed stream
        first = int.from_bytes(f[16:20], "little")
        for k in range(first + 4, first + 24):
            f[k] ^= 0x5A
    elif how == "blocksize":
        f[8:12] = (0).to_bytes(4, "little")
    return _recrc(bytes(f))


@needs_native
@pytest.mark.parametrize("cname", ["zstd", "lz4"])
@pytest.mark.parametrize(
    "how", ["version", "future_flag", "compformat", "compversion", "bstart", "stream_size", "stream_bytes", "blocksize"]
)
def test_decode_scatter_direct_gives_the_same_reason_for_corrupted_frames(cname, how):
    if not nat.decode_scatter_ready(True):
        pytest.skip("numcodecs' blosc_decompress_ctx was not found")
    rng = np.random.default_rng(6)
    cr = 48 if cname == "zstd" else 1100
    _, _, stored = _frame_chunks(cname, "shuffle", 2, 1000, 33, cr, 2, rng)
    assert int.from_bytes(stored[1][8:12], "little") < cr * 66  # several blocks
    stored[1] = _corrupt(stored[1], how)
    (on, off), (r_on, r_off), _, (spans, rows, ids, drows, dst_rows) = _scatter_both_ways(stored, cr, 66, False, rng)
    assert r_on == r_off
    # Both paths write the good chunk 0 and the same bytes for chunk 1: nothing when it
    # fails (the direct decode writes only once every block decoded), else the same rows.
    assert all(np.array_equal(a, b) for a, b in zip(on, off))
    if r_on is not None:
        assert r_on[0] == 1 and "\n" not in r_on[1]
        assert r_on[1].startswith("error during blosc decompression")
        touched = np.zeros(2 * dst_rows, bool)
        touched[ids[spans[1][0] : spans[1][1]] * dst_rows + drows[spans[1][0] : spans[1][1]]] = True
        stacked = np.concatenate(on)
        assert not stacked[touched].any()
