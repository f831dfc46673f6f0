// Stored-chunk decode fused with the row scatter: see include/actstore/chunk_decode.h.
//
// Why it exists: the loader's decode workers otherwise cross from Python to native
// code four times per chunk (pread, crc32c, Blosc, scatter), each time giving up
// and taking back the GIL. On 2 busy cores a worker that waits for the GIL waits
// for whichever thread holds it to be scheduled again; one call per chunk group,
// with the GIL released throughout, removes those waits
// (benchmarks/results/loader_profile_quick.json).

#include "actstore/chunk_decode.h"

#include <atomic>
#include <cstring>
#include <vector>

#include "actstore/bf16.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define ACTSTORE_CRC_X86 1
#endif

namespace actstore {
namespace {

std::atomic<BloscDecompressFn> g_blosc{nullptr};

struct Table {
  std::uint32_t t[8][256];
  Table() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

std::uint32_t crc32c_table(std::uint32_t crc, const unsigned char* p, std::size_t n) {
  static const Table tab;
  // Slicing-by-8: eight table lookups per 8 bytes.
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= crc;
    crc = tab.t[7][w & 0xFF] ^ tab.t[6][(w >> 8) & 0xFF] ^ tab.t[5][(w >> 16) & 0xFF] ^
          tab.t[4][(w >> 24) & 0xFF] ^ tab.t[3][(w >> 32) & 0xFF] ^ tab.t[2][(w >> 40) & 0xFF] ^
          tab.t[1][(w >> 48) & 0xFF] ^ tab.t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ tab.t[0][(crc ^ *p++) & 0xFF];
  return crc;
}

// crc(A + B) from crc(A), crc(B) and len(B): crc(A) times x^(8 len(B)) mod P, plus
// crc(B) (zlib's crc32_combine, with the Castagnoli polynomial).
constexpr std::uint32_t kPoly = 0x82F63B78u;

std::uint32_t multmodp(std::uint32_t a, std::uint32_t b) {
  std::uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

std::uint32_t crc32c_combine(std::uint32_t crc1, std::uint32_t crc2, std::size_t len2) {
  struct Powers {  // x^(2^k) mod P, k < 70: enough for any 64-bit byte count times 8
    std::uint32_t x2n[70];
    Powers() {
      x2n[0] = 1u << 30;  // x^1, bit-reflected
      for (int k = 1; k < 70; ++k) x2n[k] = multmodp(x2n[k - 1], x2n[k - 1]);
    }
  };
  static const Powers pw;
  std::uint32_t p = 1u << 31;  // x^0
  for (int k = 3; len2; len2 >>= 1, ++k) {
    if (len2 & 1) p = multmodp(pw.x2n[k], p);
  }
  return multmodp(p, crc1) ^ crc2;
}

#ifdef ACTSTORE_CRC_X86
__attribute__((target("sse4.2"))) std::uint32_t crc32c_hw(std::uint32_t crc, const unsigned char* p,
                                                          std::size_t n) {
  std::uint64_t c = crc;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  std::uint32_t c32 = static_cast<std::uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// Three independent streams over thirds of the buffer hide the crc32 instruction's
// 3-cycle latency (one stream: 0.29 ms per MiB here, google_crc32c 0.12 ms); the
// three crcs are joined with crc32c_combine.
__attribute__((target("sse4.2"))) std::uint32_t crc32c_hw3(const unsigned char* p, std::size_t n) {
  if (n < 4096) return ~crc32c_hw(0xFFFFFFFFu, p, n);
  const std::size_t part = (n / 3) & ~std::size_t(7);
  const unsigned char* a = p;
  const unsigned char* b = p + part;
  const unsigned char* c = p + 2 * part;
  std::uint64_t ca = 0xFFFFFFFFu, cb = 0xFFFFFFFFu, cc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < part; i += 8) {
    std::uint64_t wa, wb, wc;
    std::memcpy(&wa, a + i, 8);
    std::memcpy(&wb, b + i, 8);
    std::memcpy(&wc, c + i, 8);
    ca = _mm_crc32_u64(ca, wa);
    cb = _mm_crc32_u64(cb, wb);
    cc = _mm_crc32_u64(cc, wc);
  }
  const std::uint32_t tail = crc32c_hw(static_cast<std::uint32_t>(cc), c + part, n - 3 * part);
  const std::uint32_t ab = crc32c_combine(~static_cast<std::uint32_t>(ca), ~static_cast<std::uint32_t>(cb), part);
  return crc32c_combine(ab, ~tail, n - 2 * part);
}

bool cpu_has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

std::uint32_t crc32c(const std::byte* data, std::size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
#ifdef ACTSTORE_CRC_X86
  if (cpu_has_sse42()) return crc32c_hw3(p, n);
#endif
  return ~crc32c_table(0xFFFFFFFFu, p, n);
}

void set_blosc_decompress(BloscDecompressFn fn) { g_blosc.store(fn); }
bool have_blosc_decompress() { return g_blosc.load() != nullptr; }

std::int64_t decode_scatter(const StoredChunk* chunks, std::int64_t num_chunks, const std::int64_t* spans,
                            bool blosc, bool widen, std::size_t chunk_bytes, std::size_t row_bytes,
                            const std::int64_t* rows, const ScatterTarget* dsts, std::int64_t num_dsts,
                            const std::int32_t* dst_ids, const std::int64_t* dst_rows, std::string* reason) {
  // Per-thread scratch, kept between calls: the loader's pool threads call this for
  // every chunk, and a fresh buffer would fault its pages in each time.
  thread_local std::vector<std::byte> decoded;
  thread_local std::vector<float> wide;
  const BloscDecompressFn dec = g_blosc.load();
  if (blosc && dec == nullptr) {
    *reason = "no Blosc decoder loaded";
    return 0;
  }
  const std::int64_t chunk_rows = row_bytes ? static_cast<std::int64_t>(chunk_bytes / row_bytes) : 0;
  for (std::int64_t j = 0; j < num_chunks; ++j) {
    const std::byte* data = chunks[j].data;
    const std::size_t n = chunks[j].nbytes;
    if (n < 4) {
      *reason = "only " + std::to_string(n) + " bytes, shorter than its checksum";
      return j;
    }
    const std::size_t body_n = n - 4;
    std::uint32_t stored;
    std::memcpy(&stored, data + body_n, 4);  // little endian, as x86-64 and arm64 are
    if (crc32c(data, body_n) != stored) {
      *reason = "crc32c mismatch";
      return j;
    }
    const std::byte* src = data;
    if (blosc) {
      // Blosc1 frame header: version, versionlz, flags, typesize, then little-endian
      // uint32 nbytes (decoded size), blocksize, cbytes (frame size).
      if (body_n < 16) {
        *reason = "only " + std::to_string(body_n) + " bytes, shorter than a blosc header";
        return j;
      }
      std::uint32_t nbytes, cbytes;
      std::memcpy(&nbytes, data + 4, 4);
      std::memcpy(&cbytes, data + 12, 4);
      if (cbytes != body_n) {
        *reason = "blosc frame says " + std::to_string(cbytes) + " bytes, holds " + std::to_string(body_n);
        return j;
      }
      if (nbytes != chunk_bytes) {
        *reason = "decodes to " + std::to_string(nbytes) + " bytes, expected " + std::to_string(chunk_bytes);
        return j;
      }
      if (decoded.size() < chunk_bytes) decoded.resize(chunk_bytes);
      const int got = dec(data, decoded.data(), chunk_bytes, 1);
      if (got <= 0 || static_cast<std::size_t>(got) != chunk_bytes) {
        *reason = "error during blosc decompression: " + std::to_string(got);
        return j;
      }
      src = decoded.data();
    } else if (body_n != chunk_bytes) {
      *reason = "holds " + std::to_string(body_n) + " bytes, expected " + std::to_string(chunk_bytes);
      return j;
    }
    std::size_t out_row = row_bytes;
    if (widen && reinterpret_cast<std::uintptr_t>(src) % alignof(std::uint16_t)) {
      // Raw bytes at an odd offset of a merged get: widen from an aligned copy.
      if (decoded.size() < chunk_bytes) decoded.resize(chunk_bytes);
      std::memcpy(decoded.data(), src, chunk_bytes);
      src = decoded.data();
    }
    if (widen) {
      const std::int64_t elems = static_cast<std::int64_t>(chunk_bytes / 2);
      if (wide.size() < static_cast<std::size_t>(elems)) wide.resize(static_cast<std::size_t>(elems));
      bf16_to_fp32(reinterpret_cast<const std::uint16_t*>(src), wide.data(), elems, 1);
      src = reinterpret_cast<const std::byte*>(wide.data());
      out_row = row_bytes * 2;
    }
    const std::int64_t lo = spans[2 * j], hi = spans[2 * j + 1];
    scatter_rows(src, chunk_rows, rows + lo, dsts, num_dsts, dst_ids + lo, dst_rows + lo, hi - lo, out_row, 1);
  }
  return -1;
}

}  // namespace actstore
