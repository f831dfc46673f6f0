// Row gather: see include/actstore/gather.h.

#include "actstore/gather.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "actstore/parallel.h"

namespace actstore {
namespace {

// How many rows ahead to prefetch. A shuffled gather is latency-bound (each
// row is a random DRAM access); prefetching the rows a few iterations ahead
// keeps several misses in flight per thread. On the 2-core dev VM (1M shuffled
// rows x 768 B from 768 MiB of sources) it took one thread from ~190 to ~165 ms
// best-of-6; at two threads memory bandwidth dominates and it made no difference.
constexpr std::int64_t kPrefetchDistance = 8;
// Prefetch at most this many cache lines per row; longer rows stream well
// enough once the hardware prefetcher has seen the first lines.
constexpr std::size_t kPrefetchMaxLines = 16;
constexpr std::size_t kCacheLine = 64;

inline void prefetch_row(const GatherSource* sources, std::int64_t num_sources,
                         std::int32_t s, std::int64_t r, std::size_t row_bytes) {
#if defined(__GNUC__) || defined(__clang__)
  // Only valid rows are prefetched: forming an out-of-range pointer is UB.
  if (s < 0 || s >= num_sources) return;
  const GatherSource& src = sources[s];
  if (r < 0 || r >= src.rows) return;
  const std::byte* p = src.data + static_cast<std::size_t>(r) * row_bytes;
  const std::size_t lines = std::min(kPrefetchMaxLines, (row_bytes + kCacheLine - 1) / kCacheLine);
  for (std::size_t l = 0; l < lines; ++l) __builtin_prefetch(p + l * kCacheLine, 0, 0);
#else
  (void)sources; (void)num_sources; (void)s; (void)r; (void)row_bytes;
#endif
}

}  // namespace

GatherStatus check_gather_indices(const GatherSource* sources, std::int64_t num_sources,
                                  const std::int32_t* src_ids, const std::int64_t* rows,
                                  std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t s = src_ids[i];
    if (s < 0 || s >= num_sources) return {GatherError::kSrcId, i};
    const std::int64_t r = rows[i];
    if (r < 0 || r >= sources[s].rows) return {GatherError::kRow, i};
  }
  return {};
}

GatherStatus gather_rows(const GatherSource* sources, std::int64_t num_sources,
                         const std::int32_t* src_ids, const std::int64_t* rows,
                         std::int64_t n, std::size_t row_bytes, std::byte* out,
                         int threads) {
  if (n <= 0) return {};
  const int t = resolve_threads(threads, n, static_cast<std::size_t>(n) * row_bytes);

  std::mutex mu;
  GatherStatus first;  // guarded by mu; the lowest invalid position seen

  parallel_for(n, t, [&](std::int64_t begin, std::int64_t end) {
    GatherStatus local;
    for (std::int64_t i = begin; i < end; ++i) {
      if (i + kPrefetchDistance < end) {
        prefetch_row(sources, num_sources, src_ids[i + kPrefetchDistance],
                     rows[i + kPrefetchDistance], row_bytes);
      }
      // Each index is read once into a local and checked before use, so even
      // a concurrent write to the index arrays cannot cause an out-of-bounds read.
      const std::int32_t s = src_ids[i];
      if (s < 0 || s >= num_sources) {
        if (local.ok()) local = {GatherError::kSrcId, i};
        continue;
      }
      const GatherSource& src = sources[s];
      const std::int64_t r = rows[i];
      if (r < 0 || r >= src.rows) {
        if (local.ok()) local = {GatherError::kRow, i};
        continue;
      }
      std::memcpy(out + static_cast<std::size_t>(i) * row_bytes,
                  src.data + static_cast<std::size_t>(r) * row_bytes, row_bytes);
    }
    if (!local.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      if (first.ok() || local.index < first.index) first = local;
    }
  });
  return first;
}

}  // namespace actstore
