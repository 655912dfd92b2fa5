// Torch glue of the CUDA kernels: allocates outputs and workspaces through torch's caching
// allocator and launches on the current stream, so no op synchronises the host and every op can
// be captured in a CUDA graph. Compiled only with PROGRPO_FAST_WITH_CUDA (needs CUDA torch).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"
#include "progrpo_fast.h"

namespace progrpo_fast::cuda {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "progrpo_fast._C: unsupported dtype ", t.scalar_type());
  }
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Selection on (groups, n, d) features -> chosen (groups * k) int64 and optional variances.
void select(const at::Tensor& features, int64_t groups, int64_t n, int64_t d, int64_t k, bool round_to_float,
            bool flat_rows, const at::Tensor& chosen, float* var_all, float* var_kept) {
  TORCH_CHECK(n <= kMaxGroupSize, "progrpo_fast._C on CUDA supports groups of at most ", kMaxGroupSize,
              " rows, got ", n);
  at::Tensor workspace = at::empty({groups * d}, features.options().dtype(at::kDouble));
  C10_CUDA_CHECK(launch_select(features.const_data_ptr(), dtype_of(features), round_to_float, groups, n, d, k,
                               flat_rows, workspace.data_ptr<double>(), chosen.data_ptr<int64_t>(), var_all,
                               var_kept, current_stream()));
}

}  // namespace

at::Tensor pool_latents(const at::Tensor& x, int64_t grid) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1) * grid * grid}, x.options().dtype(at::kFloat));
  const int64_t frames = x.dim() == 5 ? x.size(2) : 1;
  C10_CUDA_CHECK(launch_pool_latents(x.const_data_ptr(), dtype_of(x), x.size(0) * x.size(1), frames, x.size(-2),
                                     x.size(-1), grid, out.data_ptr<float>(), current_stream()));
  return out;
}

at::Tensor group_variance(const at::Tensor& x, int64_t group_size) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t groups = x.size(0) / group_size, columns = x.numel() / x.size(0);
  at::Tensor workspace = at::empty({group_variance_workspace_size(groups, columns)}, x.options().dtype(at::kDouble));
  at::Tensor out = at::empty({groups}, x.options().dtype(at::kFloat));
  C10_CUDA_CHECK(launch_group_variance(x.const_data_ptr(), dtype_of(x), groups, group_size, columns,
                                       workspace.data_ptr<double>(), out.data_ptr<float>(), current_stream()));
  return out;
}

at::Tensor ovf_select(const at::Tensor& scores, int64_t k) {
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor chosen = at::empty({scores.size(0), k}, scores.options().dtype(at::kLong));
  select(scores, scores.size(0), scores.size(1), 1, k, false, false, chosen, nullptr, nullptr);
  return chosen;
}

at::Tensor variance_select(const at::Tensor& features, int64_t k) {
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor chosen = at::empty({features.size(0), k}, features.options().dtype(at::kLong));
  select(features, features.size(0), features.size(1), features.size(2), k, false, false, chosen, nullptr, nullptr);
  return chosen;
}

PruneResult prune_select(const at::Tensor& x, int64_t group_size, int64_t k, int64_t grid) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor features = x.dim() >= 4 ? pool_latents(x, grid) : x;
  const int64_t groups = x.size(0) / group_size, dim = features.numel() / x.size(0);
  at::Tensor index = at::empty({groups * k}, x.options().dtype(at::kLong));
  at::Tensor var_all = at::empty({groups}, x.options().dtype(at::kFloat));
  at::Tensor var_kept = at::empty({groups}, x.options().dtype(at::kFloat));
  // The reference's features are fp32: fp64 features/scores are read rounded to fp32.
  select(features, groups, group_size, dim, k, true, true, index, var_all.data_ptr<float>(),
         var_kept.data_ptr<float>());
  return {index, var_all, var_kept};
}

void compact_(const at::Tensor& index, const std::vector<at::Tensor>& tensors) {
  const c10::cuda::CUDAGuard guard(index.device());
  const int64_t kept = index.numel();
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
    C10_CUDA_CHECK(launch_compact_rows(t.data_ptr(), row_bytes, t.size(0), index.const_data_ptr<int64_t>(), kept,
                                       current_stream()));
  }
}

}  // namespace progrpo_fast::cuda
