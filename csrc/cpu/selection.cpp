// Subset selection in float64 with the formulas and tie rules of progrpo_fast.ops.reference, so
// that exact ties (data whose arithmetic is exact, e.g. small integers) resolve the same way.
//
// OVF (scalars): some optimal k-subset is the i smallest plus the k-i largest values. Stable-sort,
// centre on the mean, take prefix sums S1, S2 of v and v^2 and score split i (i = 0..k) as
//   total = S1[i] + S1[n] - S1[n-k+i],  total_sq = S2[i] + S2[n] - S2[n-k+i],
//   var = total_sq / k - (total / k)^2 (0 for k == 1);  the first best split wins.
// Greedy max-dispersion (vectors): on group-centred rows c_i with norms |c_i|^2,
//   dist2_ij = max(0, |c_i|^2 + |c_j|^2 - 2 <c_i, c_j>);
// start from the farthest pair (first in row-major order), then repeatedly add the row with the
// largest sum of dist2 to the chosen rows (lowest index on ties).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <numeric>

#include "cpu/cpu_helpers.h"
#include "progrpo_fast.h"

namespace progrpo_fast::cpu {
namespace {

// <a, b> over d values in kDotLanes interleaved partial sums (lane j takes c = j mod kDotLanes),
// added pairwise: vectorisable, deterministic, exact whenever the products and sums are, and the
// same order as the CUDA kernel (csrc/cuda/group_select.cu).
constexpr int64_t kDotLanes = 8;

PROGRPO_FAST_INLINE double lane_dot(const double* a, const double* b, int64_t d) {
  double lane[kDotLanes] = {};
  int64_t c = 0;
  for (; c + kDotLanes <= d; c += kDotLanes) {
    for (int64_t j = 0; j < kDotLanes; ++j) {
      lane[j] += a[c + j] * b[c + j];
    }
  }
  for (int64_t j = 0; c + j < d; ++j) {
    lane[j] += a[c + j] * b[c + j];
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Centres the rows on their column means and stores each centred row's squared norm.
void centre_rows(const double* features, int64_t n, int64_t d, SelectScratch& s) {
  s.mean.assign(d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < d; ++c) {
      s.mean[c] += features[i * d + c];
    }
  }
  for (int64_t c = 0; c < d; ++c) {
    s.mean[c] /= static_cast<double>(n);
  }
  s.centred.resize(n * d);
  s.norms.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    double norm = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const double v = features[i * d + c] - s.mean[c];
      s.centred[i * d + c] = v;
      norm += v * v;
    }
    s.norms[i] = norm;
  }
}

// Vectorised dot products dominate: also compiled for AVX2 (bit-identical results).
PROGRPO_FAST_SIMD_CLONES
void greedy_select_group(const double* features, int64_t n, int64_t d, int64_t k, int64_t* chosen, SelectScratch& s) {
  centre_rows(features, n, d, s);
  s.dist2.resize(n * n);
  int64_t first = 0, second = 1;
  double farthest = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    s.dist2[i * n + i] = 0.0;
    for (int64_t j = i + 1; j < n; ++j) {
      const double dot = lane_dot(s.centred.data() + i * d, s.centred.data() + j * d, d);
      const double dist = std::max(0.0, s.norms[i] + s.norms[j] - 2.0 * dot);
      s.dist2[i * n + j] = s.dist2[j * n + i] = dist;
      if (dist > farthest) {
        farthest = dist;
        first = i;
        second = j;
      }
    }
  }
  s.chosen.assign(n, 0);
  s.gain.assign(n, 0.0);
  auto add = [&](int64_t row) {
    s.chosen[row] = 1;
    for (int64_t m = 0; m < n; ++m) {
      s.gain[m] += s.dist2[m * n + row];
    }
  };
  add(first);
  if (k > 1) {
    add(second);
  }
  for (int64_t step = 2; step < k; ++step) {
    int64_t pick = -1;
    for (int64_t m = 0; m < n; ++m) {
      if (!s.chosen[m] && (pick < 0 || s.gain[m] > s.gain[pick])) {
        pick = m;
      }
    }
    add(pick);
  }
  for (int64_t m = 0, out = 0; m < n; ++m) {
    if (s.chosen[m]) {
      chosen[out++] = m;
    }
  }
}

// Exact OVF on one group's n values: writes the k chosen positions, ascending.
void ovf_select_group(const double* values, int64_t n, int64_t k, int64_t* chosen, SelectScratch& s) {
  s.order.resize(n);
  std::iota(s.order.begin(), s.order.end(), int64_t{0});
  std::stable_sort(s.order.begin(), s.order.end(), [&](int64_t a, int64_t b) { return values[a] < values[b]; });
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    sum += values[s.order[i]];
  }
  const double mean = sum / static_cast<double>(n);
  s.prefix_sum.resize(n + 1);
  s.prefix_sq.resize(n + 1);
  s.prefix_sum[0] = s.prefix_sq[0] = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = values[s.order[i]] - mean;
    s.prefix_sum[i + 1] = s.prefix_sum[i] + v;
    s.prefix_sq[i + 1] = s.prefix_sq[i] + v * v;
  }
  const double kd = static_cast<double>(k);
  int64_t best = 0;
  double best_var = 0.0;
  for (int64_t i = 0; i <= k; ++i) {
    const int64_t high = n - k + i;
    const double total = s.prefix_sum[i] + s.prefix_sum[n] - s.prefix_sum[high];
    const double total_sq = s.prefix_sq[i] + s.prefix_sq[n] - s.prefix_sq[high];
    // k == 1: every single value has variance 0, so the first split wins exactly (not by rounding).
    const double var = k == 1 ? 0.0 : total_sq / kd - (total / kd) * (total / kd);
    if (i == 0 || var > best_var) {
      best = i;
      best_var = var;
    }
  }
  // Keep sorted positions [0, best) and [n-k+best, n).
  std::copy(s.order.begin(), s.order.begin() + best, chosen);
  std::copy(s.order.begin() + (n - k + best), s.order.end(), chosen + best);
  std::sort(chosen, chosen + k);
}

// Selects k rows in each of the `groups` consecutive (n x d) blocks of `data` (any float dtype,
// read as double into a per-thread buffer), in parallel over groups -> (groups, k) int64.
at::Tensor select_groups(const at::Tensor& data, int64_t groups, int64_t n, int64_t d, int64_t k) {
  at::Tensor out = at::empty({groups, k}, data.options().dtype(at::kLong));
  int64_t* chosen = out.data_ptr<int64_t>();
  const int64_t work = d == 1 ? n * 8 : n * n * d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, data.scalar_type(), "select_groups", [&] {
    const scalar_t* src = data.const_data_ptr<scalar_t>();
    at::parallel_for(0, groups, grain_for(work), [&](int64_t begin, int64_t end) {
      SelectScratch scratch;
      std::vector<double> group(n * d);
      for (int64_t p = begin; p < end; ++p) {
        std::copy(src + p * n * d, src + (p + 1) * n * d, group.begin());
        select_group(group.data(), n, d, k, chosen + p * k, scratch);
      }
    });
  });
  return out;
}

}  // namespace

void select_group(const double* features, int64_t n, int64_t d, int64_t k, int64_t* chosen, SelectScratch& s) {
  if (d == 1) {
    ovf_select_group(features, n, k, chosen, s);
  } else if (k == n) {
    std::iota(chosen, chosen + n, int64_t{0});
  } else {
    greedy_select_group(features, n, d, k, chosen, s);
  }
}

double subset_variance(const double* features, int64_t d, const int64_t* rows, int64_t count, SelectScratch& s) {
  s.mean.assign(d, 0.0);
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t c = 0; c < d; ++c) {
      s.mean[c] += features[rows[r] * d + c];
    }
  }
  for (int64_t c = 0; c < d; ++c) {
    s.mean[c] /= static_cast<double>(count);
  }
  double total = 0.0;
  for (int64_t r = 0; r < count; ++r) {
    double row_total = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const double v = features[rows[r] * d + c] - s.mean[c];
      row_total += v * v;
    }
    total += row_total;
  }
  return total / static_cast<double>(count);
}

at::Tensor ovf_select(const at::Tensor& scores, int64_t k) {
  return select_groups(scores, scores.size(0), scores.size(1), 1, k);
}

at::Tensor variance_select(const at::Tensor& features, int64_t k) {
  return select_groups(features, features.size(0), features.size(1), features.size(2), k);
}

}  // namespace progrpo_fast::cpu
