// The fused pruning op on CPU. Pass 1 (latents (B, C, H, W) or (B, C, F, H, W) only) pools x straight into a small fp32 feature
// buffer (B, C*g*g), in parallel over planes: x is read once and never copied or converted as a
// whole. Pass 2, in parallel over groups, reads each group's G feature rows as fp32-rounded
// doubles (the reference's features are fp32) and computes
//   var_all  = (1/G) sum_i ||f_i - mean_G||^2,
//   the k survivors (exact OVF for D == 1, greedy max-dispersion otherwise),
//   var_kept = (1/k) sum_{i in K} ||f_i - mean_K||^2.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <numeric>

#include "cpu/cpu_helpers.h"
#include "progrpo_fast.h"

namespace progrpo_fast::cpu {

PruneResult prune_select(const at::Tensor& x, int64_t group_size, int64_t k, int64_t grid) {
  const int64_t batch = x.size(0), groups = batch / group_size;
  at::Tensor pooled;
  const bool latents = x.dim() >= 4;
  if (latents) {
    pooled = at::empty({batch, x.size(1) * grid * grid}, x.options().dtype(at::kFloat));
    pool_into(x, grid, pooled.data_ptr<float>());
  }
  const at::Tensor& features = latents ? pooled : x;
  const int64_t dim = features.numel() / batch, group_numel = group_size * dim;

  at::Tensor index = at::empty({groups * k}, x.options().dtype(at::kLong));
  at::Tensor var_all = at::empty({groups}, x.options().dtype(at::kFloat));
  at::Tensor var_kept = at::empty({groups}, x.options().dtype(at::kFloat));
  int64_t* index_out = index.data_ptr<int64_t>();
  float* var_all_out = var_all.data_ptr<float>();
  float* var_kept_out = var_kept.data_ptr<float>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "prune_select", [&] {
    const scalar_t* src = features.const_data_ptr<scalar_t>();
    at::parallel_for(0, groups, grain_for(group_size * group_numel), [&](int64_t begin, int64_t end) {
      SelectScratch scratch;
      std::vector<double> group(group_numel);
      std::vector<int64_t> every_row(group_size), kept(k);
      std::iota(every_row.begin(), every_row.end(), int64_t{0});
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* rows = src + p * group_numel;
        for (int64_t e = 0; e < group_numel; ++e) {
          group[e] = static_cast<double>(static_cast<float>(rows[e]));
        }
        var_all_out[p] = static_cast<float>(subset_variance(group.data(), dim, every_row.data(), group_size, scratch));
        select_group(group.data(), group_size, dim, k, kept.data(), scratch);
        var_kept_out[p] = static_cast<float>(subset_variance(group.data(), dim, kept.data(), k, scratch));
        for (int64_t r = 0; r < k; ++r) {
          index_out[p * k + r] = p * group_size + kept[r];
        }
      }
    });
  });
  return {index, var_all, var_kept};
}

}  // namespace progrpo_fast::cpu
