"""Native CPU kernels (``actstore._C``) with pure-NumPy fallbacks.

Every function here runs the C++ kernel when the extension is built and loads,
and otherwise a NumPy implementation that gives bit-identical results, raises
the same exception types for the same bad input, and is only slower. The
native kernels release the GIL and split the work over ``threads`` threads.

Set ``ACTSTORE_NO_NATIVE=1`` to force the fallbacks (for comparison and for
debugging). ``HAVE_NATIVE`` says which path is live, ``NATIVE_ERROR`` why the
extension is not used.

bfloat16 values are carried as their uint16 bit patterns (see the storage
format in docs: zarr has no bfloat16 dtype). View them as torch bfloat16 with
``torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)``.

Public API::

    HAVE_NATIVE: bool
    NATIVE_ERROR: str | None
    default_threads() -> int
    gather_rows(sources, src_ids, rows, out=None, threads=0) -> np.ndarray
    fp32_to_bf16(x, out=None, threads=0) -> np.ndarray  # uint16 bits
    bf16_to_fp32(x, out=None, threads=0) -> np.ndarray  # float32
    scatter_rows(src, rows, dsts, dst_ids, dst_rows, threads=0) -> None  # rows of src into several outputs
    row_moments(x, shift, threads=0) -> (sum, sum of squares, sum of row norms)  # float64, about shift
    decode_scatter_ready(blosc) -> bool  # decode_scatter usable (native, with numcodecs' Blosc)
    decode_scatter(chunks, spans, rows, dsts, dst_ids, dst_rows, chunk_bytes, row_bytes, blosc, widen)
        -> None | (j, reason)  # crc32c + decode + scatter of stored chunks, one call (native only:
        # its fallback is the loader's per-chunk path, ChunkReader.decode + scatter_rows)
    decode_direct(enable=None) -> (enabled, direct, fallback)  # decode_scatter's direct Blosc
        # decode switch and chunk counts (native only; None without the extension)
    row_moments_bf16(bits, shift, threads=0) -> the same for bf16 bits, without a float32 copy
    gather_rows_numpy, fp32_to_bf16_numpy, bf16_to_fp32_numpy, scatter_rows_numpy, row_moments_numpy,
    row_moments_bf16_numpy  # fallbacks
"""

from __future__ import annotations

import operator
import os
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "HAVE_NATIVE",
    "NATIVE_ERROR",
    "default_threads",
    "gather_rows",
    "scatter_rows",
    "fp32_to_bf16",
    "bf16_to_fp32",
    "row_moments",
    "decode_scatter_ready",
    "decode_scatter",
    "decode_direct",
    "row_moments_bf16",
    "gather_rows_numpy",
    "scatter_rows_numpy",
    "fp32_to_bf16_numpy",
    "bf16_to_fp32_numpy",
    "row_moments_numpy",
    "row_moments_bf16_numpy",
]

# Must equal kAbiVersion in bindings/module.cpp: a stale build (e.g. an old
# in-place .so after a signature change) is refused rather than misused.
_ABI_VERSION = 6


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _load_native():
    """Return (module or None, reason it is not used or None)."""
    if _env_flag("ACTSTORE_NO_NATIVE"):
        return None, "disabled by ACTSTORE_NO_NATIVE=1"
    try:
        from actstore import _C
    except ImportError as e:
        return None, (
            f"actstore._C could not be imported ({type(e).__name__}: {e}); "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    abi = getattr(_C, "ABI_VERSION", None)
    if abi != _ABI_VERSION:
        return None, (
            f"actstore._C is a stale build (ABI_VERSION {abi}, expected {_ABI_VERSION}); "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    return _C, None


_C, NATIVE_ERROR = _load_native()
HAVE_NATIVE: bool = _C is not None
NATIVE_ERROR: Optional[str]

# Elements per step of the NumPy bf16 rounding: bounds the temporaries to a
# few MiB (cache-sized) instead of several copies of a large input.
_NUMPY_CHUNK = 1 << 20


def default_threads() -> int:
    """Worker threads used when ``threads=0``: min(CPU count, 8)."""
    if _C is not None:
        return int(_C.default_threads())
    return max(1, min(os.cpu_count() or 1, 8))


# ---------------------------------------------------------------------------
# Validation shared by the fallbacks. The checks, their order, the exception
# types and the messages mirror bindings/module.cpp.


def _ndarray(obj, fn: str, name: str) -> np.ndarray:
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, got {type(obj).__name__}")
    return obj


def _c_contiguous(a: np.ndarray, fn: str, name: str) -> None:
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{fn}: {name} must be C-contiguous (shape {a.shape}, dtype {a.dtype}); pass numpy.ascontiguousarray(...)"
        )


def _writeable(a: np.ndarray, fn: str, name: str) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{fn}: {name} is read-only")


def _plain_data(a: np.ndarray, fn: str, name: str) -> None:
    if a.dtype.hasobject:
        raise ValueError(f"{fn}: {name} has dtype {a.dtype}, which holds Python objects; only plain data can be copied")


def _threads(threads, fn: str) -> int:
    t = operator.index(threads)  # TypeError for floats, as in the binding
    if t < 0:
        raise ValueError(f"{fn}: threads must be >= 0 (0 = default), got {t}")
    return t


_I16 = (np.dtype(np.uint16), np.dtype(np.int16))


def _check_row_arrays(
    arrays, fn: str, label: str, ref: np.ndarray, ref_name: str, *, writeable: bool, overlap: str
) -> list:
    """Validate a sequence of 2-D row arrays whose rows must be as wide (in bytes) as
    ``ref``'s and must not overlap it; same checks, order and messages as the binding."""
    row_bytes = ref.itemsize * ref.shape[1]
    checked = []
    for k, a in enumerate(arrays):
        name = f"{label}[{k}]"
        a = _ndarray(a, fn, name)
        if a.ndim != 2:
            raise ValueError(f"{fn}: {name} must be 2-D (rows, cols), got shape {a.shape}")
        _c_contiguous(a, fn, name)
        if writeable:
            _writeable(a, fn, name)
        _plain_data(a, fn, name)
        width = a.itemsize * a.shape[1]
        if width != row_bytes:
            raise ValueError(
                f"{fn}: {name} rows are {width} bytes ({a.shape[1]} x {a.dtype}) "
                f"but {ref_name} rows are {row_bytes} bytes ({ref.shape[1]} x {ref.dtype})"
            )
        if np.may_share_memory(a, ref):
            raise ValueError(overlap.format(fn=fn, name=name))
        checked.append(a)
    return checked


def _check_gather(sources, src_ids, rows, out, threads) -> list:
    """Validate gather_rows arguments; return the sources as a list of arrays."""
    fn = "gather_rows"
    _threads(threads, fn)
    out = _ndarray(out, fn, "out")
    if out.ndim != 2:
        raise ValueError(f"{fn}: out must be 2-D (rows, cols), got shape {out.shape}")
    _c_contiguous(out, fn, "out")
    _writeable(out, fn, "out")
    _plain_data(out, fn, "out")

    src_ids = _ndarray(src_ids, fn, "src_ids")
    rows = _ndarray(rows, fn, "rows")
    if src_ids.dtype != np.int32 or src_ids.ndim != 1:
        raise ValueError(f"{fn}: src_ids must be a 1-D int32 array, got dtype {src_ids.dtype} shape {src_ids.shape}")
    if rows.dtype != np.int64 or rows.ndim != 1:
        raise ValueError(f"{fn}: rows must be a 1-D int64 array, got dtype {rows.dtype} shape {rows.shape}")
    _c_contiguous(src_ids, fn, "src_ids")
    _c_contiguous(rows, fn, "rows")
    n = out.shape[0]
    if src_ids.shape[0] != n or rows.shape[0] != n:
        raise ValueError(
            f"{fn}: len(src_ids)={src_ids.shape[0]}, len(rows)={rows.shape[0]} and out.shape[0]={n} must be equal"
        )

    srcs = _check_row_arrays(
        sources, fn, "sources", out, "out", writeable=False, overlap="{fn}: out overlaps {name} in memory"
    )

    if n:
        # Vectorized bounds checks; report the first bad position like the C++ loop.
        bad_src = (src_ids < 0) | (src_ids >= len(srcs))
        if bad_src.any():
            i = int(np.argmax(bad_src))
            raise IndexError(f"{fn}: src_ids[{i}] = {int(src_ids[i])} is out of range for {len(srcs)} sources")
        counts = np.fromiter((a.shape[0] for a in srcs), dtype=np.int64, count=len(srcs))
        limit = counts[src_ids]
        bad_row = (rows < 0) | (rows >= limit)
        if bad_row.any():
            i = int(np.argmax(bad_row))
            s = int(src_ids[i])
            raise IndexError(
                f"{fn}: rows[{i}] = {int(rows[i])} is out of range for sources[{s}] with {int(counts[s])} rows"
            )
    return srcs


def _check_convert(x, out, threads, fn, x_dtypes, x_desc, out_dtypes, out_desc) -> None:
    _threads(threads, fn)
    x = _ndarray(x, fn, "x")
    out = _ndarray(out, fn, "out")
    if x.dtype not in x_dtypes:
        raise ValueError(f"{fn}: x must be {x_desc}, got {x.dtype}")
    if out.dtype not in out_dtypes:
        raise ValueError(f"{fn}: out must be {out_desc}, got {out.dtype}")
    _c_contiguous(x, fn, "x")
    _c_contiguous(out, fn, "out")
    _writeable(out, fn, "out")
    if x.size != out.size:
        raise ValueError(f"{fn}: x has {x.size} elements but out has {out.size}")
    if np.may_share_memory(x, out):
        raise ValueError(f"{fn}: out overlaps x in memory")


def _check_fp32_to_bf16(x, out, threads) -> None:
    _check_convert(
        x,
        out,
        threads,
        "fp32_to_bf16",
        (np.dtype(np.float32),),
        "float32",
        _I16,
        "uint16 (or int16) bf16 bits",
    )


def _check_bf16_to_fp32(x, out, threads) -> None:
    _check_convert(
        x,
        out,
        threads,
        "bf16_to_fp32",
        _I16,
        "uint16 (or int16) bf16 bits",
        (np.dtype(np.float32),),
        "float32",
    )


# ---------------------------------------------------------------------------
# NumPy fallbacks. `threads` is validated and otherwise ignored.


def gather_rows_numpy(
    sources: Sequence[np.ndarray],
    src_ids: np.ndarray,
    rows: np.ndarray,
    out: Optional[np.ndarray] = None,
    threads: int = 0,
) -> np.ndarray:
    """NumPy version of :func:`gather_rows` (same arguments, result and errors)."""
    if out is None:
        out = _alloc_gather_out(sources, rows)
    srcs = _check_gather(sources, src_ids, rows, out, threads)
    n = out.shape[0]
    if n == 0 or out.nbytes == 0:
        return out
    # Work on bytes: sources may have other dtypes than out, only widths match.
    out_b = out.view(np.uint8)
    if len(srcs) == 1:
        # mode="clip": indices are already checked, and "raise" would buffer `out`.
        np.take(srcs[0].view(np.uint8), rows, axis=0, out=out_b, mode="clip")
        return out
    # One fancy-index copy per source that is actually referenced.
    order = np.argsort(src_ids, kind="stable")
    bounds = np.searchsorted(src_ids[order], np.arange(len(srcs) + 1))
    for s in range(len(srcs)):
        a, b = bounds[s], bounds[s + 1]
        if a == b:
            continue
        idx = order[a:b]
        out_b[idx] = srcs[s].view(np.uint8)[rows[idx]]
    return out


def fp32_to_bf16_numpy(x: np.ndarray, out: Optional[np.ndarray] = None, threads: int = 0) -> np.ndarray:
    """NumPy version of :func:`fp32_to_bf16` (same arguments, result and errors)."""
    if out is None:
        out = np.empty(_shape_of(x, "fp32_to_bf16"), dtype=np.uint16)
    _check_fp32_to_bf16(x, out, threads)
    bits = x.reshape(-1).view(np.uint32)
    dst = out.reshape(-1).view(np.uint16)
    for start in range(0, bits.size, _NUMPY_CHUNK):
        b = bits[start : start + _NUMPY_CHUNK]
        # Round to nearest even: add 0x7FFF plus the lowest kept bit, then
        # truncate. Only NaN bit patterns can wrap around uint32 here, and they
        # are replaced below.
        r = np.right_shift(b, 16)
        r &= 1
        r += 0x7FFF
        r += b
        r >>= 16
        # NaN: keep sign and upper payload, set the quiet bit so it stays NaN.
        nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        if nan.any():
            r[nan] = (b[nan] >> 16) | np.uint32(0x0040)
        np.copyto(dst[start : start + _NUMPY_CHUNK], r, casting="unsafe")
    return out


def bf16_to_fp32_numpy(x: np.ndarray, out: Optional[np.ndarray] = None, threads: int = 0) -> np.ndarray:
    """NumPy version of :func:`bf16_to_fp32` (same arguments, result and errors)."""
    if out is None:
        out = np.empty(_shape_of(x, "bf16_to_fp32"), dtype=np.float32)
    _check_bf16_to_fp32(x, out, threads)
    # Exact: a bf16 is the upper 16 bits of a float32.
    np.left_shift(x.reshape(-1).view(np.uint16), 16, out=out.reshape(-1).view(np.uint32), dtype=np.uint32)
    return out


def _shape_of(x, fn: str) -> tuple:
    return _ndarray(x, fn, "x").shape


def _alloc_gather_out(sources, rows) -> np.ndarray:
    """Output for gather_rows(out=None): (len(rows), cols) with sources[0]'s dtype."""
    fn = "gather_rows"
    rows = _ndarray(rows, fn, "rows")
    if rows.ndim != 1:
        raise ValueError(f"{fn}: rows must be a 1-D int64 array, got dtype {rows.dtype} shape {rows.shape}")
    if len(sources) == 0:
        raise ValueError(f"{fn}: sources is empty; pass out= to give the row width and dtype")
    s0 = _ndarray(sources[0], fn, "sources[0]")
    if s0.ndim != 2:
        raise ValueError(f"{fn}: sources[0] must be 2-D (rows, cols), got shape {s0.shape}")
    return np.empty((rows.shape[0], s0.shape[1]), dtype=s0.dtype)


# ---------------------------------------------------------------------------
# Public entry points: native when available, else the fallbacks.


def gather_rows(
    sources: Sequence[np.ndarray],
    src_ids: np.ndarray,
    rows: np.ndarray,
    out: Optional[np.ndarray] = None,
    threads: int = 0,
) -> np.ndarray:
    """Gather rows from several sources: ``out[i, :] = sources[src_ids[i]][rows[i], :]``.

    Args:
        sources: sequence of 2-D C-contiguous arrays, shape (rows_k, cols_k). Every
            row must be as many bytes as a row of ``out`` (itemsize * cols); dtypes
            may differ, bytes are copied unchanged.
        src_ids: int32, shape (n,): which source each output row comes from.
        rows: int64, shape (n,): row index within that source (no negative indexing).
        out: writable 2-D C-contiguous array, shape (n, cols). None allocates
            ``(n, sources[0].shape[1])`` with ``sources[0].dtype``.
        threads: worker threads; 0 = :func:`default_threads`. Copies under 1 MiB
            run on one thread.

    Returns:
        ``out``.

    Raises:
        IndexError: a source id or row is out of range (message names the position,
            the value and the source's row count). Checked before anything is written.
        ValueError: wrong index dtype or ndim, non-contiguous array, row widths that
            differ, length mismatch, read-only or overlapping ``out``.
        TypeError: an argument is not a numpy.ndarray.
    """
    if out is None:
        out = _alloc_gather_out(sources, rows)
    if _C is None:
        return gather_rows_numpy(sources, src_ids, rows, out, threads)
    _C.gather_rows(sources, src_ids, rows, out, threads)
    return out


def _check_scatter(src, rows, dsts, dst_ids, dst_rows, threads) -> list:
    """Validate scatter_rows arguments (same order and messages as the binding)."""
    fn = "scatter_rows"
    _threads(threads, fn)
    src = _ndarray(src, fn, "src")
    if src.ndim != 2:
        raise ValueError(f"{fn}: src must be 2-D (rows, cols), got shape {src.shape}")
    _c_contiguous(src, fn, "src")
    _plain_data(src, fn, "src")
    rows, dst_ids, dst_rows = (
        _ndarray(rows, fn, "rows"),
        _ndarray(dst_ids, fn, "dst_ids"),
        _ndarray(dst_rows, fn, "dst_rows"),
    )
    for name, a, dt, desc in (
        ("rows", rows, np.int64, "int64"),
        ("dst_ids", dst_ids, np.int32, "int32"),
        ("dst_rows", dst_rows, np.int64, "int64"),
    ):
        if a.dtype != dt or a.ndim != 1:
            raise ValueError(f"{fn}: {name} must be a 1-D {desc} array, got dtype {a.dtype} shape {a.shape}")
    for name, a in (("rows", rows), ("dst_ids", dst_ids), ("dst_rows", dst_rows)):
        _c_contiguous(a, fn, name)
    n = rows.shape[0]
    if dst_ids.shape[0] != n or dst_rows.shape[0] != n:
        raise ValueError(
            f"{fn}: len(rows)={n}, len(dst_ids)={dst_ids.shape[0]} and len(dst_rows)={dst_rows.shape[0]} must be equal"
        )
    out = _check_row_arrays(dsts, fn, "dsts", src, "src", writeable=True, overlap="{fn}: {name} overlaps src in memory")
    if n:
        bad = (rows < 0) | (rows >= src.shape[0])
        if bad.any():
            i = int(np.argmax(bad))
            raise IndexError(f"{fn}: rows[{i}] = {int(rows[i])} is out of range for src with {src.shape[0]} rows")
        bad = (dst_ids < 0) | (dst_ids >= len(out))
        if bad.any():
            i = int(np.argmax(bad))
            raise IndexError(f"{fn}: dst_ids[{i}] = {int(dst_ids[i])} is out of range for {len(out)} destinations")
        counts = np.fromiter((a.shape[0] for a in out), dtype=np.int64, count=len(out))
        bad = (dst_rows < 0) | (dst_rows >= counts[dst_ids])
        if bad.any():
            i = int(np.argmax(bad))
            d = int(dst_ids[i])
            raise IndexError(
                f"{fn}: dst_rows[{i}] = {int(dst_rows[i])} is out of range for dsts[{d}] with {int(counts[d])} rows"
            )
    return out


def scatter_rows_numpy(
    src: np.ndarray,
    rows: np.ndarray,
    dsts: Sequence[np.ndarray],
    dst_ids: np.ndarray,
    dst_rows: np.ndarray,
    threads: int = 0,
) -> None:
    """NumPy version of :func:`scatter_rows` (same arguments, result and errors)."""
    outs = _check_scatter(src, rows, dsts, dst_ids, dst_rows, threads)
    if rows.size == 0 or src.nbytes == 0:
        return
    src_b = src.view(np.uint8)
    for k in np.unique(dst_ids):
        sel = np.flatnonzero(dst_ids == k)
        outs[int(k)].view(np.uint8)[dst_rows[sel]] = src_b[rows[sel]]


def scatter_rows(
    src: np.ndarray,
    rows: np.ndarray,
    dsts: Sequence[np.ndarray],
    dst_ids: np.ndarray,
    dst_rows: np.ndarray,
    threads: int = 0,
) -> None:
    """Scatter rows of one source into several outputs:
    ``dsts[dst_ids[i]][dst_rows[i], :] = src[rows[i], :]``.

    Args:
        src: 2-D C-contiguous array ``(rows_src, cols)``.
        rows: int64 ``(n,)``: row of ``src`` for each entry.
        dsts: sequence of writable 2-D C-contiguous arrays whose rows are as many bytes
            as a row of ``src`` (dtypes may differ; bytes are copied unchanged).
        dst_ids: int32 ``(n,)``: which destination; dst_rows: int64 ``(n,)``: its row.
        threads: worker threads; 0 = :func:`default_threads`. Copies under 1 MiB run on
            one thread.

    Raises:
        IndexError: an index out of range (message names the position, the value and the
            bound), checked before anything is written.
        ValueError / TypeError: wrong dtypes, shapes, widths, non-contiguous, read-only
            or overlapping arrays.
    """
    if _C is None:
        return scatter_rows_numpy(src, rows, dsts, dst_ids, dst_rows, threads)
    _C.scatter_rows(src, rows, dsts, dst_ids, dst_rows, threads)


def fp32_to_bf16(x: np.ndarray, out: Optional[np.ndarray] = None, threads: int = 0) -> np.ndarray:
    """Round float32 to bfloat16 bits, round-to-nearest-even.

    Args:
        x: float32, any shape, C-contiguous.
        out: uint16 (or int16), C-contiguous, same number of elements as ``x``.
            None allocates uint16 with ``x.shape``.
        threads: worker threads; 0 = :func:`default_threads`. Inputs under about
            170k elements (1 MiB of traffic) run on one thread.

    Returns:
        ``out``: bf16 bit patterns. Bit-identical to
        ``torch.from_numpy(x).to(torch.bfloat16).view(torch.int16)`` for every
        non-NaN input (values past the largest bf16 round to +-inf). NaN stays NaN:
        sign and upper payload kept, quiet bit set (torch returns 0x7FC0 instead).
    """
    if out is None:
        out = np.empty(_shape_of(x, "fp32_to_bf16"), dtype=np.uint16)
    if _C is None:
        return fp32_to_bf16_numpy(x, out, threads)
    _C.fp32_to_bf16(x, out, threads)
    return out


def bf16_to_fp32(x: np.ndarray, out: Optional[np.ndarray] = None, threads: int = 0) -> np.ndarray:
    """Widen bfloat16 bits to float32 (exact: the bits shifted left by 16).

    Args:
        x: uint16 (or int16) bf16 bit patterns, any shape, C-contiguous.
        out: float32, C-contiguous, same number of elements as ``x``. None
            allocates float32 with ``x.shape``.
        threads: worker threads; 0 = :func:`default_threads`.

    Returns:
        ``out``.
    """
    if out is None:
        out = np.empty(_shape_of(x, "bf16_to_fp32"), dtype=np.float32)
    if _C is None:
        return bf16_to_fp32_numpy(x, out, threads)
    _C.bf16_to_fp32(x, out, threads)
    return out


def row_moments_numpy(x: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """NumPy version of :func:`row_moments`."""
    x64 = x.astype(np.float64)
    c = x64 - shift
    return c.sum(0), (c * c).sum(0), float(np.sqrt((x64 * x64).sum(1)).sum())


def row_moments(x: np.ndarray, shift: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Shifted column moments of ``x`` for mergeable statistics.

    Args:
        x: float32 ``[n, d]``, C-contiguous.
        shift: float64 ``[d]``, a value near the column means (subtracted before
            squaring so that M2 does not cancel).

    Returns:
        ``(sum [d], sumsq [d], norm_sum)`` in float64: the sums of ``x - shift`` and of
        its squares per column, and the sum of the rows' L2 norms. NaN/inf propagate.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    if _C is None:
        return row_moments_numpy(x, shift)
    return _moments(_C.row_moments, x, shift, threads)


def _moments(native, x: np.ndarray, shift: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Call a native moments kernel (``row_moments``, ``row_moments_bf16``) on checked arrays."""
    s1 = np.empty(x.shape[1], dtype=np.float64)
    s2 = np.empty(x.shape[1], dtype=np.float64)
    norm = native(x, shift, s1, s2, threads)
    return s1, s2, float(norm)


_BLOSC_LOADED: Optional[bool] = None


def decode_scatter_ready(blosc: bool) -> bool:
    """Whether :func:`decode_scatter` can run here: the extension is in use and, for Blosc
    chunks, it found ``blosc_decompress_ctx`` in numcodecs' own Blosc library (the one the
    Python path decodes with)."""
    global _BLOSC_LOADED
    if _C is None:
        return False
    if not blosc:
        return True
    if _BLOSC_LOADED is None:
        import numcodecs.blosc

        _BLOSC_LOADED = bool(_C.load_blosc(numcodecs.blosc.__file__))
    return _BLOSC_LOADED


def decode_scatter(
    chunks: Sequence,
    spans: np.ndarray,
    rows: np.ndarray,
    dsts: Sequence[np.ndarray],
    dst_ids: np.ndarray,
    dst_rows: np.ndarray,
    chunk_bytes: int,
    row_bytes: int,
    blosc: bool,
    widen: bool,
):
    """Verify, decode and scatter stored chunks with the GIL released once.

    Args:
        chunks: the stored bytes of each chunk (bytes-like, crc32c last).
        spans: int64 ``(len(chunks), 2)``: entries ``[start, stop)`` of ``rows``,
            ``dst_ids`` and ``dst_rows`` that belong to each chunk.
        rows: int64 ``(n,)``: the row within its chunk.
        dsts, dst_ids, dst_rows: as :func:`scatter_rows`.
        chunk_bytes: decoded bytes of one chunk; row_bytes: bytes of one stored row.
        blosc: the chunks are Blosc frames (else raw bytes).
        widen: widen bf16 bits to float32 before the scatter (``dsts`` rows are
            ``2 * row_bytes``).

    Returns:
        None, or ``(j, reason)`` for the first chunk that fails its crc32c or decode
        (chunks before it are scattered), with the reason the Python codec gives.

    Raises:
        RuntimeError: called where :func:`decode_scatter_ready` is False.
        IndexError / ValueError / TypeError: bad arguments, before anything is written.
    """
    if not decode_scatter_ready(blosc):
        raise RuntimeError("decode_scatter needs actstore._C (and numcodecs' Blosc); check decode_scatter_ready first")
    return _C.decode_scatter(chunks, spans, rows, dsts, dst_ids, dst_rows, chunk_bytes, row_bytes, blosc, widen)


def decode_direct(enable: Optional[bool] = None) -> Optional[tuple[bool, int, int]]:
    """:func:`decode_scatter` decodes Blosc frames of byte shuffle (or none) with zstd or
    lz4 block by block straight into the destination rows; other frames (bit shuffle, ...)
    are decoded whole and then scattered. Turn the direct decode on or off (``enable``;
    None leaves it) and return ``(enabled, chunks decoded directly, chunks that fell
    back)`` counted since the process loaded the extension; None without it. For tests
    and benchmarks: both ways give the same bytes."""
    if _C is None:
        return None
    on, direct, fallback = _C.decode_direct(-1 if enable is None else int(bool(enable)))
    return bool(on), int(direct), int(fallback)


def row_moments_bf16_numpy(x: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """NumPy version of :func:`row_moments_bf16`."""
    return row_moments_numpy(bf16_to_fp32_numpy(np.ascontiguousarray(x)), shift)


def row_moments_bf16(x: np.ndarray, shift: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`row_moments` of bfloat16 values given as their bits, without a float32 copy.

    Args:
        x: uint16 (or int16) bf16 bits ``[n, d]``.
        shift: float64 ``[d]``, as for :func:`row_moments`.

    Returns:
        what ``row_moments(bf16_to_fp32(x), shift, threads)`` returns, bit for bit (the
        widening is exact and the rows are summed in the same order): ``(sum [d], sumsq
        [d], norm_sum)`` in float64.
    """
    x = np.ascontiguousarray(x)
    if x.dtype not in _I16 or x.ndim != 2:
        raise ValueError(f"row_moments_bf16: x must be a 2-D uint16 (or int16) array of bf16 bits, got {x.dtype}")
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    if _C is None:
        return row_moments_bf16_numpy(x, shift)
    return _moments(_C.row_moments_bf16, x, shift, threads)
