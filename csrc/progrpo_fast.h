// Declarations of the progrpo_fast._C ops. Arguments arrive validated and contiguous from
// progrpo_fast.ops (bindings.cpp re-checks only what would otherwise crash) and are routed by
// device: csrc/cpu implements every op for CPU tensors, csrc/cuda/torch_glue.cpp for CUDA tensors
// (compiled only with PROGRPO_FAST_WITH_CUDA).
//
//   pool_latents(x (B,C,H,W) or (B,C,F,H,W), grid)
//                                          -> (B, C*grid*grid) fp32 adaptive mean pool (a video's
//                                             F frames in one temporal bin)
//   group_variance(x (B,...), G)           -> (B/G,) fp32 (1/G) sum_i ||x_i - mean||^2, in double
//   ovf_select(scores (P,N), k)            -> (P, k) int64 exact max-variance subsets, ascending
//   variance_select(features (P,N,D), k)   -> (P, k) int64: exact OVF for D == 1, else greedy
//                                             max-dispersion; ascending
//   prune_select(x, G, k, grid)            -> survivors (P*k,) int64 flat ascending rows, and the
//                                             fp32 variance of each whole group / kept subset (P,);
//                                             x is latents (B,C,H,W) / (B,C,F,H,W), features (B,D)
//                                             or scores (B,)
//   compact_(index, tensors)               -> moves rows index (strictly ascending) to the front
//                                             of every tensor, in place
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace progrpo_fast {

using PruneResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

namespace cpu {
at::Tensor pool_latents(const at::Tensor& x, int64_t grid);
at::Tensor group_variance(const at::Tensor& x, int64_t group_size);
at::Tensor ovf_select(const at::Tensor& scores, int64_t k);
at::Tensor variance_select(const at::Tensor& features, int64_t k);
PruneResult prune_select(const at::Tensor& x, int64_t group_size, int64_t k, int64_t grid);
void compact_(const at::Tensor& index, const std::vector<at::Tensor>& tensors);
}  // namespace cpu

namespace cuda {
at::Tensor pool_latents(const at::Tensor& x, int64_t grid);
at::Tensor group_variance(const at::Tensor& x, int64_t group_size);
at::Tensor ovf_select(const at::Tensor& scores, int64_t k);
at::Tensor variance_select(const at::Tensor& features, int64_t k);
PruneResult prune_select(const at::Tensor& x, int64_t group_size, int64_t k, int64_t grid);
void compact_(const at::Tensor& index, const std::vector<at::Tensor>& tensors);
}  // namespace cuda

}  // namespace progrpo_fast
