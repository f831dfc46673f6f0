// Shifted column moments of a float32 or bfloat16 matrix: the hot part of the
// store's mergeable statistics (count, mean, M2, norm sum). Plain C++17.
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

// The same for x given as bfloat16 bits ([n, d] uint16), without a float32
// copy. Bit-identical to row_moments on the float32 values of x with the same
// `threads`: the widening is exact, and the rows are split over threads and
// summed in the same order (the thread count is resolved as for 4-byte input).
double row_moments_bf16(const std::uint16_t* x, std::int64_t n, std::int64_t d, const double* shift,
                        double* sum, double* sumsq, int threads);

}  // namespace actstore
