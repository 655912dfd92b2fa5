// Raw-pointer launchers of the CUDA kernels. No torch headers, so every .cu file here compiles on
// its own with `nvcc -c`; csrc/cuda/torch_glue.cpp turns tensors into these calls. All launch on
// the given stream and never synchronise the host (CUDA-graph capturable); they return the launch
// error, if any.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace progrpo_fast::cuda {

enum class DType : int { kFloat32, kFloat16, kBFloat16, kFloat64 };

// Largest group the selection kernel handles: one thread per row, one block per group.
constexpr int64_t kMaxGroupSize = 1024;

// x (planes, frames, height, width) -> out (planes, grid*grid) fp32 adaptive mean pool (torch's
// bins; the frames of a plane in one temporal bin, frames = 1 for images).
cudaError_t launch_pool_latents(const void* x, DType dtype, int64_t planes, int64_t frames, int64_t height,
                                int64_t width, int64_t grid, float* out, cudaStream_t stream);

// Doubles of workspace launch_group_variance needs.
int64_t group_variance_workspace_size(int64_t groups, int64_t columns);

// x (groups * group_size, columns) -> out (groups,) fp32 total variance of each group, in double.
cudaError_t launch_group_variance(const void* x, DType dtype, int64_t groups, int64_t group_size, int64_t columns,
                                  double* workspace, float* out, cudaStream_t stream);

// features (groups, n, d) -> chosen (groups, k) int64 ascending: exact OVF for d == 1, every row
// for k == n, greedy max-dispersion otherwise. round_to_float reads the values as fp32-rounded
// (prune_select's features are fp32); flat_rows adds group * n to each row (flat batch rows).
// var_all / var_kept (groups,) fp32 may be null. workspace: groups * d doubles. n <= kMaxGroupSize.
cudaError_t launch_select(const void* features, DType dtype, bool round_to_float, int64_t groups, int64_t n,
                          int64_t d, int64_t k, bool flat_rows, double* workspace, int64_t* chosen, float* var_all,
                          float* var_kept, cudaStream_t stream);

// In place, for r < kept: row r = row index[r] (index strictly ascending) of `rows` rows of
// row_bytes bytes each at data. A source row outside [0, rows) fails a device-side assert.
cudaError_t launch_compact_rows(void* data, int64_t row_bytes, int64_t rows, const int64_t* index, int64_t kept,
                                cudaStream_t stream);

}  // namespace progrpo_fast::cuda
