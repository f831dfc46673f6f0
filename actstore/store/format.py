"""Store format v1: the schema, the key layout and the zarr metadata documents.

docs/FORMAT.md is the human description of everything here; keep the two in step.

Key layout (all keys relative to the store root)::

    zarr.json                                 root group; attributes["actstore"] = schema
    segments/zarr.json                        group
    segments/<seg>/zarr.json                  group, one per writer
    segments/<seg>/acts/<hook>/zarr.json      (rows, d) array, sharded along rows
    segments/<seg>/acts/<hook>/c/<s>/0        shard s (c/<s> for 1-D arrays)
    segments/<seg>/scales/<hook>/...          (rows,) float32 per-row scale (fp8/int8/q16 only)
    segments/<seg>/tokens/{token,doc,pos,flags}/...   (rows,) token-aligned columns
    segments/<seg>/commits/<seq>/zarr.json    commit records (group attributes); the newest is the truth
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import DTypeError
from .codecs import ChunkCodec, codec_from_preset, codec_from_zarr
from .errors import FormatVersionError, StoreError
from .storage import check_key

FORMAT_VERSION = 1
SEGMENTS = "segments"

# Flag bits of the ``flags`` column.
FLAG_BOS = 1
FLAG_PAD = 2
FLAG_SPECIAL = 4
FLAGS = {"bos": FLAG_BOS, "pad": FLAG_PAD, "special": FLAG_SPECIAL}

# What capture records of each hook in provenance["hooks"], besides name, module and output: where
# it sits relative to a normalization (actstore.models.norms finds it; Store.hook_norm reads it).
NORM_FIELDS = ("norm", "norm_module", "norm_gain_folded", "norm_gain_applied")


@dataclass(frozen=True)
class DType:
    """A storage dtype: how one activation element is stored, and every fact that follows.

    This is the one table of dtype facts (zarr's enums + ``parse_enum`` are the model): the
    store's arrays, the quantizer (``store/quantize.py``), conversion (``store/convert.py``),
    the capture and dequantize ops and kernels, and capture's model dtype read them here,
    through :func:`parse_dtype`.
    """

    name: str  # user-facing name: bf16, fp16, fp32, fp8, int8, q16
    stored: str  # numpy/zarr data_type of the stored array
    logical: str  # what the bits mean, a torch dtype name; accepted as an alias of ``name``
    container: str  # the torch dtype name of the stored values as a tensor: bf16 as bfloat16, fp8 as its uint8 bits
    mode: int  # the MODE constexpr of kernels/capture_pack.py and kernels/dequant_normalize.py
    qmax: float | None = None  # scaled dtypes: the largest code; scale = row absmax / qmax
    # Scaled by the row's RMS instead of its absmax: scale = rms_step * sqrt(mean(x^2)), so the
    # rounding error is a fixed share of the row's norm whatever its outliers (q16).
    rms_step: float | None = None
    # Signed codes stored zigzag (z = 2q for q >= 0, -2q - 1 below, as unsigned bits): small
    # magnitudes of either sign then leave the high byte zero, which the byte shuffle + zstd
    # nearly erase (two's complement repeats the sign there: 1.90x against 2.29x on SmolLM2).
    zigzag: bool = False

    @property
    def scaled(self) -> bool:
        """A per-row float32 scale array sits beside the stored one (fp8, int8, q16)."""
        return self.qmax is not None

    @property
    def torch_dtype(self):
        """The torch dtype of the stored values as a tensor (``container``)."""
        import torch  # deferred: the store's metadata (actstore info) is read without torch

        return getattr(torch, self.container)

    @property
    def value_dtype(self):
        """The torch dtype of the values the bits mean (``float8_e4m3fn`` for fp8)."""
        import torch  # deferred, as above

        return getattr(torch, self.logical)


DTYPES = {
    "bf16": DType("bf16", "uint16", "bfloat16", "bfloat16", 2),
    "fp16": DType("fp16", "float16", "float16", "float16", 1),
    "fp32": DType("fp32", "float32", "float32", "float32", 0),
    "fp8": DType("fp8", "uint8", "float8_e4m3fn", "uint8", 3, qmax=448.0),  # largest finite e4m3fn
    "int8": DType("int8", "int8", "int8", "int8", 4, qmax=127.0),  # symmetric: -128 is never used
    # Error-bounded: 16-bit codes of step rms/32, so |x - x_hat| <= rms/64 per element and the
    # row's relative RMS error is at most 1/64 (about 1/sqrt(12*32^2) = 0.9% in practice, any
    # data); zigzag, the codes' high bytes are nearly all zero and compress (docs/FORMAT.md).
    "q16": DType("q16", "uint16", "int16", "int16", 5, qmax=32767.0, rms_step=1 / 32, zigzag=True),
}
# Every accepted spelling: the names and the logical (torch) names as aliases.
_BY_NAME = {**{d.logical: d for d in DTYPES.values()}, **DTYPES}

# Token-aligned columns: name -> stored dtype. Missing values are -1 (token/doc/pos).
COLUMNS = {"token": "int32", "doc": "int64", "pos": "int32", "flags": "uint8"}

# Inner chunks hold about this many uncompressed bytes (docs/ARCHITECTURE.md: ~2 MiB; smaller chunks
# pay zarr's ~250 us per-chunk overhead, larger ones waste reads of a few rows).
CHUNK_BYTES = 2 << 20
# Inner chunks per shard on local disk: ~128 MiB shard objects, few files.
CHUNKS_PER_SHARD = 64
# A writer holds one shard of every array: by default the shards of all hooks together stay
# under this many uncompressed bytes (SmolLM2's 60 MLP hooks at 64 chunks a shard would hold
# 8.4 GiB; capped, 945 MiB, 7 chunks a shard). Up to 8 hooks of ~2 MiB chunks keep 64.
SHARD_BUFFER_BYTES = 1 << 30

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-\[\]]*$")


def parse_dtype(dtype: str | DType) -> DType:
    """A :class:`DType`, its name (``"bf16"``) or its logical alias (``"bfloat16"``) -> the :class:`DType`."""
    if isinstance(dtype, DType):
        return dtype
    try:
        return _BY_NAME[dtype]
    except (KeyError, TypeError):
        raise DTypeError(
            f"unknown storage dtype {dtype!r}: use one of {', '.join(DTYPES)} "
            f"(or {', '.join(d.logical for d in DTYPES.values() if d.logical != d.name)})"
        ) from None


def check_hook_name(name: str) -> str:
    """Hook names become zarr node names: letters, digits and ``_ . : - [ ]``, no '/'."""
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("__"):
        raise StoreError(f"invalid hook name {name!r}: use letters, digits and '_.:-[]', not starting with '__' or '.'")
    return name


def check_segment_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$", name)
        or name.startswith("__")
    ):
        raise StoreError(f"invalid segment name {name!r}: use 1-128 letters, digits and '_.-'")
    return name


def chunk_rows_for(row_bytes: int, target: int = CHUNK_BYTES) -> int:
    """The power-of-two row count whose chunk is nearest ``target`` bytes (log scale)."""
    rows = max(1, target / max(1, row_bytes))
    return int(2 ** round(np.log2(rows)))


@dataclass(frozen=True)
class HookSpec:
    name: str
    d: int
    dtype: DType
    chunk_rows: int

    @property
    def array(self) -> str:
        return f"acts/{self.name}"

    @property
    def scale_array(self) -> str | None:
        return f"scales/{self.name}" if self.dtype.scaled else None

    @property
    def row_bytes(self) -> int:
        return self.d * np.dtype(self.dtype.stored).itemsize


@dataclass(frozen=True)
class ArraySpec:
    """One stored array of a segment, relative path ``path`` (e.g. "acts/layer3")."""

    path: str
    dtype: np.dtype
    row_shape: tuple[int, ...]  # () for columns, (d,) for activations
    chunk_rows: int
    attributes: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Schema:
    """Everything that is fixed for the life of a store."""

    hooks: dict[str, HookSpec]
    codec_preset: str
    shard_rows: int
    provenance: dict = field(default_factory=dict, compare=False)

    @property
    def codec(self) -> ChunkCodec:
        return codec_from_preset(self.codec_preset)

    def arrays(self) -> list[ArraySpec]:
        """Every array a segment holds, activations first."""
        out = []
        for h in self.hooks.values():
            out.append(
                ArraySpec(
                    h.array,
                    np.dtype(h.dtype.stored),
                    (h.d,),
                    h.chunk_rows,
                    {
                        "logical_dtype": h.dtype.logical,
                        "hook": h.name,
                        **({"codes": "zigzag"} if h.dtype.zigzag else {}),
                    },
                )
            )
            if h.dtype.scaled:
                out.append(
                    ArraySpec(
                        h.scale_array, np.dtype("float32"), (), self.shard_rows, {"scale_of": h.array, "hook": h.name}
                    )
                )
        for name, dt in COLUMNS.items():
            out.append(ArraySpec(f"tokens/{name}", np.dtype(dt), (), self.shard_rows, {}))
        return out

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "hooks": {
                h.name: {
                    "d": h.d,
                    "dtype": h.dtype.name,
                    "stored_dtype": h.dtype.stored,
                    "logical_dtype": h.dtype.logical,
                    "chunk_rows": h.chunk_rows,
                    "array": h.array,
                    "scale_array": h.scale_array,
                }
                for h in self.hooks.values()
            },
            "columns": {name: {"dtype": dt, "array": f"tokens/{name}"} for name, dt in COLUMNS.items()},
            "flags": FLAGS,
            "shard_rows": self.shard_rows,
            "codec": {"preset": self.codec_preset, "description": self.codec.describe()},
            "segments": SEGMENTS,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, attrs: dict, where: str) -> "Schema":
        if not isinstance(attrs, dict) or "format_version" not in attrs:
            raise StoreError(
                f"{where} is a zarr group but not an actstore store (no attributes.actstore.format_version)"
            )
        version = attrs["format_version"]
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} has format_version {version!r}, this actstore reads only {FORMAT_VERSION}; upgrade actstore"
            )
        try:
            shard_rows = _count(attrs["shard_rows"], "shard_rows", where)
            if shard_rows * 8 > MAX_CHUNK_BYTES:  # the int64 doc column is one chunk per shard
                raise StoreError(f"{where}: shard_rows {shard_rows} is more than format v1 ever writes")
            if not isinstance(attrs["hooks"], dict) or not attrs["hooks"]:
                raise StoreError(f"{where}: hooks must be a non-empty JSON object, got {attrs['hooks']!r}")
            hooks = {}
            for name, h in attrs["hooks"].items():
                check_hook_name(name)
                _count(h["d"], f"hook {name!r} d", where)
                _count(h["chunk_rows"], f"hook {name!r} chunk_rows", where)
                spec = HookSpec(name, int(h["d"]), parse_dtype(h["dtype"]), int(h["chunk_rows"]))
                # Paths come from the file; refuse anything that is not exactly ours.
                if check_key(h["array"]) != spec.array or (h.get("scale_array") or None) != spec.scale_array:
                    raise StoreError(f"{where}: hook {name!r} names array {h['array']!r}, expected {spec.array!r}")
                _check_layout(spec, shard_rows, h, where)
                hooks[name] = spec
            if check_key(attrs.get("segments", SEGMENTS)) != SEGMENTS:
                raise StoreError(f"{where}: unexpected segments path {attrs.get('segments')!r}")
            want_columns = {n: {"dtype": dt, "array": f"tokens/{n}"} for n, dt in COLUMNS.items()}
            if attrs.get("columns", want_columns) != want_columns or attrs.get("flags", FLAGS) != FLAGS:
                raise StoreError(f"{where}: token columns or flag bits differ from format v1's")
            preset = attrs["codec"]["preset"]
            codec_from_preset(preset)  # an unknown preset: one line now, not at the first read
            provenance = attrs.get("provenance", {})
            if not isinstance(provenance, dict):
                raise StoreError(f"{where}: provenance must be a JSON object, got {type(provenance).__name__}")
            return cls(hooks, preset, shard_rows, provenance)
        except StoreError:
            raise  # already one line naming the cause (DTypeError is also a ValueError)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{where}: malformed actstore attributes ({type(e).__name__}: {e})") from None


# Bounds of a stored layout read from a file: a chunk must fit one blosc frame, a shard
# index must stay small. What make_schema builds is far inside them.
MAX_CHUNK_BYTES = 2**31 - 2**16
MAX_CHUNKS_PER_SHARD = 2**20


def _count(v, name: str, where: str) -> int:
    """``v`` if it is a positive integer (JSON int, not bool), else a one-line StoreError."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise StoreError(f"{where}: {name} must be a positive integer, got {v!r}")
    return v


def _check_layout(spec: HookSpec, shard_rows: int, h: dict, where: str) -> None:
    """A hook's stored layout is one we can have written: its dtype names agree, its chunks
    divide the shards and fit a blosc frame, a shard has a bounded number of chunks."""
    for key, value in (("stored_dtype", spec.dtype.stored), ("logical_dtype", spec.dtype.logical)):
        if h.get(key, value) != value:
            raise StoreError(f"{where}: hook {spec.name!r} has {key} {h[key]!r}, {spec.dtype.name} stores {value!r}")
    if (
        shard_rows % spec.chunk_rows
        or spec.chunk_rows * spec.row_bytes > MAX_CHUNK_BYTES
        or shard_rows // spec.chunk_rows > MAX_CHUNKS_PER_SHARD
    ):
        raise StoreError(
            f"{where}: hook {spec.name!r} has chunks of {spec.chunk_rows} rows x {spec.row_bytes} bytes "
            f"in shards of {shard_rows} rows, a layout format v1 never writes"
        )


def make_schema(
    hooks: dict[str, int],
    dtype: str | DType = "bf16",
    codec: str = "zstd",
    chunks_per_shard: int | None = None,
    provenance: dict | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Schema:
    """Build a schema for ``hooks`` (name -> width d).

    Every array shares one shard row count so that a shard of every array covers the
    same rows: about ``chunks_per_shard`` chunks of the widest hook, rounded up to a whole
    number of chunks of every hook. Unset, ``CHUNKS_PER_SHARD`` chunks, fewer where one shard
    of every hook together would exceed ``SHARD_BUFFER_BYTES`` (a writer holds one of each:
    many hooks would otherwise hold GiBs), never below one chunk of every hook.
    """
    if not hooks:
        raise StoreError("no hooks given: pass at least one hook name with its width")
    dt = parse_dtype(dtype)
    codec_from_preset(codec)
    specs = {}
    for name, d in hooks.items():
        check_hook_name(name)
        if not isinstance(d, (int, np.integer)) or d <= 0:
            raise StoreError(f"hook {name!r}: width d must be a positive integer, got {d!r}")
        if dt.rms_step and d > (dt.qmax * dt.rms_step) ** 2:
            # |x| <= sqrt(d) * rms, so below this width no code can pass qmax; above it one could clip.
            raise StoreError(
                f"hook {name!r}: width {d} is too wide for {dt.name} (at most {int((dt.qmax * dt.rms_step) ** 2)} "
                f"columns, where no value can clip): store bf16 or int8"
            )
        row_bytes = int(d) * np.dtype(dt.stored).itemsize
        specs[name] = HookSpec(name, int(d), dt, chunk_rows_for(row_bytes, chunk_bytes))
    min_rows = min(s.chunk_rows for s in specs.values())
    max_rows = max(s.chunk_rows for s in specs.values())
    # A whole number of chunks of every hook: chunk row counts are powers of two, so a
    # multiple of the largest is a multiple of all (with chunks_per_shard=3 and chunks of
    # 4 and 8 rows, 12-row shards would split an 8-row chunk).
    shard_rows = -(-max(max_rows, (chunks_per_shard or CHUNKS_PER_SHARD) * min_rows) // max_rows) * max_rows
    if chunks_per_shard is None:
        all_row_bytes = sum(s.d * np.dtype(s.dtype.stored).itemsize for s in specs.values())
        fit = SHARD_BUFFER_BYTES // all_row_bytes // max_rows * max_rows
        shard_rows = max(max_rows, min(shard_rows, fit))
    return Schema(specs, codec, shard_rows, dict(provenance or {}))


# --- zarr v3 metadata documents -------------------------------------------------------


def group_doc(attributes: dict | None = None) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}


def array_codec(codec: ChunkCodec, spec: ArraySpec) -> ChunkCodec:
    """``codec`` (a preset) as array ``spec`` stores it: blosc shuffles by the element size;
    uncompressed stays as it is."""
    if not codec.cname:
        return codec
    return codec.with_typesize(spec.dtype.itemsize)


def array_doc(spec: ArraySpec, rows: int, shard_rows: int, codec: ChunkCodec) -> dict:
    """The zarr.json of one sharded array with ``rows`` rows."""
    inner = array_codec(codec, spec)
    fill = 0.0 if spec.dtype.kind == "f" else 0
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [rows, *spec.row_shape],
        "data_type": spec.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, *spec.row_shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [spec.chunk_rows, *spec.row_shape],
                    "codecs": inner.to_zarr(),
                    "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "attributes": spec.attributes,
        "dimension_names": ["row", "dim"][: 1 + len(spec.row_shape)],
    }


def parse_array_doc(doc: dict, where: str) -> tuple[int, int, ChunkCodec]:
    """Return (shard_rows, chunk_rows, codec) of an array document we wrote."""
    try:
        shard_rows = int(doc["chunk_grid"]["configuration"]["chunk_shape"][0])
        sharding = doc["codecs"][0]
        if sharding["name"] != "sharding_indexed":
            raise StoreError(f"{where}: array is not sharded")
        cfg = sharding["configuration"]
        return shard_rows, int(cfg["chunk_shape"][0]), codec_from_zarr(cfg["codecs"])
    except (KeyError, IndexError, TypeError) as e:
        raise StoreError(f"{where}: malformed zarr.json ({type(e).__name__}: {e})") from None


def shard_key(segment: str, a: ArraySpec, shard: int) -> str:
    """Key of shard ``shard`` of array ``a``: zarr's default chunk key, one index per
    dimension ("c/<s>/0" for (rows, d) arrays, "c/<s>" for columns)."""
    tail = "/0" * len(a.row_shape)
    return f"{SEGMENTS}/{segment}/{a.path}/c/{shard}{tail}"


def commit_key(segment: str, seq: int) -> str:
    """Commit records are zarr groups (the record is in their attributes), so the whole
    store stays a plain zarr hierarchy."""
    return f"{SEGMENTS}/{segment}/commits/{seq:010d}/zarr.json"


def parse_flags(spec, option: str = "drop_flags", error: type[Exception] = StoreError) -> int:
    """Flags as the user gives them -> a ``flags``-column bit mask.

    ``spec``: None (no flags), an int bit mask (0..255), or flag names: ``"bos,special"``
    or a list of names (any case; see FLAGS). ``option`` names the setting in messages and
    ``error`` is the exception class raised (each caller's own: CaptureError, LoaderError).
    """
    if spec is None:
        return 0
    if isinstance(spec, bool):
        raise error(f"{option}={spec} is not a flag: give names ('bos,special') or a bit mask")
    if isinstance(spec, (int, np.integer)):
        if not 0 <= int(spec) <= 255:
            raise error(f"{option} mask {spec} is not a uint8 bit mask (1 bos, 2 pad, 4 special)")
        return int(spec)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    mask = 0
    for n in names:
        n = str(n).strip().lower()
        if not n:
            continue
        if n not in FLAGS:
            raise error(f"unknown flag {n!r} in {option}: use {', '.join(FLAGS)}")
        mask |= FLAGS[n]
    return mask
