// Row scatter: see include/actstore/scatter.h.

#include "actstore/scatter.h"

#include <cstring>
#include <mutex>

#include "actstore/parallel.h"

namespace actstore {
namespace {

inline GatherStatus check_one(std::int64_t src_rows, const ScatterTarget* dsts, std::int64_t num_dsts,
                              std::int64_t r, std::int32_t d, std::int64_t dr, std::int64_t i) {
  if (r < 0 || r >= src_rows) return {GatherError::kRow, i};
  if (d < 0 || d >= num_dsts) return {GatherError::kSrcId, i};
  if (dr < 0 || dr >= dsts[d].rows) return {GatherError::kDstRow, i};
  return {};
}

}  // namespace

GatherStatus check_scatter_indices(std::int64_t src_rows, const std::int64_t* rows,
                                   const ScatterTarget* dsts, std::int64_t num_dsts,
                                   const std::int32_t* dst_ids, const std::int64_t* dst_rows,
                                   std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const GatherStatus st = check_one(src_rows, dsts, num_dsts, rows[i], dst_ids[i], dst_rows[i], i);
    if (!st.ok()) return st;
  }
  return {};
}

GatherStatus scatter_rows(const std::byte* src, std::int64_t src_rows, const std::int64_t* rows,
                          const ScatterTarget* dsts, std::int64_t num_dsts,
                          const std::int32_t* dst_ids, const std::int64_t* dst_rows,
                          std::int64_t n, std::size_t row_bytes, int threads) {
  if (n <= 0) return {};
  const int t = resolve_threads(threads, n, static_cast<std::size_t>(n) * row_bytes);
  std::mutex mu;
  GatherStatus first;
  parallel_for(n, t, [&](std::int64_t begin, std::int64_t end) {
    GatherStatus local;
    for (std::int64_t i = begin; i < end; ++i) {
      // Read each index once into a local, check it, then use it: a concurrent
      // write to the index arrays cannot cause an out-of-bounds access.
      const std::int64_t r = rows[i];
      const std::int32_t d = dst_ids[i];
      const std::int64_t dr = dst_rows[i];
      const GatherStatus st = check_one(src_rows, dsts, num_dsts, r, d, dr, i);
      if (!st.ok()) {
        if (local.ok()) local = st;
        continue;
      }
      // The source is usually cache-hot (a chunk just decoded); the writes go to
      // scattered rows of the batches, each row one contiguous copy.
      std::memcpy(dsts[d].data + static_cast<std::size_t>(dr) * row_bytes,
                  src + static_cast<std::size_t>(r) * row_bytes, row_bytes);
    }
    if (!local.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      if (first.ok() || local.index < first.index) first = local;
    }
  });
  return first;
}

}  // namespace actstore
