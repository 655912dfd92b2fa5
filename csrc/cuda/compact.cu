// In-place row compaction: row r = row index[r] for r < kept (index strictly ascending). Each
// thread owns one word column of the rows and walks the rows in ascending order, which is safe
// for overlapping rows: index[r] >= r, so every row is read before (or when) it is overwritten.
// The loads of a batch of rows are issued before its stores (a row read in a batch is never one
// written earlier), so a thread has several loads in flight. Words are the widest of 16/8/4/2/1
// bytes that divide the row and the base address. A source row outside [0, rows) (an index that
// skipped the host-side value check) fails a device-side assert instead of reading out of bounds;
// it is __assert_fail directly, like c10's CUDA_KERNEL_ASSERT, so that NDEBUG does not remove it.
#include <cassert>
#include <cstdint>

#include "cuda/launchers.h"

namespace progrpo_fast::cuda {
namespace {

constexpr int kCompactThreads = 256;
constexpr int kRowsPerBatch = 8;

template <typename Word>
__global__ void compact_rows_kernel(Word* data, int64_t row_words, int64_t rows_total, const int64_t* __restrict__ index,
                                    int64_t kept) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= row_words) {
    return;
  }
  for (int64_t first = 0; first < kept; first += kRowsPerBatch) {
    const int rows = static_cast<int>(kept - first < kRowsPerBatch ? kept - first : kRowsPerBatch);
    Word words[kRowsPerBatch];
#pragma unroll
    for (int r = 0; r < kRowsPerBatch; ++r) {
      if (r < rows) {
        const int64_t source = index[first + r];
        if (source < 0 || source >= rows_total) {
          __assert_fail("compact_: index row out of range [0, rows)", __FILE__, __LINE__, __func__);
        }
        words[r] = data[source * row_words + column];
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerBatch; ++r) {
      if (r < rows) {
        data[(first + r) * row_words + column] = words[r];
      }
    }
  }
}

template <typename Word>
cudaError_t launch_words(void* data, int64_t row_bytes, int64_t rows, const int64_t* index, int64_t kept,
                         cudaStream_t stream) {
  const int64_t row_words = row_bytes / static_cast<int64_t>(sizeof(Word));
  const int64_t blocks = (row_words + kCompactThreads - 1) / kCompactThreads;
  compact_rows_kernel<Word>
      <<<blocks, kCompactThreads, 0, stream>>>(static_cast<Word*>(data), row_words, rows, index, kept);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_compact_rows(void* data, int64_t row_bytes, int64_t rows, const int64_t* index, int64_t kept,
                                cudaStream_t stream) {
  if (kept == 0 || row_bytes == 0) {
    return cudaSuccess;
  }
  const auto fits = [&](int64_t word) {
    return row_bytes % word == 0 && reinterpret_cast<uintptr_t>(data) % word == 0;
  };
  if (fits(16)) return launch_words<uint4>(data, row_bytes, rows, index, kept, stream);
  if (fits(8)) return launch_words<uint2>(data, row_bytes, rows, index, kept, stream);
  if (fits(4)) return launch_words<uint32_t>(data, row_bytes, rows, index, kept, stream);
  if (fits(2)) return launch_words<uint16_t>(data, row_bytes, rows, index, kept, stream);
  return launch_words<uint8_t>(data, row_bytes, rows, index, kept, stream);
}

}  // namespace progrpo_fast::cuda
