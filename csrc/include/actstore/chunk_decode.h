// Stored-chunk decode fused with the loader's row scatter: see chunk_decode.cpp.
//
// A stored chunk is compress(raw bytes) + crc32c (4 bytes, little endian, over the
// compressed bytes): zarr v3's [bytes, blosc, crc32c] chain, or [bytes, crc32c] raw
// (actstore/store/codecs.py). Plain C++17; no Python or torch headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "actstore/scatter.h"

namespace actstore {

// CRC-32C (Castagnoli) of n bytes, the value google_crc32c.value gives: SSE4.2
// instructions where the CPU has them, else a table.
std::uint32_t crc32c(const std::byte* data, std::size_t n);

// c-blosc1's blosc_decompress_ctx(src, dest, destsize, numinternalthreads): the
// number of bytes decoded, or <= 0 on error.
using BloscDecompressFn = int (*)(const void*, void*, std::size_t, int);

// Install the Blosc decoder (the one numcodecs carries; found by the bindings).
void set_blosc_decompress(BloscDecompressFn fn);
bool have_blosc_decompress();

// The block codecs numcodecs' Blosc library also exports (zstd, lz4), for decoding
// Blosc frames block by block straight into the destination rows (chunk_decode.cpp).
// Any of them may be null: frames that would need it take the blosc_decompress_ctx
// path.
struct BlockCodecs {
  void* (*zstd_create_dctx)() = nullptr;
  std::size_t (*zstd_free_dctx)(void*) = nullptr;
  std::size_t (*zstd_decompress_dctx)(void*, void*, std::size_t, const void*, std::size_t) = nullptr;
  unsigned (*zstd_is_error)(std::size_t) = nullptr;
  int (*lz4_decompress_safe)(const char*, char*, int, int) = nullptr;
};
void set_block_codecs(const BlockCodecs& codecs);

// Direct decoding on (the default) or off, and how many chunks took each path since
// load: Blosc frames decoded straight into the rows, and frames that fell back to
// blosc_decompress_ctx + scatter (bit shuffle, a codec not found, odd layouts, and
// frames the direct decoder refused, which the fallback then reports).
struct DirectStats {
  bool enabled;
  std::int64_t direct;
  std::int64_t fallback;
};
DirectStats decode_direct_stats(int enable);  // enable: 1 on, 0 off, -1 leave

// One stored chunk to decode and scatter.
struct StoredChunk {
  const std::byte* data;  // stored bytes, crc32c included
  std::size_t nbytes;
};

// For each chunk j: verify its crc32c, decode it (Blosc when `blosc`, else the raw
// bytes) and send its rows to their destinations. Blosc frames of byte shuffle (or no
// shuffle) with zstd or lz4 blocks are decoded block by block and unshuffled straight
// into the destination rows (nothing is written for a frame that fails); others are
// decoded into a per-thread scratch of `chunk_bytes` first. Widen bf16 bits to float32
// when `widen`, and send row rows[i] of it to row dst_rows[i] of dsts[dst_ids[i]]
// for i in [spans[2j], spans[2j+1]). Destination rows are row_bytes (x2 when widen).
//
// Indices must have been checked by the caller (rows < chunk_bytes / row_bytes,
// destinations in range): the kernel re-checks each one and skips an invalid
// entry, so bad input never writes outside the arrays.
//
// Returns -1, or the first chunk j that failed, with `reason` set to the same
// words the Python codec uses ("crc32c mismatch", ...). Chunks before j are done.
std::int64_t decode_scatter(const StoredChunk* chunks, std::int64_t num_chunks, const std::int64_t* spans,
                            bool blosc, bool widen, std::size_t chunk_bytes, std::size_t row_bytes,
                            const std::int64_t* rows, const ScatterTarget* dsts, std::int64_t num_dsts,
                            const std::int32_t* dst_ids, const std::int64_t* dst_rows, std::string* reason);

}  // namespace actstore
