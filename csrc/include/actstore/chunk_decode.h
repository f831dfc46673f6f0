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

// One stored chunk to decode and scatter.
struct StoredChunk {
  const std::byte* data;  // stored bytes, crc32c included
  std::size_t nbytes;
};

// For each chunk j: verify its crc32c, decode it (Blosc when `blosc`, else the raw
// bytes) into a per-thread scratch of `chunk_bytes`, widen bf16 bits to float32
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
