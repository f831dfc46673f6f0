// float32 <-> bfloat16 conversion on raw bits.
//
// bfloat16 values are carried as uint16 bit patterns (the storage format keeps
// them as uint16 with `logical_dtype: bfloat16`). Plain C++17; no torch headers.
#pragma once

#include <cstdint>
#include <cstring>

namespace actstore {

// Round one float32 bit pattern to bfloat16 bits, round-to-nearest-even.
// Bit-identical to torch's float -> bfloat16 cast for every non-NaN input
// (finite values that round past the largest bf16 become +-inf, as RNE
// implies). NaN keeps its sign and upper payload bits and gets the quiet bit
// set, so it stays NaN even when only low mantissa bits were set (torch
// returns the canonical 0x7FC0 instead; both are NaN).
inline std::uint16_t fp32_bits_to_bf16(std::uint32_t bits) {
  // Branchless so the loops below auto-vectorize (SSE2 baseline, no -march).
  const std::uint32_t lsb = (bits >> 16) & 1u;
  const std::uint32_t rounded = (bits + 0x7FFFu + lsb) >> 16;
  const std::uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  // |x| > inf as a signed compare: SSE2 has no unsigned 32-bit compare.
  const bool is_nan = static_cast<std::int32_t>(bits & 0x7FFFFFFFu) > 0x7F800000;
  return static_cast<std::uint16_t>(is_nan ? quiet_nan : rounded);
}

// Exact: bfloat16 is the upper half of a float32.
inline std::uint32_t bf16_bits_to_fp32(std::uint16_t bits) {
  return static_cast<std::uint32_t>(bits) << 16;
}

// dst[i] = bf16 bits of src[i], i in [0, n). src: n float32; dst: n uint16.
// threads <= 0: default_threads(); calls under kMinParallelBytes of traffic
// (6 bytes per element) run on the calling thread. Buffers must not overlap.
void fp32_to_bf16(const float* src, std::uint16_t* dst, std::int64_t n, int threads);

// dst[i] = float32 value of bf16 bits src[i], i in [0, n). src: n uint16;
// dst: n float32. Same threading rules as fp32_to_bf16.
void bf16_to_fp32(const std::uint16_t* src, float* dst, std::int64_t n, int threads);

}  // namespace actstore
