// Row scatter from one 2-D row-major source into several output batches.
//
// Used by the loader: each decoded chunk, while still in cache, sends its rows
// straight to their shuffled places in the batches (one DRAM write per row,
// instead of writing the decoded chunk and gathering from it later). Plain
// C++17; no Python or torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "actstore/gather.h"

namespace actstore {

// One row-major destination: `rows` rows of row_bytes bytes each.
struct ScatterTarget {
  std::byte* data;   // first byte of row 0; may be null when rows == 0
  std::int64_t rows;
};

// Which index of a scatter call was invalid (GatherStatus.error values):
//   kRow    rows[index] is outside [0, src_rows)
//   kSrcId  dst_ids[index] is outside [0, num_dsts)
//   kDstRow dst_rows[index] is outside [0, dsts[dst_ids[index]].rows)
GatherStatus check_scatter_indices(std::int64_t src_rows, const std::int64_t* rows,
                                   const ScatterTarget* dsts, std::int64_t num_dsts,
                                   const std::int32_t* dst_ids, const std::int64_t* dst_rows,
                                   std::int64_t n);

// Row dst_rows[i] of dsts[dst_ids[i]] = row rows[i] of src, for i in [0, n).
//
//   src       src_rows x row_bytes, row-major; must not overlap a destination
//   threads   <= 0: default_threads(); under kMinParallelBytes runs on the
//             calling thread
//
// Every index is bounds-checked as it is read (an invalid entry is skipped and
// the first invalid position returned), so invalid input never touches memory
// outside the arrays. Two entries naming the same destination row race; the
// caller keeps destinations distinct.
GatherStatus scatter_rows(const std::byte* src, std::int64_t src_rows, const std::int64_t* rows,
                          const ScatterTarget* dsts, std::int64_t num_dsts,
                          const std::int32_t* dst_ids, const std::int64_t* dst_rows,
                          std::int64_t n, std::size_t row_bytes, int threads);

}  // namespace actstore
