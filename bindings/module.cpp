// pybind11 module `actstore._C`: NumPy-facing wrappers around csrc/cpu.
//
// Every wrapper validates all of its arguments while holding the GIL (so bad
// input raises a one-line ValueError/IndexError/TypeError and never touches
// memory), then releases the GIL for the real work. The Python-side entry
// points, with allocation of `out` and the NumPy fallbacks, live in
// actstore/_native.py; keep the two in step (same checks, same error types).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "actstore/bf16.h"
#include "actstore/chunk_decode.h"
#include "actstore/gather.h"
#include "actstore/moments.h"
#include "actstore/parallel.h"
#include "actstore/scatter.h"

namespace py = pybind11;

#define ACTSTORE_STRINGIFY_(x) #x
#define ACTSTORE_STRINGIFY(x) ACTSTORE_STRINGIFY_(x)

namespace {

// Bumped whenever a signature or semantics below changes; actstore/_native.py
// refuses a stale build with a different number.
constexpr int kAbiVersion = 6;

std::string type_name(const py::handle& obj) {
  return py::str(py::type::handle_of(obj).attr("__name__"));
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()); }

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(a.shape(d));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

py::array as_ndarray(const py::handle& obj, const char* fn, const std::string& name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(fn) + ": " + name + " must be a numpy.ndarray, got " +
                         type_name(obj));
  }
  return py::reinterpret_borrow<py::array>(obj);
}

void require_c_contiguous(const py::array& a, const char* fn, const std::string& name) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous (shape " +
                          shape_str(a) + ", dtype " + dtype_name(a) +
                          "); pass numpy.ascontiguousarray(...)");
  }
}

void require_writeable(const py::array& a, const char* fn, const std::string& name) {
  if (!a.writeable()) {
    throw py::value_error(std::string(fn) + ": " + name + " is read-only");
  }
}

// memcpy of Python object pointers would corrupt reference counts.
void require_plain_data(const py::array& a, const char* fn, const std::string& name) {
  if (a.dtype().attr("hasobject").cast<bool>()) {
    throw py::value_error(std::string(fn) + ": " + name + " has dtype " + dtype_name(a) +
                          ", which holds Python objects; only plain data can be copied");
  }
}

template <typename T>
bool has_dtype(const py::array& a) {
  // array_t<T>::check_ compares with PyArray_EquivTypes, so a non-native byte
  // order does not pass.
  return py::array_t<T>::check_(a);
}

int check_threads(int threads, const char* fn) {
  if (threads < 0) {
    throw py::value_error(std::string(fn) + ": threads must be >= 0 (0 = default), got " +
                          std::to_string(threads));
  }
  return threads;
}

// Byte ranges of two buffers intersect (same test as numpy.may_share_memory).
bool overlaps(const py::array& a, const py::array& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  const auto* a0 = static_cast<const std::byte*>(a.data());
  const auto* b0 = static_cast<const std::byte*>(b.data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

void gather_rows_py(const py::sequence& sources, const py::object& src_ids_obj,
                    const py::object& rows_obj, const py::object& out_obj, int threads) {
  constexpr const char* fn = "gather_rows";
  check_threads(threads, fn);

  py::array out = as_ndarray(out_obj, fn, "out");
  if (out.ndim() != 2) {
    throw py::value_error(std::string(fn) + ": out must be 2-D (rows, cols), got shape " +
                          shape_str(out));
  }
  require_c_contiguous(out, fn, "out");
  require_writeable(out, fn, "out");
  require_plain_data(out, fn, "out");
  const std::size_t row_bytes = static_cast<std::size_t>(out.itemsize() * out.shape(1));

  py::array src_ids = as_ndarray(src_ids_obj, fn, "src_ids");
  py::array rows = as_ndarray(rows_obj, fn, "rows");
  if (!has_dtype<std::int32_t>(src_ids) || src_ids.ndim() != 1) {
    throw py::value_error(std::string(fn) + ": src_ids must be a 1-D int32 array, got dtype " +
                          dtype_name(src_ids) + " shape " + shape_str(src_ids));
  }
  if (!has_dtype<std::int64_t>(rows) || rows.ndim() != 1) {
    throw py::value_error(std::string(fn) + ": rows must be a 1-D int64 array, got dtype " +
                          dtype_name(rows) + " shape " + shape_str(rows));
  }
  require_c_contiguous(src_ids, fn, "src_ids");
  require_c_contiguous(rows, fn, "rows");
  const py::ssize_t n = out.shape(0);
  if (src_ids.shape(0) != n || rows.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": len(src_ids)=" + std::to_string(src_ids.shape(0)) +
                          ", len(rows)=" + std::to_string(rows.shape(0)) +
                          " and out.shape[0]=" + std::to_string(n) + " must be equal");
  }

  // Keep the source arrays referenced (alive) while the GIL is released.
  const py::ssize_t num_sources = py::len(sources);
  std::vector<py::array> keep;
  std::vector<actstore::GatherSource> srcs;
  keep.reserve(static_cast<std::size_t>(num_sources));
  srcs.reserve(static_cast<std::size_t>(num_sources));
  for (py::ssize_t k = 0; k < num_sources; ++k) {
    const std::string name = "sources[" + std::to_string(k) + "]";
    py::array a = as_ndarray(sources[k], fn, name);
    if (a.ndim() != 2) {
      throw py::value_error(std::string(fn) + ": " + name + " must be 2-D (rows, cols), got shape " +
                            shape_str(a));
    }
    require_c_contiguous(a, fn, name);
    require_plain_data(a, fn, name);
    const std::size_t width = static_cast<std::size_t>(a.itemsize() * a.shape(1));
    if (width != row_bytes) {
      throw py::value_error(std::string(fn) + ": " + name + " rows are " + std::to_string(width) +
                            " bytes (" + std::to_string(a.shape(1)) + " x " + dtype_name(a) +
                            ") but out rows are " + std::to_string(row_bytes) + " bytes (" +
                            std::to_string(out.shape(1)) + " x " + dtype_name(out) + ")");
    }
    if (overlaps(a, out)) {
      throw py::value_error(std::string(fn) + ": out overlaps " + name + " in memory");
    }
    srcs.push_back({static_cast<const std::byte*>(a.data()), static_cast<std::int64_t>(a.shape(0))});
    keep.push_back(std::move(a));
  }

  const auto* ids = static_cast<const std::int32_t*>(src_ids.data());
  const auto* rws = static_cast<const std::int64_t*>(rows.data());
  auto raise_index = [&](const actstore::GatherStatus& st, const char* suffix) {
    const std::int64_t i = st.index;
    if (st.error == actstore::GatherError::kSrcId) {
      throw py::index_error(std::string(fn) + ": src_ids[" + std::to_string(i) + "] = " +
                            std::to_string(ids[i]) + " is out of range for " +
                            std::to_string(num_sources) + " sources" + suffix);
    }
    const std::int32_t s = ids[i];
    const std::string count =
        (s >= 0 && s < num_sources) ? std::to_string(srcs[static_cast<std::size_t>(s)].rows) : "?";
    throw py::index_error(std::string(fn) + ": rows[" + std::to_string(i) + "] = " +
                          std::to_string(rws[i]) + " is out of range for sources[" +
                          std::to_string(s) + "] with " + count + " rows" + suffix);
  };

  // The O(n) index check runs under the GIL (about 1 ms per million rows) so
  // that invalid input raises before any row of `out` is written.
  const auto checked = actstore::check_gather_indices(srcs.data(), num_sources, ids, rws, n);
  if (!checked.ok()) raise_index(checked, "");

  actstore::GatherStatus st;
  {
    py::gil_scoped_release release;
    st = actstore::gather_rows(srcs.data(), num_sources, ids, rws, n, row_bytes,
                               static_cast<std::byte*>(out.mutable_data()), threads);
  }
  // Only reachable if another thread rewrote the index arrays during the copy;
  // the kernel re-checks every index, so nothing was read out of bounds.
  if (!st.ok()) raise_index(st, " (index arrays changed during the call)");
}

// The destination arrays of a scatter, checked: each 2-D, C-contiguous, writeable and plain,
// with rows of ``width`` bytes (``mismatch(name, a, row_width)`` words the error otherwise).
// ``keep`` holds the arrays alive while the returned targets point into them.
template <class Mismatch>
std::vector<actstore::ScatterTarget> scatter_targets(const py::sequence& dsts, const char* fn, std::size_t width,
                                                     std::vector<py::array>& keep, const Mismatch& mismatch,
                                                     const py::array* must_not_overlap = nullptr) {
  const py::ssize_t num_dsts = py::len(dsts);
  std::vector<actstore::ScatterTarget> targets;
  keep.reserve(static_cast<std::size_t>(num_dsts));
  targets.reserve(static_cast<std::size_t>(num_dsts));
  for (py::ssize_t k = 0; k < num_dsts; ++k) {
    const std::string name = "dsts[" + std::to_string(k) + "]";
    py::array a = as_ndarray(dsts[k], fn, name);
    if (a.ndim() != 2) {
      throw py::value_error(std::string(fn) + ": " + name + " must be 2-D (rows, cols), got shape " + shape_str(a));
    }
    require_c_contiguous(a, fn, name);
    require_writeable(a, fn, name);
    require_plain_data(a, fn, name);
    const std::size_t row_width = static_cast<std::size_t>(a.itemsize() * a.shape(1));
    if (row_width != width) throw py::value_error(mismatch(name, a, row_width));
    if (must_not_overlap != nullptr && overlaps(a, *must_not_overlap)) {
      throw py::value_error(std::string(fn) + ": " + name + " overlaps src in memory");
    }
    targets.push_back({static_cast<std::byte*>(a.mutable_data()), static_cast<std::int64_t>(a.shape(0))});
    keep.push_back(std::move(a));
  }
  return targets;
}

void scatter_rows_py(const py::object& src_obj, const py::object& rows_obj, const py::sequence& dsts,
                     const py::object& dst_ids_obj, const py::object& dst_rows_obj, int threads) {
  constexpr const char* fn = "scatter_rows";
  check_threads(threads, fn);
  py::array src = as_ndarray(src_obj, fn, "src");
  if (src.ndim() != 2) {
    throw py::value_error(std::string(fn) + ": src must be 2-D (rows, cols), got shape " + shape_str(src));
  }
  require_c_contiguous(src, fn, "src");
  require_plain_data(src, fn, "src");
  const std::size_t row_bytes = static_cast<std::size_t>(src.itemsize() * src.shape(1));

  py::array rows = as_ndarray(rows_obj, fn, "rows");
  py::array dst_ids = as_ndarray(dst_ids_obj, fn, "dst_ids");
  py::array dst_rows = as_ndarray(dst_rows_obj, fn, "dst_rows");
  if (!has_dtype<std::int64_t>(rows) || rows.ndim() != 1) {
    throw py::value_error(std::string(fn) + ": rows must be a 1-D int64 array, got dtype " + dtype_name(rows) +
                          " shape " + shape_str(rows));
  }
  if (!has_dtype<std::int32_t>(dst_ids) || dst_ids.ndim() != 1) {
    throw py::value_error(std::string(fn) + ": dst_ids must be a 1-D int32 array, got dtype " +
                          dtype_name(dst_ids) + " shape " + shape_str(dst_ids));
  }
  if (!has_dtype<std::int64_t>(dst_rows) || dst_rows.ndim() != 1) {
    throw py::value_error(std::string(fn) + ": dst_rows must be a 1-D int64 array, got dtype " +
                          dtype_name(dst_rows) + " shape " + shape_str(dst_rows));
  }
  require_c_contiguous(rows, fn, "rows");
  require_c_contiguous(dst_ids, fn, "dst_ids");
  require_c_contiguous(dst_rows, fn, "dst_rows");
  const py::ssize_t n = rows.shape(0);
  if (dst_ids.shape(0) != n || dst_rows.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": len(rows)=" + std::to_string(n) + ", len(dst_ids)=" +
                          std::to_string(dst_ids.shape(0)) + " and len(dst_rows)=" +
                          std::to_string(dst_rows.shape(0)) + " must be equal");
  }

  std::vector<py::array> keep;
  const auto targets = scatter_targets(
      dsts, fn, static_cast<std::size_t>(row_bytes), keep,
      [&](const std::string& name, const py::array& a, std::size_t width) {
        return std::string(fn) + ": " + name + " rows are " + std::to_string(width) + " bytes (" +
               std::to_string(a.shape(1)) + " x " + dtype_name(a) + ") but src rows are " +
               std::to_string(row_bytes) + " bytes (" + std::to_string(src.shape(1)) + " x " + dtype_name(src) + ")";
      },
      &src);
  const py::ssize_t num_dsts = static_cast<py::ssize_t>(targets.size());

  const auto* rw = static_cast<const std::int64_t*>(rows.data());
  const auto* ids = static_cast<const std::int32_t*>(dst_ids.data());
  const auto* drw = static_cast<const std::int64_t*>(dst_rows.data());
  const std::int64_t src_rows = src.shape(0);
  auto raise_index = [&](const actstore::GatherStatus& st, const char* suffix) {
    const std::int64_t i = st.index;
    if (st.error == actstore::GatherError::kRow) {
      throw py::index_error(std::string(fn) + ": rows[" + std::to_string(i) + "] = " + std::to_string(rw[i]) +
                            " is out of range for src with " + std::to_string(src_rows) + " rows" + suffix);
    }
    if (st.error == actstore::GatherError::kSrcId) {
      throw py::index_error(std::string(fn) + ": dst_ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                            " is out of range for " + std::to_string(num_dsts) + " destinations" + suffix);
    }
    const std::int32_t d = ids[i];
    const std::string count =
        (d >= 0 && d < num_dsts) ? std::to_string(targets[static_cast<std::size_t>(d)].rows) : "?";
    throw py::index_error(std::string(fn) + ": dst_rows[" + std::to_string(i) + "] = " + std::to_string(drw[i]) +
                          " is out of range for dsts[" + std::to_string(d) + "] with " + count + " rows" + suffix);
  };
  const auto checked =
      actstore::check_scatter_indices(src_rows, rw, targets.data(), num_dsts, ids, drw, n);
  if (!checked.ok()) raise_index(checked, "");
  actstore::GatherStatus st;
  {
    py::gil_scoped_release release;
    st = actstore::scatter_rows(static_cast<const std::byte*>(src.data()), src_rows, rw, targets.data(), num_dsts,
                                ids, drw, n, row_bytes, threads);
  }
  if (!st.ok()) raise_index(st, " (index arrays changed during the call)");
}

// Stored chunk -> (pointer, size) through the buffer protocol; the buffer stays
// held by `views` (released under the GIL when the caller's vector goes).
actstore::StoredChunk stored_chunk(const py::handle& obj, std::vector<py::buffer_info>& views, const char* fn,
                                   std::size_t k) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    throw py::type_error(std::string(fn) + ": chunks[" + std::to_string(k) + "] must be bytes-like, got " +
                         type_name(obj));
  }
  views.push_back(py::reinterpret_borrow<py::buffer>(obj).request());
  const py::buffer_info& b = views.back();
  if (b.ndim > 1 && !(b.strides.back() == b.itemsize)) {
    throw py::value_error(std::string(fn) + ": chunks[" + std::to_string(k) + "] must be contiguous");
  }
  return {static_cast<const std::byte*>(b.ptr), static_cast<std::size_t>(b.size * b.itemsize)};
}

py::object decode_scatter_py(const py::sequence& chunks, const py::object& spans_obj, const py::object& rows_obj,
                             const py::sequence& dsts, const py::object& dst_ids_obj, const py::object& dst_rows_obj,
                             std::int64_t chunk_bytes, std::int64_t row_bytes, bool blosc, bool widen) {
  constexpr const char* fn = "decode_scatter";
  if (chunk_bytes <= 0 || row_bytes <= 0 || chunk_bytes % row_bytes) {
    throw py::value_error(std::string(fn) + ": chunk_bytes=" + std::to_string(chunk_bytes) +
                          " must be a positive multiple of row_bytes=" + std::to_string(row_bytes));
  }
  if (widen && row_bytes % 2) {
    throw py::value_error(std::string(fn) + ": widen needs bf16 rows (even row_bytes), got " +
                          std::to_string(row_bytes));
  }
  if (blosc && !actstore::have_blosc_decompress()) {
    throw py::value_error(std::string(fn) + ": no Blosc decoder loaded (call load_blosc first)");
  }
  py::array spans = as_ndarray(spans_obj, fn, "spans");
  py::array rows = as_ndarray(rows_obj, fn, "rows");
  py::array dst_ids = as_ndarray(dst_ids_obj, fn, "dst_ids");
  py::array dst_rows = as_ndarray(dst_rows_obj, fn, "dst_rows");
  if (!has_dtype<std::int64_t>(spans)) {
    throw py::value_error(std::string(fn) + ": spans must be int64, got dtype " + dtype_name(spans));
  }
  require_c_contiguous(spans, fn, "spans");
  for (auto* p : {&rows, &dst_rows}) {
    if (!has_dtype<std::int64_t>(*p) || p->ndim() != 1) {
      throw py::value_error(std::string(fn) + ": rows and dst_rows must be 1-D int64 arrays, got dtype " +
                            dtype_name(*p) + " shape " + shape_str(*p));
    }
    require_c_contiguous(*p, fn, "rows/dst_rows");
  }
  if (!has_dtype<std::int32_t>(dst_ids) || dst_ids.ndim() != 1) {
    throw py::value_error(std::string(fn) + ": dst_ids must be a 1-D int32 array, got dtype " +
                          dtype_name(dst_ids) + " shape " + shape_str(dst_ids));
  }
  require_c_contiguous(dst_ids, fn, "dst_ids");
  const py::ssize_t num_chunks = py::len(chunks);
  const py::ssize_t n = rows.shape(0);
  if (spans.ndim() != 2 || spans.shape(0) != num_chunks || spans.shape(1) != 2) {
    throw py::value_error(std::string(fn) + ": spans must have shape (" + std::to_string(num_chunks) +
                          ", 2), one (start, stop) per chunk; got " + shape_str(spans));
  }
  if (dst_ids.shape(0) != n || dst_rows.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": len(rows)=" + std::to_string(n) + ", len(dst_ids)=" +
                          std::to_string(dst_ids.shape(0)) + " and len(dst_rows)=" +
                          std::to_string(dst_rows.shape(0)) + " must be equal");
  }
  const auto* ct = static_cast<const std::int64_t*>(spans.data());
  for (py::ssize_t j = 0; j < num_chunks; ++j) {
    if (!(0 <= ct[2 * j] && ct[2 * j] <= ct[2 * j + 1] && ct[2 * j + 1] <= n)) {
      throw py::value_error(std::string(fn) + ": spans[" + std::to_string(j) + "] = (" + std::to_string(ct[2 * j]) +
                            ", " + std::to_string(ct[2 * j + 1]) + ") is not a range within len(rows)=" +
                            std::to_string(n));
    }
  }
  const std::size_t out_row = static_cast<std::size_t>(row_bytes) * (widen ? 2 : 1);
  std::vector<py::array> keep;
  const auto targets =
      scatter_targets(dsts, fn, out_row, keep, [&](const std::string& name, const py::array&, std::size_t width) {
        return std::string(fn) + ": " + name + " rows are " + std::to_string(width) + " bytes, the decoded rows " +
               std::to_string(out_row);
      });
  const py::ssize_t num_dsts = static_cast<py::ssize_t>(targets.size());
  const auto* rw = static_cast<const std::int64_t*>(rows.data());
  const auto* ids = static_cast<const std::int32_t*>(dst_ids.data());
  const auto* drw = static_cast<const std::int64_t*>(dst_rows.data());
  const auto checked = actstore::check_scatter_indices(chunk_bytes / row_bytes, rw, targets.data(), num_dsts, ids,
                                                       drw, n);
  if (!checked.ok()) {
    const std::int64_t i = checked.index;
    throw py::index_error(std::string(fn) + ": entry " + std::to_string(i) + " (row " + std::to_string(rw[i]) +
                          ", dst_ids " + std::to_string(ids[i]) + ", dst_rows " + std::to_string(drw[i]) +
                          ") is out of range for chunks of " + std::to_string(chunk_bytes / row_bytes) +
                          " rows and " + std::to_string(num_dsts) + " destinations");
  }
  std::vector<py::buffer_info> views;
  views.reserve(static_cast<std::size_t>(num_chunks));
  std::vector<actstore::StoredChunk> stored;
  for (py::ssize_t j = 0; j < num_chunks; ++j) stored.push_back(stored_chunk(chunks[j], views, fn, j));
  std::string reason;
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = actstore::decode_scatter(stored.data(), num_chunks, ct, blosc, widen, static_cast<std::size_t>(chunk_bytes),
                                   static_cast<std::size_t>(row_bytes), rw, targets.data(), num_dsts, ids, drw,
                                   &reason);
  }
  if (bad < 0) return py::none();
  return py::make_tuple(bad, reason);
}

std::uint32_t crc32c_py(const py::buffer& data) {
  std::vector<py::buffer_info> views;
  const actstore::StoredChunk c = stored_chunk(data, views, "crc32c", 0);
  py::gil_scoped_release release;
  return actstore::crc32c(c.data, c.nbytes);
}

// The Blosc decoder numcodecs carries (c-blosc1, linked into numcodecs.blosc's
// extension module, which exports blosc_decompress_ctx): the same library the
// Python path decodes with, so both paths read a chunk alike.
bool load_blosc_py(const std::string& path) {
#if defined(__unix__) || defined(__APPLE__)
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return false;
  void* sym = dlsym(h, "blosc_decompress_ctx");
  if (sym == nullptr) return false;
  // The same library's zstd and lz4 (numcodecs builds c-blosc with them and exports
  // their symbols), for decoding frames block by block into the rows; a missing one
  // only sends its frames through blosc_decompress_ctx.
  actstore::BlockCodecs codecs;
  codecs.zstd_create_dctx = reinterpret_cast<decltype(codecs.zstd_create_dctx)>(dlsym(h, "ZSTD_createDCtx"));
  codecs.zstd_free_dctx = reinterpret_cast<decltype(codecs.zstd_free_dctx)>(dlsym(h, "ZSTD_freeDCtx"));
  codecs.zstd_decompress_dctx =
      reinterpret_cast<decltype(codecs.zstd_decompress_dctx)>(dlsym(h, "ZSTD_decompressDCtx"));
  codecs.zstd_is_error = reinterpret_cast<decltype(codecs.zstd_is_error)>(dlsym(h, "ZSTD_isError"));
  codecs.lz4_decompress_safe =
      reinterpret_cast<decltype(codecs.lz4_decompress_safe)>(dlsym(h, "LZ4_decompress_safe"));
  actstore::set_block_codecs(codecs);
  actstore::set_blosc_decompress(reinterpret_cast<actstore::BloscDecompressFn>(sym));
  return true;
#else
  (void)path;
  return false;
#endif
}

// Shared checks of both conversions: C-contiguous, writeable out, equal element
// counts, no overlap. Dtypes are checked by each caller.
void check_convert_pair(const py::array& src, const py::array& out, const char* fn) {
  require_c_contiguous(src, fn, "x");
  require_c_contiguous(out, fn, "out");
  require_writeable(out, fn, "out");
  if (src.size() != out.size()) {
    throw py::value_error(std::string(fn) + ": x has " + std::to_string(src.size()) +
                          " elements but out has " + std::to_string(out.size()));
  }
  if (overlaps(src, out)) throw py::value_error(std::string(fn) + ": out overlaps x in memory");
}

void fp32_to_bf16_py(const py::object& src_obj, const py::object& out_obj, int threads) {
  constexpr const char* fn = "fp32_to_bf16";
  check_threads(threads, fn);
  py::array src = as_ndarray(src_obj, fn, "x");
  py::array out = as_ndarray(out_obj, fn, "out");
  if (!has_dtype<float>(src)) {
    throw py::value_error(std::string(fn) + ": x must be float32, got " + dtype_name(src));
  }
  if (!has_dtype<std::uint16_t>(out) && !has_dtype<std::int16_t>(out)) {
    throw py::value_error(std::string(fn) + ": out must be uint16 (or int16) bf16 bits, got " +
                          dtype_name(out));
  }
  check_convert_pair(src, out, fn);
  const auto* s = static_cast<const float*>(src.data());
  auto* d = static_cast<std::uint16_t*>(out.mutable_data());
  const std::int64_t n = src.size();
  py::gil_scoped_release release;
  actstore::fp32_to_bf16(s, d, n, threads);
}

void bf16_to_fp32_py(const py::object& src_obj, const py::object& out_obj, int threads) {
  constexpr const char* fn = "bf16_to_fp32";
  check_threads(threads, fn);
  py::array src = as_ndarray(src_obj, fn, "x");
  py::array out = as_ndarray(out_obj, fn, "out");
  if (!has_dtype<std::uint16_t>(src) && !has_dtype<std::int16_t>(src)) {
    throw py::value_error(std::string(fn) + ": x must be uint16 (or int16) bf16 bits, got " +
                          dtype_name(src));
  }
  if (!has_dtype<float>(out)) {
    throw py::value_error(std::string(fn) + ": out must be float32, got " + dtype_name(out));
  }
  check_convert_pair(src, out, fn);
  const auto* s = static_cast<const std::uint16_t*>(src.data());
  auto* d = static_cast<float*>(out.mutable_data());
  const std::int64_t n = src.size();
  py::gil_scoped_release release;
  actstore::bf16_to_fp32(s, d, n, threads);
}

// shift, sum and sumsq of the moments kernels: float64 (d,), C-contiguous; sum and sumsq writeable.
void check_moment_vectors(const py::array& shift, const py::array& sum, const py::array& sumsq, std::int64_t d,
                          const char* fn) {
  for (const auto* a : {&shift, &sum, &sumsq}) {
    if (!has_dtype<double>(*a) || a->ndim() != 1 || a->shape(0) != d) {
      throw py::value_error(std::string(fn) + ": shift, sum and sumsq must be float64 of shape (" +
                            std::to_string(d) + ",)");
    }
    require_c_contiguous(*a, fn, "shift/sum/sumsq");
  }
  require_writeable(sum, fn, "sum");
  require_writeable(sumsq, fn, "sumsq");
}

double row_moments_py(const py::object& x_obj, const py::object& shift_obj, const py::object& sum_obj,
                      const py::object& sumsq_obj, int threads) {
  constexpr const char* fn = "row_moments";
  check_threads(threads, fn);
  py::array x = as_ndarray(x_obj, fn, "x");
  py::array shift = as_ndarray(shift_obj, fn, "shift");
  py::array sum = as_ndarray(sum_obj, fn, "sum");
  py::array sumsq = as_ndarray(sumsq_obj, fn, "sumsq");
  if (!has_dtype<float>(x) || x.ndim() != 2) {
    throw py::value_error(std::string(fn) + ": x must be a 2-D float32 array, got " + dtype_name(x));
  }
  require_c_contiguous(x, fn, "x");
  const std::int64_t n = x.shape(0), d = x.shape(1);
  check_moment_vectors(shift, sum, sumsq, d, fn);
  const auto* xp = static_cast<const float*>(x.data());
  const auto* sh = static_cast<const double*>(shift.data());
  auto* s1 = static_cast<double*>(sum.mutable_data());
  auto* s2 = static_cast<double*>(sumsq.mutable_data());
  py::gil_scoped_release release;
  return actstore::row_moments(xp, n, d, sh, s1, s2, threads);
}

double row_moments_bf16_py(const py::object& x_obj, const py::object& shift_obj, const py::object& sum_obj,
                           const py::object& sumsq_obj, int threads) {
  constexpr const char* fn = "row_moments_bf16";
  check_threads(threads, fn);
  py::array x = as_ndarray(x_obj, fn, "x");
  py::array shift = as_ndarray(shift_obj, fn, "shift");
  py::array sum = as_ndarray(sum_obj, fn, "sum");
  py::array sumsq = as_ndarray(sumsq_obj, fn, "sumsq");
  if ((!has_dtype<std::uint16_t>(x) && !has_dtype<std::int16_t>(x)) || x.ndim() != 2) {
    throw py::value_error(std::string(fn) + ": x must be a 2-D uint16 (or int16) array of bf16 bits, got " +
                          dtype_name(x));
  }
  require_c_contiguous(x, fn, "x");
  const std::int64_t n = x.shape(0), d = x.shape(1);
  check_moment_vectors(shift, sum, sumsq, d, fn);
  const auto* xp = static_cast<const std::uint16_t*>(x.data());
  const auto* sh = static_cast<const double*>(shift.data());
  auto* s1 = static_cast<double*>(sum.mutable_data());
  auto* s2 = static_cast<double*>(sumsq.mutable_data());
  py::gil_scoped_release release;
  return actstore::row_moments_bf16(xp, n, d, sh, s1, s2, threads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "actstore native CPU kernels (row gather, bf16 conversion). Use actstore._native, "
      "which allocates outputs and falls back to NumPy when this module is missing.";
#ifdef ACTSTORE_VERSION
  m.attr("__version__") = ACTSTORE_STRINGIFY(ACTSTORE_VERSION);
#else
  m.attr("__version__") = "unknown";
#endif
  m.attr("ABI_VERSION") = kAbiVersion;

  m.def("default_threads", &actstore::default_threads,
        "Default worker count: min(os.cpu_count(), 8).");

  m.def("gather_rows", &gather_rows_py, py::arg("sources"), py::arg("src_ids"), py::arg("rows"),
        py::arg("out"), py::arg("threads") = 0,
        R"doc(out[i, :] = sources[src_ids[i]][rows[i], :] for every i, in place.

sources: sequence of 2-D C-contiguous arrays whose rows are as many bytes as
    out's rows (itemsize * cols); dtypes may differ, bytes are copied as-is.
src_ids: int32, shape (n,). rows: int64, shape (n,).
out: writable 2-D C-contiguous array, shape (n, cols).
threads: worker threads, 0 = default_threads(); under 1 MiB runs single-threaded.
Raises IndexError for an out-of-range index, ValueError/TypeError for bad
arrays, before anything is written. Releases the GIL while copying.)doc");

  m.def("scatter_rows", &scatter_rows_py, py::arg("src"), py::arg("rows"), py::arg("dsts"), py::arg("dst_ids"),
        py::arg("dst_rows"), py::arg("threads") = 0,
        R"doc(dsts[dst_ids[i]][dst_rows[i], :] = src[rows[i], :] for every i, in place.

src: 2-D C-contiguous array. rows: int64 (n,). dsts: sequence of writable 2-D
C-contiguous arrays whose rows are as many bytes as src's. dst_ids: int32 (n,).
dst_rows: int64 (n,). threads: 0 = default_threads(); under 1 MiB single-threaded.
Raises IndexError / ValueError / TypeError before anything is written. Releases the GIL.)doc");

  m.def("fp32_to_bf16", &fp32_to_bf16_py, py::arg("x"), py::arg("out"), py::arg("threads") = 0,
        R"doc(out = bfloat16 bits of x, round-to-nearest-even, in place.

x: float32, any shape, C-contiguous. out: uint16 (or int16), same number of
elements, C-contiguous. NaN stays NaN (quiet bit set, sign kept), overflow
rounds to +-inf. Releases the GIL.)doc");

  m.def("row_moments", &row_moments_py, py::arg("x"), py::arg("shift"), py::arg("sum"),
        py::arg("sumsq"), py::arg("threads") = 0,
        R"doc(Shifted column moments of x, in place; returns the sum of row L2 norms.

x: float32 (n, d) C-contiguous. shift, sum, sumsq: float64 (d,).
sum[j] = sum_i (x[i,j] - shift[j]); sumsq[j] = sum_i (x[i,j] - shift[j])^2.
float64 accumulators; NaN/inf propagate. Releases the GIL.)doc");

  m.def("decode_scatter", &decode_scatter_py, py::arg("chunks"), py::arg("spans"), py::arg("rows"), py::arg("dsts"),
        py::arg("dst_ids"), py::arg("dst_rows"), py::arg("chunk_bytes"), py::arg("row_bytes"), py::arg("blosc"),
        py::arg("widen"),
        R"doc(Verify, decode and scatter stored chunks in one call; None, or (j, reason) for
the first chunk j that fails its crc32c or decode.

chunks: sequence of bytes-like stored chunks (crc32c last). spans: int64 (len(chunks), 2):
entries [spans[j, 0], spans[j, 1]) of rows/dst_ids/dst_rows belong to chunk j. rows: int64 (n,),
row within its chunk. dsts/dst_ids/dst_rows: as scatter_rows. chunk_bytes: decoded bytes
of a chunk; row_bytes: bytes of a stored row. blosc: Blosc frames (else raw bytes).
widen: bf16 bits to float32 (destination rows twice row_bytes). Raises IndexError /
ValueError / TypeError before anything is written. Releases the GIL.)doc");

  m.def("crc32c", &crc32c_py, py::arg("data"), "CRC-32C of a bytes-like object (google_crc32c.value). Releases the GIL.");

  m.def("load_blosc", &load_blosc_py, py::arg("path"),
        "Take blosc_decompress_ctx (and its zstd/lz4) from the shared library at path (numcodecs.blosc's); "
        "True if found.");
  m.def(
      "decode_direct",
      [](int enable) {
        const actstore::DirectStats st = actstore::decode_direct_stats(enable);
        return py::make_tuple(st.enabled, st.direct, st.fallback);
      },
      py::arg("enable") = -1,
      R"doc(decode_scatter's direct Blosc decode (into the destination rows): enable 1 turns it
on (the default), 0 off (every frame through blosc_decompress_ctx + scatter), -1 leaves
it. Returns (enabled, chunks decoded directly, chunks that fell back) since load.)doc");
  m.def("row_moments_bf16", &row_moments_bf16_py, py::arg("x"), py::arg("shift"), py::arg("sum"),
        py::arg("sumsq"), py::arg("threads") = 0,
        R"doc(row_moments of bfloat16 bits, without a float32 copy; same results bit for bit.

x: uint16 (or int16) bf16 bits (n, d) C-contiguous. shift, sum, sumsq: float64 (d,).
Releases the GIL.)doc");

  m.def("bf16_to_fp32", &bf16_to_fp32_py, py::arg("x"), py::arg("out"), py::arg("threads") = 0,
        R"doc(out = float32 value of bfloat16 bits x (exact), in place.

x: uint16 (or int16) bf16 bits, any shape, C-contiguous. out: float32, same
number of elements, C-contiguous. Releases the GIL.)doc");
}
