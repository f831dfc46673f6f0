// float32 <-> bfloat16 conversion: see include/actstore/bf16.h.

#include "actstore/bf16.h"

#include <cstring>

#include "actstore/parallel.h"

namespace actstore {
namespace {

// Threads split the array in blocks of this many elements, so that no two
// threads write the same cache line (4096 * 2 bytes is a multiple of 64).
constexpr std::int64_t kBlock = 4096;

template <typename Fn>
void for_blocks(std::int64_t n, std::size_t bytes_per_elem, int threads, Fn&& fn) {
  if (n <= 0) return;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  const int t = resolve_threads(threads, blocks, static_cast<std::size_t>(n) * bytes_per_elem);
  parallel_for(blocks, t, [&](std::int64_t b0, std::int64_t b1) {
    const std::int64_t begin = b0 * kBlock;
    const std::int64_t end = std::min(n, b1 * kBlock);
    fn(begin, end);
  });
}

}  // namespace

void fp32_to_bf16(const float* src, std::uint16_t* dst, std::int64_t n, int threads) {
  for_blocks(n, sizeof(float) + sizeof(std::uint16_t), threads,
             [src, dst](std::int64_t begin, std::int64_t end) {
               const float* __restrict s = src;
               std::uint16_t* __restrict d = dst;
               for (std::int64_t i = begin; i < end; ++i) {
                 // memcpy is the defined way to read the bits; it compiles
                 // to a plain (vector) load.
                 std::uint32_t bits;
                 std::memcpy(&bits, s + i, sizeof(bits));
                 d[i] = fp32_bits_to_bf16(bits);
               }
             });
}

void bf16_to_fp32(const std::uint16_t* src, float* dst, std::int64_t n, int threads) {
  for_blocks(n, sizeof(float) + sizeof(std::uint16_t), threads,
             [src, dst](std::int64_t begin, std::int64_t end) {
               const std::uint16_t* __restrict s = src;
               float* __restrict d = dst;
               for (std::int64_t i = begin; i < end; ++i) {
                 const std::uint32_t bits = bf16_bits_to_fp32(s[i]);
                 std::memcpy(d + i, &bits, sizeof(bits));
               }
             });
}

}  // namespace actstore
