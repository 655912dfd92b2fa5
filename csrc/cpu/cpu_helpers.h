// Helpers shared by the CPU ops: pooling into a caller's buffer, per-group selection on float64
// rows, and the parallel grain size.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// PROGRPO_FAST_SIMD_CLONES: on x86-64 Linux (GCC >= 12) a function is compiled for the baseline and
// for x86-64-v3 (AVX2, F16C) and the loader picks what the CPU supports; the helpers it calls are
// PROGRPO_FAST_INLINE so that they are compiled into each clone. No FMA contraction either way
// (-ffp-contract=off): both clones compute bit-identical results.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define PROGRPO_FAST_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PROGRPO_FAST_SIMD_CLONES
#endif
#define PROGRPO_FAST_INLINE __attribute__((always_inline)) inline

namespace progrpo_fast::cpu {

// Items per at::parallel_for task so that a task does at least ~32k element operations.
inline int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kMinTaskWork = 32768;
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, work_per_item));
}

// Adaptive-pool bin [start, end) of output cell i along an axis of `size` (torch's bin edges):
// start = floor(i * size / grid), end = ceil((i + 1) * size / grid).
inline int64_t bin_start(int64_t i, int64_t size, int64_t grid) { return i * size / grid; }
inline int64_t bin_end(int64_t i, int64_t size, int64_t grid) { return ((i + 1) * size + grid - 1) / grid; }

// Pools latents x (B, C, H, W) or videos (B, C, F, H, W, frames in one temporal bin) of any float
// dtype into out (B, C*grid*grid) fp32, in parallel over the B*C planes, reading x once and
// converting per element.
void pool_into(const at::Tensor& x, int64_t grid, float* out);

// Scratch buffers of the selection routines, reused across the groups one thread handles.
struct SelectScratch {
  std::vector<int64_t> order;
  std::vector<double> centred, norms, mean, dist2, gain, prefix_sum, prefix_sq;
  std::vector<char> chosen;
};

// One group's n feature rows (n x d, row-major) -> the k chosen rows, ascending: exact OVF for
// d == 1, every row for k == n, greedy max-dispersion otherwise.
void select_group(const double* features, int64_t n, int64_t d, int64_t k, int64_t* chosen, SelectScratch& scratch);

// (1/count) sum_{i in rows} ||f_i - mean_rows||^2 of the given rows of a (., d) row-major buffer.
double subset_variance(const double* features, int64_t d, const int64_t* rows, int64_t count, SelectScratch& scratch);

}  // namespace progrpo_fast::cpu
