"""Shuffled training batches from a store: actstore.ActivationLoader against the baselines.

    python benchmarks/bench_loader.py [--quick] [--repeats N] [--threads T] [--batch-size B]
                                      [--buffer-rows R] [--hook H] [--dir DIR]

Data: all-MiniLM-L6-v2 residual stream at one hook (default ``encoder.layer.3``, d = 384)
over pydoc_data.topics, the rows :func:`_common.load_activations` gives (pad rows dropped),
cut to a whole number of 4096-row blocks (126,976 of 130,187 rows): 62 whole store chunks,
and 31 whole SAELens cache batches (32 sequences of 128 tokens), so that every variant
delivers exactly the same rows in one epoch. The token columns (token id, document id,
position, flags) are rebuilt by :func:`_common.load_token_columns`.

Every variant delivers one epoch of shuffled ``[B, 384]`` batches (B = 4096 by default) and
is timed in the same process, interleaved round-robin (order rotating each round, after an
untimed warm-up round), median of the repeats. Throughput is GB/s of uncompressed bf16
bytes delivered (rows x 384 x 2 B, 1e9 B/s), whatever the variant reads or returns.
Timed, for every variant: construction (open the file/array/store, build the loader) plus
the whole epoch, each batch dropped before the next.

- ``codec_decode_{T}threads`` (the ceiling): the compressed bytes of every inner chunk of
  the actstore array, read into memory beforehand (pread through the shard index, untimed),
  decoded with the store's own ``ChunkCodec.decode_into`` (crc32c check + Blosc) into
  preallocated buffers by a ``ThreadPoolExecutor(T)``, in the epoch's shuffled chunk order.
  Nothing else: no shuffle, no batches.
- ``read_decode_{T}threads``: the same chunks through ``ChunkReader.read_chunk`` (pread
  of the chunk from the shard file, which is in the page cache, crc32c, decode into a new
  array), shard files opened and indexes parsed beforehand.
- ``numpy_memmap``: an uncompressed bf16 (uint16) ``.npy`` copy; ``np.load(mmap_mode="r")``,
  chunks of the store's chunk_rows in a seeded random order, a window of
  ``buffer_rows / chunk_rows`` chunks concatenated in memory and permuted, batches cut by
  fancy indexing (a contiguous copy); rows left over at the end of a window go into the next
  one; the last batch may be short. One thread: what a typical user writes.
- ``zarr_python_naive``: the same loop, chunks read with ``arr[lo:hi]`` (one chunk per read)
  from actstore's own array opened directly with ``zarr.open_array`` (a standard sharded
  zarr v3 uint16 array); zarr-python's default async settings.
- ``saelens_fp32``: SAELens' own read path of its activation cache: a
  ``CacheActivationsRunner`` cache of the same rows (fp32, as SAELens stores them; written
  with the runner's own ``_create_shard`` / ``_consolidate_shards``, only the model forward
  is replaced by the precomputed activations), read by
  ``ActivationsStore.from_config(None, LanguageModelSAERunnerConfig(use_cached_activations=True,
  ...), override_dataset=<token windows>)`` as ``LanguageModelSAETrainingRunner`` builds it,
  then ``next(store)`` n_rows // B times: what ``SAETrainer`` calls each step
  (``get_data_loader`` -> ``mixing_buffer``, ``activations_mixing_fraction`` 0.5, buffer of
  ``n_batches_in_buffer x 128`` = buffer_rows rows, ``store_batch_size_prompts`` 32,
  ``train_batch_size_tokens`` B, ``prefetch_llm_batches`` False). It returns fp32. Its
  stream is endless and holds back half its buffer, so one epoch's worth of batches reads
  about buffer_rows / 2 rows past the end of the cache (wrapping to its start; counted in
  ``checks``). ``saelens_part_cache_read`` times its cache read alone (no mixing buffer).
- ``actstore_bf16`` / ``actstore_fp32``: ``actstore.ActivationLoader(path, hook, B,
  shuffle=True, seed=0, epochs=1, device="cpu", dtype=..., threads=T, buffer_rows=R)``,
  iterated to the end. Skipped (with a note) when actstore has no ActivationLoader yet.

Shuffle quality (untimed passes of the same code with row tracking; for actstore a pass with
``tokens=True``; for SAELens the same code path over a cache whose one-wide activation holds
the row number): mean distinct documents per batch, the lag-1 Pearson correlation of
document ids between consecutive rows within a batch, and the fraction of consecutive rows
from the same document; with a full uniform shuffle and no shuffle as references.

Results: benchmarks/results/loader.json (loader_quick.json with --quick).
"""

from __future__ import annotations

import os

# Offline, and no progress bars (SAELens' and datasets' tqdm bars); set before importing them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402

import actstore  # noqa: E402

SEGMENT = "rank00000"
SEED = 0
SL_CONTEXT = 128  # SAELens cache: rows per sequence (the capture context)
SL_SEQS_PER_READ = 32  # SAELens store_batch_size_prompts (its default): sequences per cache read
BLOCK = SL_CONTEXT * SL_SEQS_PER_READ  # rows are cut to a multiple of this (and of chunk_rows)
APPEND_ROWS = 4096
QUICK_BLOCKS = 12  # --quick: 12 x 4096 = 49,152 rows
QUICK_BUFFER_ROWS = 16384


# --- the baselines' shuffled-window loop -------------------------------------------------


def windowed_batches(read_chunk, n: int, chunk_rows: int, buffer_rows: int, batch: int, seed: int, track: bool = False):
    """Yield shuffled batches: chunks in a seeded random order, ``buffer_rows // chunk_rows``
    chunks at a time concatenated and permuted in memory, batches cut by fancy indexing.
    Rows left at the end of a window are carried into the next; the last batch may be short.
    With ``track``, yield ``(batch, global row numbers)`` instead."""
    rng = np.random.default_rng(seed)
    n_chunks = -(-n // chunk_rows)
    order = rng.permutation(n_chunks)
    per_window = max(1, buffer_rows // chunk_rows)
    rest = rest_idx = None
    for w in range(0, n_chunks, per_window):
        ids = order[w : w + per_window]
        parts = [read_chunk(int(c)) for c in ids]
        if rest is not None:
            parts.insert(0, rest)
        buf = np.concatenate(parts)
        if track:
            idx = [np.arange(c * chunk_rows, min(n, (c + 1) * chunk_rows)) for c in ids]
            if rest_idx is not None:
                idx.insert(0, rest_idx)
            ibuf = np.concatenate(idx)
        perm = rng.permutation(len(buf))
        full = len(buf) // batch * batch
        for b in range(0, full, batch):
            sel = perm[b : b + batch]
            yield (buf[sel], ibuf[sel]) if track else buf[sel]
        rest = buf[perm[full:]]
        if track:
            rest_idx = ibuf[perm[full:]]
    if rest is not None and len(rest):
        yield (rest, rest_idx) if track else rest


# --- shuffle quality ----------------------------------------------------------------------


def shuffle_quality(doc_batches: list[np.ndarray]) -> dict:
    """Mean distinct documents per batch, lag-1 Pearson correlation of document ids between
    consecutive rows within a batch, and the fraction of such pairs from one document."""
    a = np.concatenate([b[:-1] for b in doc_batches]).astype(np.float64)
    b = np.concatenate([b[1:] for b in doc_batches]).astype(np.float64)
    return {
        "batches": len(doc_batches),
        "rows": int(sum(len(x) for x in doc_batches)),
        "distinct_docs_per_batch_mean": float(np.mean([len(np.unique(x)) for x in doc_batches])),
        "distinct_docs_per_batch_min": int(min(len(np.unique(x)) for x in doc_batches)),
        "lag1_doc_pearson": float(np.corrcoef(a, b)[0, 1]),
        "adjacent_same_doc_fraction": float(np.mean(a == b)),
    }


def row_hashes(bits: np.ndarray) -> np.ndarray:
    """One uint64 per row of a C-contiguous 2-D array (its bytes read as uint64 words, times
    fixed odd weights, summed modulo 2^64): equal rows give equal hashes."""
    bits = np.ascontiguousarray(bits)
    words = bits.view(np.uint64).reshape(bits.shape[0], -1)
    w = (np.random.default_rng(12345).integers(0, 2**63, size=words.shape[1], dtype=np.uint64) * 2 + 1).astype(
        np.uint64
    )
    with np.errstate(over="ignore"):
        return (words * w).sum(axis=1, dtype=np.uint64)


def bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


# --- SAELens ----------------------------------------------------------------------------


def saelens_write_cache(out: Path, hook: str, acts: torch.Tensor, token_ids: torch.Tensor):
    """Write ``acts`` ``[n, d]`` as a CacheActivationsRunner cache, with the runner's own
    ``_create_shard`` (its Features: ``hook`` Array2D (128, d) float32 and ``token_ids``
    int32 x 128 per sequence) and ``_consolidate_shards``; only the model forward is replaced."""
    import sae_lens.cache_activations_runner as R
    from datasets import Array2D, Features, Sequence, Value
    from sae_lens import CacheActivationsRunnerConfig

    n, d = acts.shape
    cfg = CacheActivationsRunnerConfig(
        dataset_path="in-memory/minilm-windows",
        model_name="precomputed-minilm",
        model_class_name="HookedTransformer",
        hook_name=hook,
        d_in=d,
        training_tokens=n,
        context_size=SL_CONTEXT,
        model_batch_size=SL_SEQS_PER_READ,
        new_cached_activations_path=str(out),
        shuffle=False,
        dtype="float32",
        device="cpu",
        prepend_bos=False,
        streaming=False,
        buffer_size_gb=(n * d * 4 + d * 2) / 1e9,
    )  # one buffer of exactly n rows
    assert cfg.n_buffers == 1 and cfg.n_tokens_in_buffer == n, (cfg.n_buffers, cfg.n_tokens_in_buffer, n)
    runner = object.__new__(R.CacheActivationsRunner)  # skips __init__: it would load a model by name
    runner.cfg = cfg
    runner.context_size = SL_CONTEXT
    runner.features = Features(
        {
            hook: Array2D(shape=(SL_CONTEXT, d), dtype="float32"),
            "token_ids": Sequence(Value(dtype="int32"), length=SL_CONTEXT),
        }
    )
    tmp = out / ".tmp_shards"
    tmp.mkdir(parents=True)
    runner._create_shard((acts, token_ids)).save_to_disk(f"{tmp}/shard_00000", num_shards=1)
    R.CacheActivationsRunner._consolidate_shards(tmp, out, copy_files=False)


def saelens_store(path: Path, hook: str, d: int, n: int, batch: int, buffer_rows: int, token_ds):
    """The ActivationsStore a LanguageModelSAETrainingRunner builds for cached activations."""
    from sae_lens import LanguageModelSAERunnerConfig, StandardTrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = LanguageModelSAERunnerConfig(
            sae=StandardTrainingSAEConfig(d_in=d, d_sae=4 * d),
            model_name="precomputed-minilm",
            hook_name=hook,
            dataset_path="in-memory/minilm-windows",
            is_dataset_tokenized=True,
            context_size=SL_CONTEXT,
            use_cached_activations=True,
            cached_activations_path=str(path),
            n_batches_in_buffer=buffer_rows // SL_CONTEXT,
            store_batch_size_prompts=SL_SEQS_PER_READ,
            train_batch_size_tokens=batch,
            training_tokens=n,
            device="cpu",
            dtype="float32",
            prepend_bos=False,
            verbose=False,
            checkpoint_path=None,
            output_path=None,
        )
        # model=None: with a cache, ActivationsStore never runs the model.
        return ActivationsStore.from_config(None, cfg, override_dataset=token_ds), cfg


# --- main ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_BLOCKS * BLOCK} rows, buffer {QUICK_BUFFER_ROWS} rows, 3 repeats"
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 5, quick 3)")
    ap.add_argument("--threads", type=int, default=2, help="loader / decode threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=4096, help="rows per batch (default 4096)")
    ap.add_argument("--buffer-rows", type=int, default=None, help="shuffle buffer rows (default 65536, quick 16384)")
    ap.add_argument("--hook", default=C.hook_name(3), help="hook (default encoder.layer.3)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a new dir in $TMPDIR, removed at the end)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    T, B = args.threads, args.batch_size
    buffer_rows = args.buffer_rows or (QUICK_BUFFER_ROWS if args.quick else 65536)
    hook = args.hook
    if buffer_rows % SL_CONTEXT or buffer_rows < B:
        ap.error(f"--buffer-rows must be a multiple of {SL_CONTEXT} and at least --batch-size (SAELens' mixing buffer)")

    import datasets

    datasets.disable_progress_bars()

    meta = C.metadata()
    meta["versions"].update(
        {k.replace("-", "_"): C._version(k) for k in ("sae-lens", "transformer-lens", "datasets", "pyarrow")}
    )
    meta["machine"]["torch_threads"] = torch.get_num_threads()

    Loader = getattr(actstore, "ActivationLoader", None)
    notes: list[str] = []
    if Loader is None:
        notes.append("actstore.ActivationLoader is not available in this checkout: the actstore variants were skipped")
        print("note: " + notes[-1], flush=True)

    # ---- data ------------------------------------------------------------------------
    acts_all = C.load_activations()
    if hook not in acts_all:
        ap.error(f"unknown hook {hook}; have {list(acts_all)}")
    cols_all = C.load_token_columns()
    total = acts_all[hook].shape[0]
    if len(cols_all["doc"]) != total:
        raise SystemExit(f"token columns ({len(cols_all['doc'])} rows) disagree with the activations ({total} rows)")
    d = acts_all[hook].shape[1]
    chunk_rows = C.store_chunk_rows(d, 2)
    unit = math.lcm(BLOCK, chunk_rows)
    n = total // unit * unit
    if args.quick:
        n = min(n, QUICK_BLOCKS * unit)
    fp32 = np.array(acts_all[hook][:n])
    bf16 = C.to_bf16_bits(fp32)
    cols = {k: v[:n] for k, v in cols_all.items()}
    doc = cols["doc"]
    n_chunks = -(-n // chunk_rows)
    row_bytes = d * 2
    print(
        f"{hook}: {n:,} of {total:,} rows x {d} bf16 = {n * row_bytes / 1e6:.0f} MB; chunk {chunk_rows} rows "
        f"({n_chunks} chunks); batch {B}; buffer {buffer_rows} rows; {T} threads; {repeats} repeats",
        flush=True,
    )

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="actstore-bench-loader-"))
    scratch.mkdir(parents=True, exist_ok=True)
    spath, npath = scratch / "store", scratch / "acts_bf16.npy"
    slpath, sltag = scratch / "saelens_cache", scratch / "saelens_cache_rowtag"
    for p in (spath, slpath, sltag):
        shutil.rmtree(p, ignore_errors=True)
    figures: dict = {}
    counts: dict[str, list[int]] = {}  # rows delivered, per timed call
    checks: dict = {}
    quality: dict = {}
    try:
        # ---- inputs (untimed) ------------------------------------------------------------
        w = actstore.create(spath, {hook: d}, segment=SEGMENT, dtype="bf16", codec="zstd", durable=False)
        for lo in range(0, n, APPEND_ROWS):
            hi = min(n, lo + APPEND_ROWS)
            w.append(
                {hook: torch.from_numpy(fp32[lo:hi])},
                tokens=cols["token"][lo:hi],
                doc=doc[lo:hi],
                pos=cols["pos"][lo:hi],
                flags=cols["flags"][lo:hi],
            )
        w.close()
        np.save(npath, bf16)
        token_ids = torch.from_numpy(cols["token"].astype(np.int64))
        saelens_write_cache(slpath, hook, torch.from_numpy(fp32), token_ids)
        # The same cache shape for the quality pass, one-wide, holding each row's number
        # (exact in float32 below 2^24).
        saelens_write_cache(sltag, hook, torch.arange(n, dtype=torch.float32)[:, None], token_ids)
        token_ds = datasets.Dataset.from_dict(
            {"input_ids": cols["token"].astype(np.int64).reshape(-1, SL_CONTEXT).tolist()},
            features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))}),
        )

        # The actstore array, its chunks and their compressed bytes.
        s = actstore.open(spath)
        assert s.rows == n, (s.rows, n)
        seg = s.segments[0]
        a = [x for x in s.schema.arrays() if x.path == f"acts/{hook}"][0]
        assert a.chunk_rows == chunk_rows, (a.chunk_rows, chunk_rows)
        per_shard = s.schema.shard_rows // chunk_rows
        n_shards = -(-n_chunks // per_shard)
        handles = [seg.chunks.acquire(a, k) for k in range(n_shards)]
        blobs, indexes = [h.blob for h in handles], [h.index for h in handles]
        encoded = []
        for c in range(n_chunks):
            off, nb = indexes[c // per_shard][c % per_shard]
            encoded.append(blobs[c // per_shard].pread(int(off), int(nb)))
        codec = s.schema.codec
        if codec.cname:
            codec = codec.with_typesize(2)
        dec_out = [np.empty((chunk_rows, d), dtype=np.uint16) for _ in range(n_chunks)]
        chunk_order = np.random.default_rng(SEED).permutation(n_chunks)  # the baselines' first draw
        pool = ThreadPoolExecutor(T, thread_name_prefix="bench-dec")
        compressed_bytes = sum(len(e) for e in encoded)

        # ---- correctness (untimed) --------------------------------------------------------
        for c in chunk_order[:4]:
            codec.decode_into(encoded[c], dec_out[c])
            lo, hi = c * chunk_rows, min(n, (c + 1) * chunk_rows)
            assert np.array_equal(dec_out[c][: hi - lo], bf16[lo:hi]), f"codec decode of chunk {c}"
            assert np.array_equal(seg.chunks.read_chunk(handles[c // per_shard], a, int(c))[: hi - lo], bf16[lo:hi]), (
                f"decode_chunk {c}"
            )
        z = zarr.open_array(str(spath / f"segments/{SEGMENT}/acts/{hook}"), mode="r")
        checks["zarr_array"] = {
            "shape": list(z.shape),
            "dtype": str(z.dtype),
            "chunks": list(z.chunks),
            "shards": list(z.shards) if z.shards else None,
        }
        mm = np.load(npath, mmap_mode="r")
        for name, reader in (
            ("numpy_memmap", lambda c: mm[c * chunk_rows : min(n, (c + 1) * chunk_rows)]),
            ("zarr_python_naive", lambda c: z[c * chunk_rows : min(n, (c + 1) * chunk_rows)]),
        ):
            got, idx = [], []
            for bt, ix in windowed_batches(reader, n, chunk_rows, buffer_rows, B, SEED, track=True):
                if not np.array_equal(bt, bf16[ix]):
                    raise SystemExit(f"check failed: {name} batch rows differ from the written rows")
                got.append(doc[ix])
                idx.append(ix)
            allidx = np.concatenate(idx)
            checks[name] = {
                "rows_delivered": int(allidx.size),
                "every_row_once": bool(np.array_equal(np.sort(allidx), np.arange(n))),
                "batches_equal_written_rows": True,
            }
            quality[name] = shuffle_quality(got)
        mm = z = None  # drop the memmap and the array before the timed runs

        # SAELens: the same code path over the row-tagged cache.
        n_sl_batches = n // B
        torch.manual_seed(SEED)
        st_tag, _ = saelens_store(sltag, hook, 1, n, B, buffer_rows, token_ds)
        reads = [0]
        inner = st_tag.get_filtered_llm_batch

        def counting(*a_, **k_):
            reads[0] += 1
            return inner(*a_, **k_)

        st_tag.get_filtered_llm_batch = counting
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # "All samples in the training dataset have been exhausted": its stream wraps
            sl_rows = [next(st_tag)[:, 0].numpy().astype(np.int64) for _ in range(n_sl_batches)]
        sl_all = np.concatenate(sl_rows)
        sl_rows_read = reads[0] * BLOCK
        quality["saelens_fp32"] = shuffle_quality([doc[r] for r in sl_rows])
        checks["saelens_fp32"] = {
            "rows_delivered": int(sl_all.size),
            "distinct_rows_delivered": int(np.unique(sl_all).size),
            "rows_read_from_cache": sl_rows_read,
            "note": "SAELens' stream is endless: its mixing buffer holds back buffer x mix_fraction rows, so "
            "delivering "
            "one epoch's worth of batches reads past the end of the cache and wraps to its start (some rows of "
            "the epoch are not delivered, some are delivered twice)",
        }
        st, sl_cfg = saelens_store(slpath, hook, d, n, B, buffer_rows, token_ds)
        fp32_hash = np.sort(row_hashes(fp32))
        first = next(st).numpy()
        checks["saelens_fp32"]["first_batch_rows_are_written_rows"] = bool(np.isin(row_hashes(first), fp32_hash).all())
        checks["saelens_fp32"]["first_batch_dtype"] = str(first.dtype)
        sl_desc = {
            "n_batches_in_buffer": sl_cfg.n_batches_in_buffer,
            "buffer_rows": sl_cfg.n_batches_in_buffer * SL_CONTEXT,
            "activations_mixing_fraction": sl_cfg.activations_mixing_fraction,
            "store_batch_size_prompts": sl_cfg.store_batch_size_prompts,
            "train_batch_size_tokens": B,
            "dtype": sl_cfg.dtype,
            "prefetch_llm_batches": sl_cfg.prefetch_llm_batches,
            "batches_per_epoch": n_sl_batches,
            "rows_read_per_timed_call": sl_rows_read,
        }
        del st, st_tag, first

        # actstore: a pass with tokens=True (doc ids), checked against the written rows.
        bf16_hash = np.sort(row_hashes(bf16))
        if Loader is not None:
            try:
                ld = Loader(
                    str(spath),
                    hook,
                    B,
                    shuffle=True,
                    seed=SEED,
                    epochs=1,
                    device="cpu",
                    dtype=torch.bfloat16,
                    threads=T,
                    buffer_rows=buffer_rows,
                    tokens=True,
                )
                docs_b, hashes, sizes = [], [], []
                for bt in ld:
                    x = bt[hook]
                    hashes.append(row_hashes(bf16_bits(x)))
                    docs_b.append(bt["doc"].numpy().astype(np.int64))
                    sizes.append(int(x.shape[0]))
                if hasattr(ld, "close"):
                    ld.close()
                hashes = np.sort(np.concatenate(hashes))
                alldoc = np.sort(np.concatenate(docs_b))
                checks["actstore"] = {
                    "rows_delivered": int(sum(sizes)),
                    "batches": len(sizes),
                    "batch_sizes_first_last": [sizes[0], sizes[-1]],
                    "every_row_once": bool(np.array_equal(hashes, bf16_hash)),
                    "doc_column_matches": bool(np.array_equal(alldoc, np.sort(doc))),
                }
                quality["actstore"] = shuffle_quality(docs_b)
                if not checks["actstore"]["every_row_once"]:
                    print("WARNING: actstore's epoch did not deliver every written row exactly once", file=sys.stderr)
            except Exception as e:  # a missing feature of a loader in progress: note it, time the rest
                notes.append(
                    f"actstore tokens=True pass failed ({type(e).__name__}: {e}); no shuffle quality for actstore"
                )
                print("note: " + notes[-1], file=sys.stderr, flush=True)
                traceback.print_exc()
        quality["reference_full_uniform_shuffle"] = shuffle_quality(
            [doc[p] for p in np.array_split(np.random.default_rng(SEED).permutation(n), range(B, n, B))]
        )
        quality["reference_no_shuffle"] = shuffle_quality(np.array_split(doc, range(B, n, B)))

        # ---- timed variants -------------------------------------------------------------
        def counted(name, fn):
            counts[name] = []

            def run():
                counts[name].append(fn())

            return run

        def ceiling():
            list(pool.map(lambda c: codec.decode_into(encoded[c], dec_out[c]), chunk_order))
            return n

        def read_decode():
            list(pool.map(lambda c: seg.chunks.read_chunk(handles[c // per_shard], a, int(c)).shape, chunk_order))
            return n

        def chunked_epoch(arr) -> int:
            """One epoch of windowed shuffled batches read a chunk at a time from ``arr``."""
            rows = 0
            for bt in windowed_batches(
                lambda c: arr[c * chunk_rows : min(n, (c + 1) * chunk_rows)], n, chunk_rows, buffer_rows, B, SEED
            ):
                rows += torch.from_numpy(bt.view(np.int16)).view(torch.bfloat16).shape[0]
            return rows

        def memmap_epoch():
            return chunked_epoch(np.load(npath, mmap_mode="r"))

        def zarr_epoch():
            return chunked_epoch(zarr.open_array(str(spath / f"segments/{SEGMENT}/acts/{hook}"), mode="r"))

        def saelens_epoch():
            torch.manual_seed(SEED)
            store, _ = saelens_store(slpath, hook, d, n, B, buffer_rows, token_ds)
            rows = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(n_sl_batches):
                    rows += next(store).shape[0]
            return rows

        def saelens_cache_read():
            # The cache read alone, to explain the figure above: one epoch of
            # get_raw_llm_batch (datasets slice -> torch), no mixing buffer.
            store, _ = saelens_store(slpath, hook, d, n, B, buffer_rows, token_ds)
            rows = 0
            while True:
                try:
                    x, _ = store.get_raw_llm_batch(raise_on_epoch_end=True)
                except StopIteration:
                    return rows
                rows += x.shape[0]

        def actstore_epoch(dtype):
            def run():
                ld = Loader(
                    str(spath),
                    hook,
                    B,
                    shuffle=True,
                    seed=SEED,
                    epochs=1,
                    device="cpu",
                    dtype=dtype,
                    threads=T,
                    buffer_rows=buffer_rows,
                )
                rows = 0
                for bt in ld:
                    rows += bt.shape[0]
                if hasattr(ld, "close"):
                    ld.close()
                return rows

            return run

        names = {"ceiling": f"codec_decode_{T}threads", "read_decode": f"read_decode_{T}threads"}
        variants = {
            names["ceiling"]: counted(names["ceiling"], ceiling),
            names["read_decode"]: counted(names["read_decode"], read_decode),
            "numpy_memmap": counted("numpy_memmap", memmap_epoch),
            "zarr_python_naive": counted("zarr_python_naive", zarr_epoch),
            "saelens_fp32": counted("saelens_fp32", saelens_epoch),
            "saelens_part_cache_read": counted("saelens_part_cache_read", saelens_cache_read),
        }
        if Loader is not None:
            for v, dt in (("actstore_bf16", torch.bfloat16), ("actstore_fp32", torch.float32)):
                try:  # one untimed epoch first: a loader in progress may not take every argument yet
                    got = actstore_epoch(dt)()
                except Exception as e:
                    notes.append(f"{v} skipped: one untimed epoch failed ({type(e).__name__}: {e})")
                    print("note: " + notes[-1], file=sys.stderr, flush=True)
                    traceback.print_exc()
                    continue
                if got != n:
                    notes.append(f"{v}: one epoch delivered {got} rows, {n} written")
                variants[v] = counted(v, actstore_epoch(dt))
            if "actstore_bf16" in variants:
                # A loader made once, as a training run makes it: one epoch per call, so the
                # thread pool, open shards and window slabs are already there.
                warm = Loader(
                    str(spath),
                    hook,
                    B,
                    shuffle=True,
                    seed=SEED,
                    epochs=None,
                    device="cpu",
                    dtype=torch.bfloat16,
                    threads=T,
                    buffer_rows=buffer_rows,
                )
                warm_epoch = [0]

                def actstore_warm():
                    warm.set_epoch(warm_epoch[0])
                    warm_epoch[0] += 1
                    rows = 0
                    for bt in warm:
                        rows += bt.shape[0]
                        if warm.epoch != warm_epoch[0] - 1:
                            break
                    return rows

                variants["actstore_bf16_warm"] = counted("actstore_bf16_warm", actstore_warm)
        print(f"timing {len(variants)} variants ...", flush=True)
        times = C.interleaved(variants, repeats)
        for name, ts_ in times.items():
            rows = counts[name][-1]
            if len(set(counts[name])) != 1:
                notes.append(f"{name}: rows delivered changed between calls: {counts[name]}")
            med = statistics.median(ts_)
            figures[name] = {
                "GBps": C.gbps(rows * row_bytes, med),
                "rows_per_s": rows / med,
                "rows_delivered": rows,
                "batches": None if name in names.values() or "_part_" in name else -(-rows // B),
                **C.summary(ts_),
                "seconds_all": ts_,
            }
        figures[names["ceiling"]]["compressed_GBps"] = C.gbps(compressed_bytes, figures[names["ceiling"]]["median_s"])
        figures["saelens_fp32"]["GBps_read"] = C.gbps(sl_rows_read * row_bytes, figures["saelens_fp32"]["median_s"])
        for p in blobs:
            p.close()
        s.close()
        pool.shutdown()
        disk = {
            "actstore_store_bytes": sum(f.stat().st_size for f in spath.rglob("*") if f.is_file()),
            "actstore_array_bytes": sum(
                f.stat().st_size for f in (spath / f"segments/{SEGMENT}/acts/{hook}").rglob("*") if f.is_file()
            ),
            "npy_bytes": npath.stat().st_size,
            "saelens_cache_bytes": sum(f.stat().st_size for f in slpath.rglob("*") if f.is_file()),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # ---- ratios ----------------------------------------------------------------------------
    base = {
        "vs_codec_ceiling": names["ceiling"],
        "vs_read_decode": names["read_decode"],
        "vs_naive_zarr": "zarr_python_naive",
        "vs_saelens": "saelens_fp32",
        "vs_memmap": "numpy_memmap",
    }
    ratios: dict = {}
    paired: dict = {}
    for v in ("actstore_bf16", "actstore_fp32", "actstore_bf16_warm"):
        if v not in figures:
            continue
        ratios[v] = {k: figures[v]["rows_per_s"] / figures[b]["rows_per_s"] for k, b in base.items()}
        paired[v] = {
            k: statistics.median((counts[v][i] / times[v][i]) / (counts[b][i] / times[b][i]) for i in range(repeats))
            for k, b in base.items()
        }
    if ratios:
        ratios["paired_median"] = paired

    desc = {
        names[
            "ceiling"
        ]: f"ChunkCodec.decode_into (crc32c + Blosc) of every chunk, compressed bytes preread into memory, "
        f"into preallocated buffers, ThreadPoolExecutor({T}), shuffled chunk order",
        names["read_decode"]: f"ChunkReader.read_chunk (pread from the shard file + crc32c + decode into a new array) "
        f"of every chunk, ThreadPoolExecutor({T}); shard files opened and indexes parsed beforehand",
        "numpy_memmap": "np.load(mmap_mode='r') of an uncompressed bf16 .npy; chunk-order shuffle + in-memory window "
        "shuffle (np.concatenate of the window, fancy-index batches); 1 thread",
        "zarr_python_naive": "zarr.open_array(<store>/segments/rank00000/acts/<hook>) and arr[lo:hi] per chunk; same "
        "shuffle loop as numpy_memmap; 1 consumer thread, zarr-python's default async settings",
        "saelens_fp32": "sae_lens ActivationsStore.from_config(None, "
        "LanguageModelSAERunnerConfig(use_cached_activations="
        "True, ...), override_dataset=<token windows>) and next(store) per batch (what SAETrainer.fit "
        "calls): _load_raw_llm_batch_from_cached (datasets slice -> torch fp32) -> mixing_buffer "
        "(torch.cat + torch.randperm over the buffer); returns fp32; torch intra-op threads as set",
        "saelens_part_cache_read": "the SAELens cache read alone, to explain saelens_fp32: a fresh ActivationsStore "
        "as above, get_raw_llm_batch(raise_on_epoch_end=True) until StopIteration (datasets "
        "slice of 32 sequences -> torch fp32 [4096, d]); no mixing buffer, no batches; not "
        "in the ratios",
        "actstore_bf16": f"actstore.ActivationLoader(path, hook, {B}, shuffle=True, seed={SEED}, epochs=1, "
        f"device='cpu', "
        f"dtype=torch.bfloat16, threads={T}, buffer_rows={buffer_rows}), iterated to the end",
        "actstore_fp32": "the same with dtype=torch.float32",
        "actstore_bf16_warm": "actstore_bf16 on one loader made before timing (epochs=None), one epoch per call via "
        "set_epoch: what each epoch of a training run costs",
    }
    doc_out = {
        "benchmark": "loader",
        "meta": meta,
        "config": {
            "quick": args.quick,
            "repeats": repeats,
            "statistic": "median of interleaved repeats (order rotates each round, one untimed warm-up round)",
            "hook": hook,
            "rows": n,
            "rows_available": total,
            "d": d,
            "uncompressed_bf16_bytes": n * row_bytes,
            "batch_size": B,
            "buffer_rows": buffer_rows,
            "threads": T,
            "seed": SEED,
            "chunk_rows": chunk_rows,
            "chunks": n_chunks,
            "shard_rows": s.schema.shard_rows,
            "codec": codec.describe(),
            "compressed_bytes_of_chunks": compressed_bytes,
            "store": f"actstore.create(path, {{hook: {d}}}, segment='{SEGMENT}', dtype='bf16', codec='zstd', "
            f"durable=False), "
            f"appends of {APPEND_ROWS} rows with token/doc/pos/flags columns",
            "on_disk_bytes": disk,
            "rows_cut": f"rows cut to a multiple of lcm({BLOCK}, chunk_rows) = {unit}: whole store chunks and "
            f"whole SAELens "
            f"cache reads ({SL_SEQS_PER_READ} sequences x {SL_CONTEXT} rows); SAELens sequences are consecutive "
            f"128-row slices of the captured rows",
            "timed": "construction (open file / array / store, build the loader) + one whole epoch; each batch is "
            "dropped before the next; the ceilings time only their decode loop",
            "page_cache": "every file is in the page cache (written just before, read in the warm-up round); dropping "
            "the cache needs root",
            "variants": desc,
            "saelens": sl_desc,
            "zarr_config": {"async": zarr.config.get("async"), "threading": zarr.config.get("threading")},
            "torch_threads": torch.get_num_threads(),
            "shuffle_quality": "untimed passes of the same code with row tracking; actstore: a pass with tokens=True "
            "(doc column); SAELens: the same code path and seed over a one-wide cache holding each "
            "row's number; references: a uniform permutation of all rows, and the stored order",
        },
        "units": {
            "GBps": "uncompressed bf16 bytes delivered per second (rows_delivered x d x 2 B), 1e9 B/s",
            "compressed_GBps": "compressed chunk bytes decoded per second",
            "GBps_read": "SAELens: bf16-equivalent bytes of the rows it read from its cache per second",
            "rows_per_s": "rows delivered per second",
            "*_s": "seconds per timed call (one epoch)",
            "ratios": "rows/s of actstore / rows/s of the baseline (higher is better for actstore; vs the ceilings it "
            "is the fraction of the ceiling reached)",
            "paired_median": "median over rounds of the per-round rows/s ratio",
            "distinct_docs_per_batch_mean": "distinct document ids per batch, mean over batches",
            "lag1_doc_pearson": "Pearson correlation of doc ids of rows i and i+1 within a batch (0 = no order left)",
            "adjacent_same_doc_fraction": "fraction of adjacent row pairs within a batch from the same document",
        },
        "figures": figures,
        "ratios": ratios,
        "shuffle_quality": quality,
        "checks": checks,
        "notes": notes,
    }
    path = C.write_result("loader_quick" if args.quick else "loader", doc_out)

    print()
    print(
        f"{hook}, {n:,} rows x {d}; batch {B}; buffer {buffer_rows} rows; {T} threads; median of {repeats}; page cache"
    )
    tab = [
        [
            name,
            f"{f['GBps']:.3f}",
            f"{f['rows_per_s']:,.0f}",
            f"{f['median_s']:.3f}",
            f"{f['min_s']:.3f}-{f['max_s']:.3f}",
        ]
        for name, f in figures.items()
    ]
    print(C.fmt_table(tab, ["variant", "GB/s (bf16)", "rows/s", "median s", "range s"]))
    print()
    for v in ("actstore_bf16", "actstore_fp32", "actstore_bf16_warm"):
        if v in ratios:
            print(f"{v}: " + ", ".join(f"{k} x{r:.2f} (paired {paired[v][k]:.2f})" for k, r in ratios[v].items()))
    print()
    tab = [
        [
            name,
            f"{q['distinct_docs_per_batch_mean']:.1f}",
            f"{q['lag1_doc_pearson']:.3f}",
            f"{q['adjacent_same_doc_fraction']:.3f}",
        ]
        for name, q in quality.items()
    ]
    print(C.fmt_table(tab, ["shuffle quality", "docs/batch", "lag-1 r", "same doc adj."]))
    print(
        "checks: "
        + "; ".join(
            f"{k}: {v.get('rows_delivered', '')} rows" + (", every row once" if v.get("every_row_once") else "")
            for k, v in checks.items()
            if k != "zarr_array"
        )
    )
    for note in notes:
        print("note: " + note)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
