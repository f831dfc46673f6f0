// Thread-splitting helper shared by the CPU kernels.
//
// The kernels here are memory-bound copies, so one thread per core up to a
// small cap is enough to saturate DRAM bandwidth; more threads only add
// start-up cost (a std::thread spawn + join is ~20-50 us).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace actstore {

// Below this many bytes of work a call runs on the calling thread: spawning
// threads costs more than copying 1 MiB (~50-100 us at 10-20 GB/s).
constexpr std::size_t kMinParallelBytes = std::size_t(1) << 20;

// Upper bound for the default thread count; memory bandwidth saturates well
// before this on typical hosts.
constexpr int kMaxDefaultThreads = 8;

// Default thread count: min(hardware_concurrency, kMaxDefaultThreads), at least 1.
inline int default_threads() {
  unsigned hc = std::thread::hardware_concurrency();
  if (hc == 0) hc = 1;
  return static_cast<int>(std::min<unsigned>(hc, kMaxDefaultThreads));
}

// Resolve the thread count for a call that moves `work_bytes` bytes over `n`
// independent items. `requested` <= 0 means "use default_threads()". The
// result is in [1, max(n, 1)], and 1 when work_bytes < kMinParallelBytes.
inline int resolve_threads(int requested, std::int64_t n, std::size_t work_bytes) {
  int t = requested > 0 ? requested : default_threads();
  if (work_bytes < kMinParallelBytes) t = 1;
  if (n < t) t = static_cast<int>(std::max<std::int64_t>(n, 1));
  return std::max(t, 1);
}

// Run fn(begin, end) over [0, n) split into `threads` contiguous ranges of
// near-equal size. The calling thread runs the last range itself, so
// threads == 1 spawns nothing. fn must not throw (kernels here are noexcept
// memory copies; all validation happens before this is called).
template <typename Fn>
void parallel_for(std::int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  if (threads <= 1) {
    fn(std::int64_t(0), n);
    return;
  }
  const std::int64_t t = std::min<std::int64_t>(threads, n);
  const std::int64_t base = n / t;
  const std::int64_t rem = n % t;
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(t - 1));
  std::int64_t begin = 0;
  for (std::int64_t i = 0; i < t; ++i) {
    const std::int64_t end = begin + base + (i < rem ? 1 : 0);
    if (i == t - 1) {
      fn(begin, end);
    } else {
      pool.emplace_back([&fn, begin, end] { fn(begin, end); });
    }
    begin = end;
  }
  for (auto& th : pool) th.join();
}

}  // namespace actstore
