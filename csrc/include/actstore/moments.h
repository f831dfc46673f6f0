// Shifted column moments of a float32 matrix: the hot part of the store's
// mergeable statistics (count, mean, M2, norm sum). Plain C++17.
#pragma once

#include <cstdint>

namespace actstore {

// x: [n, d] row-major float32. shift: [d] float64, subtracted before squaring
// so that M2 = sumsq - n * (sum / n)^2 does not cancel catastrophically when a
// column's mean is large next to its spread (pass a value near the mean).
// Writes, with float64 accumulators:
//   sum[j]   = sum_i (x[i, j] - shift[j])
//   sumsq[j] = sum_i (x[i, j] - shift[j])^2
// and returns sum_i ||x[i, :]||_2. NaN/inf propagate into the results, which
// callers check. Rows are split over threads (<= 0: default), each with its own
// accumulators, merged at the end.
double row_moments(const float* x, std::int64_t n, std::int64_t d, const double* shift,
                   double* sum, double* sumsq, int threads);

}  // namespace actstore
