// Stored-chunk decode fused with the row scatter: see include/actstore/chunk_decode.h.
//
// Why it exists: the loader's decode workers otherwise cross from Python to native
// code four times per chunk (pread, crc32c, Blosc, scatter), each time giving up
// and taking back the GIL. On 2 busy cores a worker that waits for the GIL waits
// for whichever thread holds it to be scheduled again; one call per chunk group,
// with the GIL released throughout, removes those waits
// (benchmarks/results/loader_profile_quick.json).

#include "actstore/chunk_decode.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <vector>

#include "actstore/bf16.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
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


// -- Blosc1 frames decoded straight into the destination rows ----------------------------
//
// Why: blosc_decompress_ctx unshuffles each block into a contiguous buffer that the
// scatter then copies row by row into the batches: one extra pass over every decoded
// byte (0.45 ms per 1.5 MiB chunk, a third of the loader's CPU time). Here the blocks'
// compressed streams are decompressed into a per-thread buffer, and the unshuffle
// writes each row's bytes at its destination instead. The frame layout and every check
// follow c-blosc 1.x's blosc_run_decompression_with_context and blosc_d (blosc.c):
//
//   header (16 bytes): version (2), compversion, flags, typesize, u32 nbytes,
//     u32 blocksize, u32 cbytes. flags: 0x1 byte shuffle, 0x2 memcpyed (the raw bytes
//     follow the header), 0x4 bit shuffle, 0x8 must be clear, 0x10 blocks not split,
//     bits 5-7 the codec (1 lz4, 4 zstd).
//   bstarts: u32 offset of each block's data.
//   block: nsplits x (u32 cbytes, stream), nsplits = typesize when split, else 1;
//     a stream of exactly neblock bytes is stored raw.
//
// Anything this does not cover (bit shuffle, other codecs, a missing symbol, element
// sizes that straddle rows) returns kFallback before writing anything, as does any
// check that fails: the blosc_decompress_ctx path then decodes the same frame and gives
// the reason it always gave, so results and error words are those of that path.

std::atomic<const BlockCodecs*> g_codecs{nullptr};
std::atomic<bool> g_direct{true};
std::atomic<std::int64_t> g_n_direct{0}, g_n_fallback{0};

constexpr int kMinBufferSize = 128;  // blosc.c MIN_BUFFERSIZE
constexpr int kMaxSplits = 16;       // blosc.c MAX_SPLITS
constexpr std::int64_t kMaxBlocksize = (INT_MAX - 255 * 4) / 3;  // BLOSC_MAX_BLOCKSIZE

inline std::int32_t le32(const std::byte* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);  // little endian, as x86-64 and arm64 are
  return v;
}

// One zstd decompression context per pool thread, kept: ZSTD_decompress makes (and
// frees) a fresh one for every block.
struct ZstdDctx {
  void* ctx = nullptr;
  std::size_t (*free_fn)(void*) = nullptr;
  ~ZstdDctx() {
    if (ctx && free_fn) free_fn(ctx);
  }
};

// A destination row of this chunk: chunk row, where its bytes go.
struct RowDst {
  std::int64_t row;
  std::byte* dst;
};

// Elements [i0, i1) of a block whose decompressed bytes are `src` (ne elements of ts
// bytes, byte-shuffled when `shuffled`) to dst, as float32 when `widen` (ts 2).
void emit(const std::byte* src, std::int64_t ne, int ts, bool shuffled, bool widen, std::int64_t i0,
          std::int64_t i1, std::byte* dst) {
  const auto* s = reinterpret_cast<const unsigned char*>(src);
  auto* d = reinterpret_cast<unsigned char*>(dst);
  const std::int64_t n = i1 - i0;
  if (!shuffled) {
    if (!widen) {
      std::memcpy(d, s + i0 * ts, static_cast<std::size_t>(n * ts));
      return;
    }
    for (std::int64_t k = 0; k < n; ++k) {
      std::uint16_t b;
      std::memcpy(&b, s + 2 * (i0 + k), 2);
      const std::uint32_t w = bf16_bits_to_fp32(b);
      std::memcpy(d + 4 * k, &w, 4);
    }
    return;
  }
  if (ts == 2) {
    // Byte plane 0 holds the low bytes, plane 1 the high bytes (little endian).
    const unsigned char* lo = s + i0;
    const unsigned char* hi = s + ne + i0;
    std::int64_t k = 0;
#ifdef ACTSTORE_CRC_X86
    const __m128i zero = _mm_setzero_si128();
    for (; k + 16 <= n; k += 16) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lo + k));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi + k));
      const __m128i w0 = _mm_unpacklo_epi8(a, b);  // elements k .. k+7
      const __m128i w1 = _mm_unpackhi_epi8(a, b);  // elements k+8 .. k+15
      if (!widen) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * k), w0);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * k + 16), w1);
      } else {
        // bf16 bits in the upper half of each float32, zeros below.
        unsigned char* o = d + 4 * k;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_unpacklo_epi16(zero, w0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), _mm_unpackhi_epi16(zero, w0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 32), _mm_unpacklo_epi16(zero, w1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 48), _mm_unpackhi_epi16(zero, w1));
      }
    }
#endif
    for (; k < n; ++k) {
      const std::uint16_t b = static_cast<std::uint16_t>(lo[k] | (hi[k] << 8));
      if (!widen) {
        std::memcpy(d + 2 * k, &b, 2);
      } else {
        const std::uint32_t w = bf16_bits_to_fp32(b);
        std::memcpy(d + 4 * k, &w, 4);
      }
    }
    return;
  }
  for (std::int64_t k = 0; k < n; ++k)  // other sizes (4 for q16 pairs, ...): plain loop
    for (int j = 0; j < ts; ++j) d[k * ts + j] = s[j * ne + i0 + k];
}

enum class Direct { kDone, kFallback };

Direct decode_direct(const std::byte* data, std::size_t body_n, bool widen, std::size_t chunk_bytes,
                     std::size_t row_bytes, const std::int64_t* rows, const ScatterTarget* dsts,
                     std::int64_t num_dsts, const std::int32_t* dst_ids, const std::int64_t* dst_rows,
                     std::int64_t n) {
  thread_local std::vector<std::byte> tmp;
  thread_local std::vector<RowDst> order;
  thread_local ZstdDctx zctx;
  const BlockCodecs* codecs = g_codecs.load();
  if (codecs == nullptr || !g_direct.load(std::memory_order_relaxed)) return Direct::kFallback;
  // nbytes == chunk_bytes and cbytes == body_n were checked by the caller.
  const auto version = static_cast<unsigned>(data[0]);
  const auto compversion = static_cast<unsigned>(data[1]);
  const auto flags = static_cast<unsigned>(data[2]);
  const int ts = static_cast<int>(data[3]);
  const std::int64_t nbytes = static_cast<std::int64_t>(chunk_bytes);
  const std::int64_t cbytes = static_cast<std::int64_t>(body_n);
  const std::int64_t blocksize = le32(data + 8);
  if (version != 2 || (flags & 0x08) || ts <= 0 || nbytes <= 0 || blocksize <= 0 || blocksize > nbytes ||
      blocksize > kMaxBlocksize || nbytes > INT_MAX) {
    return Direct::kFallback;
  }
  const bool memcpyed = flags & 0x02;
  const bool shuffled = !memcpyed && (flags & 0x01) && ts > 1;
  if (!memcpyed && !shuffled && (flags & 0x04) && blocksize >= ts) return Direct::kFallback;  // bit shuffle
  // An element must not straddle a row or a block: the unshuffle writes whole elements.
  const int es = shuffled ? ts : (widen ? 2 : 1);
  if (row_bytes % static_cast<std::size_t>(es) || blocksize % es || nbytes % es) return Direct::kFallback;
  if (widen && es != 2) return Direct::kFallback;

  const std::int64_t nblocks = (nbytes + blocksize - 1) / blocksize;
  const std::int64_t leftover = nbytes % blocksize;
  const std::byte* decoded;  // the blocks' bytes, each block as blosc_d's unshuffle reads it
  if (memcpyed) {
    if (nbytes + 16 != cbytes) return Direct::kFallback;
    decoded = data + 16;
  } else {
    const unsigned compformat = (flags & 0xE0) >> 5;
    const bool zstd = compformat == 4, lz4 = compformat == 1;
    if (!(zstd || lz4) || compversion != 1) return Direct::kFallback;
    if (zstd && !(codecs->zstd_create_dctx && codecs->zstd_decompress_dctx && codecs->zstd_is_error)) {
      return Direct::kFallback;
    }
    if (lz4 && !codecs->lz4_decompress_safe) return Direct::kFallback;
    if (zstd && zctx.ctx == nullptr) {
      zctx.ctx = codecs->zstd_create_dctx();
      zctx.free_fn = codecs->zstd_free_dctx;
      if (zctx.ctx == nullptr) return Direct::kFallback;
    }
    if (nblocks > (cbytes - 16) / 4) return Direct::kFallback;
    if (tmp.size() < chunk_bytes) tmp.resize(chunk_bytes);
    const bool dont_split = flags & 0x10;
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const bool last = b == nblocks - 1 && leftover > 0;
      const std::int64_t bsize = last ? leftover : blocksize;
      const std::int64_t nsplits =
          (!dont_split && ts <= kMaxSplits && bsize / ts >= kMinBufferSize && !last) ? ts : 1;
      const std::int64_t neblock = bsize / nsplits;
      std::int64_t off = le32(data + 16 + 4 * b);
      std::byte* out = tmp.data() + b * blocksize;
      for (std::int64_t j = 0; j < nsplits; ++j) {
        if (off < 0 || off > cbytes - 4) return Direct::kFallback;
        const std::int64_t cb = le32(data + off);
        off += 4;
        if (cb < 0 || cb > cbytes - off) return Direct::kFallback;
        if (cb == neblock) {
          std::memcpy(out, data + off, static_cast<std::size_t>(neblock));
        } else if (zstd) {
          const std::size_t got = codecs->zstd_decompress_dctx(zctx.ctx, out, static_cast<std::size_t>(neblock),
                                                               data + off, static_cast<std::size_t>(cb));
          if (codecs->zstd_is_error(got) || got != static_cast<std::size_t>(neblock)) return Direct::kFallback;
        } else {
          const int got = codecs->lz4_decompress_safe(reinterpret_cast<const char*>(data + off),
                                                      reinterpret_cast<char*>(out), static_cast<int>(cb),
                                                      static_cast<int>(neblock));
          if (got != neblock) return Direct::kFallback;
        }
        off += cb;
        out += neblock;
      }
    }
    decoded = tmp.data();
  }

  // Every block decoded: now write. Destination rows in chunk-row order, so each
  // block visits only the rows it overlaps. Invalid entries are skipped, as
  // scatter_rows skips them (the bindings have already refused them).
  const std::int64_t rb = static_cast<std::int64_t>(row_bytes);
  const std::int64_t chunk_rows = nbytes / rb;
  const std::size_t out_row = row_bytes * (widen ? 2 : 1);
  order.clear();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t r = rows[i];
    const std::int32_t d = dst_ids[i];
    const std::int64_t dr = dst_rows[i];
    if (r < 0 || r >= chunk_rows || d < 0 || d >= num_dsts || dr < 0 || dr >= dsts[d].rows) continue;
    order.push_back({r, dsts[d].data + static_cast<std::size_t>(dr) * out_row});
  }
  if (!std::is_sorted(order.begin(), order.end(), [](const RowDst& a, const RowDst& b) { return a.row < b.row; })) {
    std::stable_sort(order.begin(), order.end(), [](const RowDst& a, const RowDst& b) { return a.row < b.row; });
  }
  const int wscale = widen ? 2 : 1;
  std::size_t first = 0;  // first entry whose row ends after this block's start
  for (std::int64_t b = 0; b < nblocks; ++b) {
    const std::int64_t b0 = b * blocksize;
    const std::int64_t b1 = std::min(b0 + blocksize, nbytes);
    const std::int64_t ne = (b1 - b0) / es;
    const std::byte* src = decoded + b0;
    while (first < order.size() && (order[first].row + 1) * rb <= b0) ++first;
    for (std::size_t k = first; k < order.size() && order[k].row * rb < b1; ++k) {
      const std::int64_t r0 = order[k].row * rb;
      const std::int64_t s = std::max(b0, r0), e = std::min(b1, r0 + rb);
      emit(src, ne, es, shuffled, widen, (s - b0) / es, (e - b0) / es, order[k].dst + (s - r0) * wscale);
    }
  }
  return Direct::kDone;
}

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

void set_block_codecs(const BlockCodecs& codecs) {
  // Leaked on replacement: a pool thread may still be reading the old one.
  g_codecs.store(new BlockCodecs(codecs));
}

DirectStats decode_direct_stats(int enable) {
  if (enable >= 0) g_direct.store(enable != 0);
  return {g_direct.load(), g_n_direct.load(), g_n_fallback.load()};
}

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
      const std::int64_t lo = spans[2 * j], hi = spans[2 * j + 1];
      if (decode_direct(data, body_n, widen, chunk_bytes, row_bytes, rows + lo, dsts, num_dsts, dst_ids + lo,
                        dst_rows + lo, hi - lo) == Direct::kDone) {
        g_n_direct.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      g_n_fallback.fetch_add(1, std::memory_order_relaxed);
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
