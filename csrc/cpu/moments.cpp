// Shifted column moments: see include/actstore/moments.h.

#include "actstore/moments.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "actstore/bf16.h"
#include "actstore/parallel.h"

namespace actstore {
namespace {

// Rows widened to float64 and summed together: a block's column sums still add
// its rows one after another (the order of a row-at-a-time loop, so results do
// not depend on the block size), but each column's sum and sum of squares are
// loaded and stored once per block instead of once per row, and the rows'
// squared norms are independent chains that overlap in the pipeline.
constexpr std::int64_t kBlockRows = 4;

inline void widen(const float* row, std::int64_t d, double* out) {
  for (std::int64_t j = 0; j < d; ++j) out[j] = static_cast<double>(row[j]);
}

inline void widen(const std::uint16_t* row, std::int64_t d, double* out) {
  for (std::int64_t j = 0; j < d; ++j) {
    const std::uint32_t bits = bf16_bits_to_fp32(row[j]);
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    out[j] = static_cast<double>(f);
  }
}

// Moments of rows [r0, r1) into s1, s2 (zeroed by the caller); returns their norm sum.
// Per column: s1 += x - shift and s2 += (x - shift)^2, row after row; per row:
// sq = sum_j x^2 in column order, then norm += sqrt(sq), row after row. Exactly the
// operations, in the same order, of the row-at-a-time loop this replaced.
template <typename T>
inline __attribute__((always_inline)) double moments_range(const T* x, std::int64_t r0, std::int64_t r1, std::int64_t d,
                     const double* __restrict shift, double* __restrict s1, double* __restrict s2,
                     double* __restrict buf) {
  double norm = 0.0;
  for (std::int64_t i = r0; i < r1; i += kBlockRows) {
    const std::int64_t rows = std::min(kBlockRows, r1 - i);
    for (std::int64_t k = 0; k < rows; ++k) widen(x + (i + k) * d, d, buf + k * d);
    if (rows == kBlockRows) {
      const double* __restrict v0 = buf;
      const double* __restrict v1 = buf + d;
      const double* __restrict v2 = buf + 2 * d;
      const double* __restrict v3 = buf + 3 * d;
      for (std::int64_t j = 0; j < d; ++j) {
        const double sh = shift[j];
        const double c0 = v0[j] - sh, c1 = v1[j] - sh, c2 = v2[j] - sh, c3 = v3[j] - sh;
        s1[j] = (((s1[j] + c0) + c1) + c2) + c3;
        s2[j] = (((s2[j] + c0 * c0) + c1 * c1) + c2 * c2) + c3 * c3;
      }
      double q0 = 0.0, q1 = 0.0, q2 = 0.0, q3 = 0.0;
      for (std::int64_t j = 0; j < d; ++j) {
        q0 += v0[j] * v0[j];
        q1 += v1[j] * v1[j];
        q2 += v2[j] * v2[j];
        q3 += v3[j] * v3[j];
      }
      norm += std::sqrt(q0);
      norm += std::sqrt(q1);
      norm += std::sqrt(q2);
      norm += std::sqrt(q3);
    } else {
      for (std::int64_t k = 0; k < rows; ++k) {
        const double* __restrict v = buf + k * d;
        double sq = 0.0;
        for (std::int64_t j = 0; j < d; ++j) {
          const double c = v[j] - shift[j];
          s1[j] += c;
          s2[j] += c * c;
        }
        for (std::int64_t j = 0; j < d; ++j) sq += v[j] * v[j];
        norm += std::sqrt(sq);
      }
    }
  }
  return norm;
}

// Compiled twice on x86-64 (AVX2 and the SSE2 baseline), picked at load time by the CPU:
// 4-wide vectors halve the time of the column loops. No FMA in either clone (it rounds
// once where the baseline rounds twice), so both give the same bits.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define ACTSTORE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ACTSTORE_CLONES
#endif

ACTSTORE_CLONES double range_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t d,
                                 const double* shift, double* s1, double* s2, double* buf) {
  return moments_range(x, r0, r1, d, shift, s1, s2, buf);
}

ACTSTORE_CLONES double range_bf16(const std::uint16_t* x, std::int64_t r0, std::int64_t r1, std::int64_t d,
                                  const double* shift, double* s1, double* s2, double* buf) {
  return moments_range(x, r0, r1, d, shift, s1, s2, buf);
}

inline double range(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t d, const double* shift,
                    double* s1, double* s2, double* buf) {
  return range_f32(x, r0, r1, d, shift, s1, s2, buf);
}

inline double range(const std::uint16_t* x, std::int64_t r0, std::int64_t r1, std::int64_t d,
                    const double* shift, double* s1, double* s2, double* buf) {
  return range_bf16(x, r0, r1, d, shift, s1, s2, buf);
}

template <typename T>
double moments(const T* x, std::int64_t n, std::int64_t d, const double* shift, double* sum,
               double* sumsq, int threads) {
  for (std::int64_t j = 0; j < d; ++j) sum[j] = sumsq[j] = 0.0;
  if (n <= 0 || d <= 0) return 0.0;
  // The split depends on float32 bytes for every input type, so that bf16 input gives the
  // float32 input's results bit for bit (the split decides the order of the sums).
  const int t = resolve_threads(threads, n, static_cast<std::size_t>(n * d) * sizeof(float));
  // One accumulator set per thread: [sum d | sumsq d | norm 1], and kBlockRows widened rows.
  std::vector<std::vector<double>> acc(static_cast<std::size_t>(t), std::vector<double>(2 * d + 1, 0.0));
  const std::int64_t base = n / t, rem = n % t;
  parallel_for(t, t, [&](std::int64_t p0, std::int64_t p1) {
    std::vector<double> buf(static_cast<std::size_t>(kBlockRows * d));
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t r0 = p * base + std::min<std::int64_t>(p, rem);
      const std::int64_t r1 = r0 + base + (p < rem ? 1 : 0);
      double* s1 = acc[p].data();
      s1[2 * d] = range(x, r0, r1, d, shift, s1, s1 + d, buf.data());
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

}  // namespace

double row_moments(const float* x, std::int64_t n, std::int64_t d, const double* shift,
                   double* sum, double* sumsq, int threads) {
  return moments(x, n, d, shift, sum, sumsq, threads);
}

double row_moments_bf16(const std::uint16_t* x, std::int64_t n, std::int64_t d, const double* shift,
                        double* sum, double* sumsq, int threads) {
  return moments(x, n, d, shift, sum, sumsq, threads);
}

}  // namespace actstore
