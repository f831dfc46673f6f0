// Shifted column moments: see include/actstore/moments.h.

#include "actstore/moments.h"

#include <cmath>
#include <vector>

#include "actstore/parallel.h"

namespace actstore {

double row_moments(const float* x, std::int64_t n, std::int64_t d, const double* shift,
                   double* sum, double* sumsq, int threads) {
  for (std::int64_t j = 0; j < d; ++j) sum[j] = sumsq[j] = 0.0;
  if (n <= 0 || d <= 0) return 0.0;
  const int t = resolve_threads(threads, n, static_cast<std::size_t>(n * d) * sizeof(float));
  // One accumulator set per thread: [sum d | sumsq d | norm 1].
  std::vector<std::vector<double>> acc(static_cast<std::size_t>(t), std::vector<double>(2 * d + 1, 0.0));
  const std::int64_t base = n / t, rem = n % t;
  parallel_for(t, t, [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t r0 = p * base + std::min<std::int64_t>(p, rem);
      const std::int64_t r1 = r0 + base + (p < rem ? 1 : 0);
      double* __restrict s1 = acc[p].data();
      double* __restrict s2 = s1 + d;
      double norm = 0.0;
      for (std::int64_t i = r0; i < r1; ++i) {
        const float* __restrict row = x + i * d;
        double sq = 0.0;
        // Branch-free inner loop over columns: the compiler vectorizes it.
        for (std::int64_t j = 0; j < d; ++j) {
          const double v = static_cast<double>(row[j]);
          const double c = v - shift[j];
          s1[j] += c;
          s2[j] += c * c;
          sq += v * v;
        }
        norm += std::sqrt(sq);
      }
      s1[2 * d] = norm;
    }
  });
  double norm = 0.0;
  for (const auto& a : acc) {
    for (std::int64_t j = 0; j < d; ++j) {
      sum[j] += a[j];
      sumsq[j] += a[d + j];
    }
    norm += a[2 * d];
  }
  return norm;
}

}  // namespace actstore
