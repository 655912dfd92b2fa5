// Total variance of each group of G consecutive rows of x (B, ...), flattened to F columns:
//   var_p = (1/G) sum_i sum_c (x_ic - mean_c)^2,   mean_c = (1/G) sum_i x_ic,
// in double. F can be large (whole latents), so the work is split into (group, column chunk)
// tasks that run in parallel; each writes a partial sum, and the partials of a group are added
// in a fixed order (the result does not depend on the thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "cpu/cpu_helpers.h"
#include "progrpo_fast.h"

namespace progrpo_fast::cpu {

at::Tensor group_variance(const at::Tensor& x, int64_t group_size) {
  constexpr int64_t kChunkColumns = 2048;
  const int64_t groups = x.size(0) / group_size, columns = x.numel() / x.size(0);
  const int64_t chunks = (columns + kChunkColumns - 1) / kChunkColumns;
  std::vector<double> partial(groups * chunks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_variance", [&] {
    const scalar_t* data = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, groups * chunks, grain_for(group_size * kChunkColumns), [&](int64_t begin, int64_t end) {
      std::vector<double> mean(kChunkColumns);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / chunks, c0 = (task % chunks) * kChunkColumns;
        const int64_t width = std::min(kChunkColumns, columns - c0);
        const scalar_t* block = data + p * group_size * columns + c0;
        std::fill(mean.begin(), mean.begin() + width, 0.0);
        for (int64_t i = 0; i < group_size; ++i) {
          for (int64_t c = 0; c < width; ++c) {
            mean[c] += static_cast<double>(block[i * columns + c]);
          }
        }
        for (int64_t c = 0; c < width; ++c) {
          mean[c] /= static_cast<double>(group_size);
        }
        double total = 0.0;
        for (int64_t i = 0; i < group_size; ++i) {
          for (int64_t c = 0; c < width; ++c) {
            const double v = static_cast<double>(block[i * columns + c]) - mean[c];
            total += v * v;
          }
        }
        partial[task] = total;
      }
    });
  });
  at::Tensor out = at::empty({groups}, x.options().dtype(at::kFloat));
  float* out_data = out.data_ptr<float>();
  for (int64_t p = 0; p < groups; ++p) {
    double total = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      total += partial[p * chunks + chunk];
    }
    out_data[p] = static_cast<float>(total / static_cast<double>(group_size));
  }
  return out;
}

}  // namespace progrpo_fast::cpu
