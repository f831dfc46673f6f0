// Row gather from several 2-D row-major sources into one output batch.
//
// Used by the reader: decoded chunks (one per source) are gathered into a
// shuffled, pinned batch. Plain C++17; no Python or torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace actstore {

// One row-major source: `rows` rows of `row_bytes` bytes each (row_bytes is
// the same for all sources and for the output, and is passed separately).
struct GatherSource {
  const std::byte* data;  // first byte of row 0; may be null when rows == 0
  std::int64_t rows;      // number of rows
};

// Which index of a gather call was invalid.
enum class GatherError : std::int32_t {
  kNone = 0,
  kSrcId = 1,  // src_ids[index] is outside [0, num_sources)
  kRow = 2,    // rows[index] is outside [0, sources[src_ids[index]].rows)
  kDstRow = 3,  // scatter only: dst_rows[index] is outside its destination
};

struct GatherStatus {
  GatherError error = GatherError::kNone;
  std::int64_t index = -1;  // position i of the first invalid entry, or -1
  bool ok() const { return error == GatherError::kNone; }
};

// Check every (src_ids[i], rows[i]) pair for i in [0, n) without copying.
// Single pass, O(n); returns the first invalid position.
GatherStatus check_gather_indices(const GatherSource* sources, std::int64_t num_sources,
                                  const std::int32_t* src_ids, const std::int64_t* rows,
                                  std::int64_t n);

// out[i*row_bytes : (i+1)*row_bytes] = row rows[i] of sources[src_ids[i]],
// for i in [0, n).
//
//   sources   num_sources entries, each `rows` x row_bytes, row-major
//   src_ids   n source indices (int32)
//   rows      n row indices into the chosen source (int64)
//   out       n x row_bytes bytes, row-major; must not overlap any source
//   threads   <= 0: default_threads(); calls under kMinParallelBytes run on
//             the calling thread
//
// Every index is bounds-checked as it is read, so invalid input never reads
// out of bounds: an invalid entry leaves its output row untouched and the
// first invalid position is returned (after all valid rows are copied).
// Callers that want all-or-nothing semantics run check_gather_indices first.
// Thread-safe; does not allocate except for the thread handles.
GatherStatus gather_rows(const GatherSource* sources, std::int64_t num_sources,
                         const std::int32_t* src_ids, const std::int64_t* rows,
                         std::int64_t n, std::size_t row_bytes, std::byte* out,
                         int threads);

}  // namespace actstore
