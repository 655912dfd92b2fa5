// In-place row compaction: row r of every tensor becomes its row index[r] (index strictly
// ascending). Since index[r] >= r, walking the rows in ascending order reads every row before
// (or when) it is overwritten, so rows may overlap their destinations. Rows are copied as raw
// bytes (any dtype); column chunks of a row run in parallel, each walking the rows in order.
// The index is checked here (strictly ascending, inside every tensor's rows) before any byte
// moves, so an index that skipped the Python-side value check raises instead of reading or
// writing outside a tensor; on CPU that costs one pass over the index.
#include <ATen/Parallel.h>

#include <cstring>

#include "cpu/cpu_helpers.h"
#include "progrpo_fast.h"

namespace progrpo_fast::cpu {

void compact_(const at::Tensor& index, const std::vector<at::Tensor>& tensors) {
  constexpr int64_t kChunkBytes = 16384;
  const int64_t kept = index.numel();
  const int64_t* source_rows = index.const_data_ptr<int64_t>();
  for (const at::Tensor& t : tensors) {
    if (kept == 0 || t.numel() == 0) {
      continue;
    }
    const int64_t rows = t.size(0);
    for (int64_t r = 0; r < kept; ++r) {
      TORCH_CHECK(source_rows[r] >= 0 && source_rows[r] < rows,
                  "compact_: index must hold row numbers in [0, ", rows, "), got index[", r, "] = ", source_rows[r]);
      TORCH_CHECK(r == 0 || source_rows[r] > source_rows[r - 1], "compact_: index must be strictly ascending, got index[",
                  r - 1, "] = ", source_rows[r - 1], " then index[", r, "] = ", source_rows[r]);
    }
  }
  for (const at::Tensor& t : tensors) {
    if (kept == 0 || t.numel() == 0) {
      continue;
    }
    if (!t.is_contiguous()) {
      t.narrow(0, 0, kept).copy_(t.index_select(0, index));
      continue;
    }
    t.unsafeGetTensorImpl()->bump_version();  // count the in-place write; raises before it if not allowed
    const int64_t row_bytes = static_cast<int64_t>(t.nbytes()) / t.size(0);
    const int64_t chunks = (row_bytes + kChunkBytes - 1) / kChunkBytes;
    char* base = static_cast<char*>(t.data_ptr());
    at::parallel_for(0, chunks, grain_for(kept * kChunkBytes / 8), [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t offset = chunk * kChunkBytes, bytes = std::min(kChunkBytes, row_bytes - offset);
        for (int64_t r = 0; r < kept; ++r) {
          if (source_rows[r] != r) {
            std::memcpy(base + r * row_bytes + offset, base + source_rows[r] * row_bytes + offset, bytes);
          }
        }
      }
    });
  }
}

}  // namespace progrpo_fast::cpu
