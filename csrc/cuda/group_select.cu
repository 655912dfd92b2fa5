// Group statistics and subset selection, all in double and with the same operation order as the
// CPU code (csrc/cpu/selection.cpp), so both resolve exact ties identically to the reference.
//
// group_variance: var_p = (1/G) sum_i sum_c (x_ic - mean_c)^2. Thread per column (mean over the
// group's rows, then squared deviations), block sums as partials, one thread per group adds its
// partials in order (deterministic).
//
// select: one block per group, thread i owns row i (n <= 1024), scratch in shared memory.
//   mean_c = (1/n) sum_i f_ic,  norm_i = sum_c (f_ic - mean_c)^2,  var_all = (1/n) sum_i norm_i.
//   d == 1, exact OVF: rank-sort (stable), centre, prefix sums S1, S2 (thread 0), and the first
//     best split i of var_i = T2_i / k - (T1_i / k)^2 (0 for k == 1) with T_i = S[i] + S[n] - S[n-k+i].
//   d > 1, greedy max-dispersion: dist2_ij = max(0, norm_i + norm_j - 2 <f_i - mean, f_j - mean>)
//     (the dot product in 8 interleaved partial sums, as on the CPU);
//     start from the farthest pair (first in row-major order), then add the row with the largest
//     gain_i = sum_{j chosen} dist2_ij (lowest index on ties); each step a block-wide argmax.
//   var_kept: the same total variance over the kept rows.
#include <cfloat>
#include <cstdint>

#include "cuda/convert.cuh"
#include "cuda/launchers.h"

namespace progrpo_fast::cuda {
namespace {

constexpr int kVarianceThreads = 256;
constexpr int kWarpSize = 32;

// Block-wide sum in a fixed tree order (deterministic); the result is valid in thread 0.
__device__ double block_sum(double value, double* warp_scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  if (lane == 0) {
    warp_scratch[warp] = value;
  }
  __syncthreads();
  value = 0.0;
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x / kWarpSize) ? warp_scratch[lane] : 0.0;
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

// Block-wide argmax of (value, key): the largest value, the lowest key on ties. Every thread gets
// the winning key. blockDim.x must be a multiple of 32.
__device__ int64_t block_argmax(double value, int64_t key, double* warp_values, int64_t* warp_keys) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  auto reduce_warp = [&] {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const double other_value = __shfl_down_sync(0xffffffffu, value, offset);
      const int64_t other_key = __shfl_down_sync(0xffffffffu, key, offset);
      if (other_value > value || (other_value == value && other_key < key)) {
        value = other_value;
        key = other_key;
      }
    }
  };
  reduce_warp();
  if (lane == 0) {
    warp_values[warp] = value;
    warp_keys[warp] = key;
  }
  __syncthreads();
  if (warp == 0) {
    const bool live = lane < static_cast<int>(blockDim.x / kWarpSize);
    value = live ? warp_values[lane] : -DBL_MAX;
    key = live ? warp_keys[lane] : INT64_MAX;
    reduce_warp();
    if (lane == 0) {
      warp_keys[0] = key;
    }
  }
  __syncthreads();
  const int64_t winner = warp_keys[0];
  __syncthreads();  // the scratch may be reused right after
  return winner;
}

template <typename scalar_t>
__global__ void group_variance_partial_kernel(const scalar_t* __restrict__ x, int64_t group_size, int64_t columns,
                                              int64_t blocks_per_group, double* __restrict__ partial) {
  __shared__ double warp_scratch[kVarianceThreads / kWarpSize];
  const int64_t group = blockIdx.x / blocks_per_group;
  const int64_t column = (blockIdx.x % blocks_per_group) * blockDim.x + threadIdx.x;
  double total = 0.0;
  if (column < columns) {
    const scalar_t* rows = x + group * group_size * columns + column;
    double mean = 0.0;
    for (int64_t i = 0; i < group_size; ++i) {
      mean += to_double<false>(rows[i * columns]);
    }
    mean /= static_cast<double>(group_size);
    for (int64_t i = 0; i < group_size; ++i) {
      const double v = to_double<false>(rows[i * columns]) - mean;
      total += v * v;
    }
  }
  total = block_sum(total, warp_scratch);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = total;
  }
}

__global__ void group_variance_finish_kernel(const double* __restrict__ partial, int64_t groups, int64_t group_size,
                                             int64_t blocks_per_group, float* __restrict__ out) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group < groups) {
    double total = 0.0;
    for (int64_t b = 0; b < blocks_per_group; ++b) {
      total += partial[group * blocks_per_group + b];
    }
    out[group] = static_cast<float>(total / static_cast<double>(group_size));
  }
}

// Shared memory of select_kernel: three (n + 1) double arrays, two n int arrays, n flags and the
// reduction scratch.
struct SelectShared {
  double *a, *b, *c;
  int *order, *kept;
  bool* chosen;
  double* warp_values;
  int64_t* warp_keys;

  __device__ SelectShared(char* base, int n) {
    a = reinterpret_cast<double*>(base);
    b = a + (n + 1);
    c = b + (n + 1);
    warp_values = c + (n + 1);
    warp_keys = reinterpret_cast<int64_t*>(warp_values + kWarpSize);
    order = reinterpret_cast<int*>(warp_keys + kWarpSize);
    kept = order + n;
    chosen = reinterpret_cast<bool*>(kept + n);
  }
  static size_t bytes(int n) {
    return 3 * (n + 1) * sizeof(double) + kWarpSize * (sizeof(double) + sizeof(int64_t)) + 2 * n * sizeof(int) + n;
  }
};

// (1/count) sum_r ||f_{rows[r]} - mean||^2 over the given rows (ascending); mean goes to
// `mean` (d doubles of global workspace), the row totals to row_totals. Result in thread 0.
template <bool kRoundToFloat, typename scalar_t>
__device__ double rows_variance(const scalar_t* f, int64_t d, const int* rows, int count, double* mean,
                                double* row_totals) {
  for (int64_t col = threadIdx.x; col < d; col += blockDim.x) {
    double sum = 0.0;
    for (int r = 0; r < count; ++r) {
      sum += to_double<kRoundToFloat>(f[rows[r] * d + col]);
    }
    mean[col] = sum / static_cast<double>(count);
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < count) {
    const scalar_t* row = f + rows[threadIdx.x] * d;
    double total = 0.0;
    for (int64_t col = 0; col < d; ++col) {
      const double v = to_double<kRoundToFloat>(row[col]) - mean[col];
      total += v * v;
    }
    row_totals[threadIdx.x] = total;
  }
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int r = 0; r < count; ++r) {
      total += row_totals[r];
    }
  }
  __syncthreads();
  return total / static_cast<double>(count);
}

// Exact OVF on the block's n scalars: marks the chosen rows in s.chosen.
template <bool kRoundToFloat, typename scalar_t>
__device__ void ovf_select_block(const scalar_t* f, int n, int k, SelectShared& s) {
  const int i = threadIdx.x;
  double* values = s.a;
  double* sorted = s.b;
  if (i < n) {
    values[i] = to_double<kRoundToFloat>(f[i]);
  }
  __syncthreads();
  if (i < n) {  // stable rank: smaller values first, then lower rows
    const double v = values[i];
    int rank = 0;
    for (int j = 0; j < n; ++j) {
      rank += values[j] < v || (values[j] == v && j < i);
    }
    sorted[rank] = v;
    s.order[rank] = i;
  }
  __syncthreads();
  if (i == 0) {
    double sum = 0.0;
    for (int j = 0; j < n; ++j) {
      sum += sorted[j];
    }
    const double mean = sum / static_cast<double>(n);
    double* prefix_sum = s.c;
    double* prefix_sq = s.a;  // the unsorted values are no longer needed
    prefix_sum[0] = prefix_sq[0] = 0.0;
    for (int j = 0; j < n; ++j) {
      const double v = sorted[j] - mean;
      prefix_sum[j + 1] = prefix_sum[j] + v;
      prefix_sq[j + 1] = prefix_sq[j] + v * v;
    }
    const double kd = static_cast<double>(k);
    int best = 0;
    double best_var = 0.0;
    for (int split = 0; split <= k; ++split) {
      const int high = n - k + split;
      const double total = prefix_sum[split] + prefix_sum[n] - prefix_sum[high];
      const double total_sq = prefix_sq[split] + prefix_sq[n] - prefix_sq[high];
      const double var = k == 1 ? 0.0 : total_sq / kd - (total / kd) * (total / kd);  // k == 1: all 0
      if (split == 0 || var > best_var) {
        best = split;
        best_var = var;
      }
    }
    for (int pos = 0; pos < n; ++pos) {
      s.chosen[s.order[pos]] = pos < best || pos >= n - k + best;
    }
  }
  __syncthreads();
}

// dist2 between rows i and j of the group, centred on mean, with their centred squared norms. The
// dot product runs in kDotLanes interleaved partial sums added pairwise, as on the CPU.
constexpr int kDotLanes = 8;

template <bool kRoundToFloat, typename scalar_t>
__device__ double dist2(const scalar_t* f, int64_t d, const double* mean, const double* norms, int i, int j) {
  const scalar_t* fi = f + i * d;
  const scalar_t* fj = f + j * d;
  auto product = [&](int64_t col) {
    return (to_double<kRoundToFloat>(fi[col]) - mean[col]) * (to_double<kRoundToFloat>(fj[col]) - mean[col]);
  };
  double lane[kDotLanes] = {};
  int64_t col = 0;
  for (; col + kDotLanes <= d; col += kDotLanes) {
#pragma unroll
    for (int j = 0; j < kDotLanes; ++j) {
      lane[j] += product(col + j);
    }
  }
#pragma unroll
  for (int j = 0; j < kDotLanes; ++j) {
    if (col + j < d) {
      lane[j] += product(col + j);
    }
  }
  const double dot = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  return fmax(0.0, norms[i] + norms[j] - 2.0 * dot);
}

// Greedy max-dispersion on the block's n rows: marks the chosen rows in s.chosen.
template <bool kRoundToFloat, typename scalar_t>
__device__ void greedy_select_block(const scalar_t* f, int n, int64_t d, int k, const double* mean,
                                    const double* norms, SelectShared& s) {
  const int i = threadIdx.x;
  // Farthest pair, first in row-major order: thread i scans j > i, the block picks the best key.
  double farthest = -DBL_MAX;
  int64_t pair = INT64_MAX;
  if (i < n) {
    s.chosen[i] = false;
    for (int j = i + 1; j < n; ++j) {
      const double dist = dist2<kRoundToFloat>(f, d, mean, norms, i, j);
      if (dist > farthest) {
        farthest = dist;
        pair = static_cast<int64_t>(i) * n + j;
      }
    }
  }
  pair = block_argmax(farthest, pair, s.warp_values, s.warp_keys);
  double gain = 0.0;
  auto add = [&](int row) {  // every thread calls it; s.chosen is read only after a barrier
    if (i == 0) {
      s.chosen[row] = true;
    }
    if (i < n) {
      gain += dist2<kRoundToFloat>(f, d, mean, norms, i, row);
    }
    __syncthreads();
  };
  add(static_cast<int>(pair / n));
  if (k > 1) {
    add(static_cast<int>(pair % n));
  }
  for (int step = 2; step < k; ++step) {
    const double candidate = i < n ? (s.chosen[i] ? -1.0 : gain) : -DBL_MAX;
    add(static_cast<int>(block_argmax(candidate, i, s.warp_values, s.warp_keys)));
  }
}

template <bool kRoundToFloat, typename scalar_t>
__global__ void select_kernel(const scalar_t* __restrict__ features, int n, int64_t d, int k, bool flat_rows,
                              double* __restrict__ workspace, int64_t* __restrict__ chosen_out,
                              float* __restrict__ var_all, float* __restrict__ var_kept) {
  extern __shared__ __align__(16) char shared_bytes[];
  SelectShared s(shared_bytes, n);
  const int64_t group = blockIdx.x;
  const scalar_t* f = features + group * n * d;
  double* mean = workspace + group * d;
  const int i = threadIdx.x;

  // Column means and centred norms of the whole group (s.c = norms); var_all = mean norm.
  if (i < n) {
    s.kept[i] = i;
  }
  __syncthreads();
  const double all = rows_variance<kRoundToFloat>(f, d, s.kept, n, mean, s.c);
  if (var_all != nullptr && i == 0) {
    var_all[group] = static_cast<float>(all);
  }

  if (d == 1) {
    ovf_select_block<kRoundToFloat>(f, n, k, s);
  } else if (k == n) {
    if (i < n) {
      s.chosen[i] = true;
    }
    __syncthreads();
  } else {
    greedy_select_block<kRoundToFloat>(f, n, d, k, mean, s.c, s);
  }

  if (i == 0) {
    for (int row = 0, count = 0; row < n; ++row) {
      if (s.chosen[row]) {
        s.kept[count++] = row;
      }
    }
  }
  __syncthreads();
  const int64_t base = flat_rows ? group * n : 0;
  for (int r = i; r < k; r += blockDim.x) {
    chosen_out[group * k + r] = base + s.kept[r];
  }
  const double kept = rows_variance<kRoundToFloat>(f, d, s.kept, k, mean, s.b);
  if (var_kept != nullptr && i == 0) {
    var_kept[group] = static_cast<float>(kept);
  }
}

}  // namespace

int64_t group_variance_workspace_size(int64_t groups, int64_t columns) {
  return groups * ((columns + kVarianceThreads - 1) / kVarianceThreads);
}

cudaError_t launch_group_variance(const void* x, DType dtype, int64_t groups, int64_t group_size, int64_t columns,
                                  double* workspace, float* out, cudaStream_t stream) {
  const int64_t blocks_per_group = (columns + kVarianceThreads - 1) / kVarianceThreads;
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    group_variance_partial_kernel<scalar_t><<<groups * blocks_per_group, kVarianceThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), group_size, columns, blocks_per_group, workspace);
    group_variance_finish_kernel<<<(groups + 127) / 128, 128, 0, stream>>>(workspace, groups, group_size,
                                                                           blocks_per_group, out);
    return cudaGetLastError();
  });
}

cudaError_t launch_select(const void* features, DType dtype, bool round_to_float, int64_t groups, int64_t n,
                          int64_t d, int64_t k, bool flat_rows, double* workspace, int64_t* chosen, float* var_all,
                          float* var_kept, cudaStream_t stream) {
  if (n < 1 || n > kMaxGroupSize || k < 1 || k > n) {
    return cudaErrorInvalidValue;
  }
  const int threads = static_cast<int>((n + kWarpSize - 1) / kWarpSize * kWarpSize);
  const size_t shared = SelectShared::bytes(static_cast<int>(n));
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* data = static_cast<const scalar_t*>(features);
    if (round_to_float) {
      select_kernel<true, scalar_t><<<groups, threads, shared, stream>>>(data, n, d, k, flat_rows, workspace, chosen,
                                                                        var_all, var_kept);
    } else {
      select_kernel<false, scalar_t><<<groups, threads, shared, stream>>>(data, n, d, k, flat_rows, workspace,
                                                                         chosen, var_all, var_kept);
    }
    return cudaGetLastError();
  });
}

}  // namespace progrpo_fast::cuda
