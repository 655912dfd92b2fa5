// Adaptive average pooling of latents (B, C, H, W) or videos (B, C, F, H, W) -> (B, C*g*g) fp32,
// torch's bin edges; a video's F frames share one temporal bin (F = 1 for images).
//
// Per plane (the F frames of one (b, c)) and output row oh, blocks of kBlockColumns columns are
// summed over the bin's input rows of every frame in registers (contiguous over W, vectorised):
// column_sum[w] = sum_f sum_{h in bin(oh)} x[f][h][w]; each output cell then adds its columns,
// out = (sum_{w in bin(ow)} column_sum[w]) / F / kh / kw, divided in fp32 as torch does (for
// images the division by F = 1 is exact). Bins may overlap (H % g != 0); such rows are read
// twice. fp16/bf16 are converted from their raw bits so that the loops vectorise.
//
// On x86-64 Linux (GCC >= 12) the fp16 loop is compiled twice, for the baseline and for x86-64-v3
// (AVX2, F16C), and the loader picks the clone the CPU supports.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <bit>

#include "cpu/cpu_helpers.h"
#include "progrpo_fast.h"

namespace progrpo_fast::cpu {
namespace {

constexpr int64_t kBlockColumns = 64;  // accumulated in registers
constexpr int64_t kCacheLine = 64;
constexpr int64_t kPrefetchBytes = 4096;  // measured best of 1-8 KiB for (64, 64) planes

PROGRPO_FAST_INLINE float to_float(float v) { return v; }
PROGRPO_FAST_INLINE float to_float(double v) { return static_cast<float>(v); }

// bf16 is the upper half of an fp32.
PROGRPO_FAST_INLINE float to_float(c10::BFloat16 v) { return std::bit_cast<float>(static_cast<uint32_t>(v.x) << 16); }

// fp16 -> fp32 exactly: move exponent and mantissa into fp32 position and rescale by 2^(127-15)
// (this also normalises subnormals); an all-ones exponent (inf/nan) stays all ones.
PROGRPO_FAST_INLINE float to_float(c10::Half v) {
  const uint32_t sign = (static_cast<uint32_t>(v.x) & 0x8000u) << 16;
  const int32_t bits = static_cast<int32_t>((static_cast<uint32_t>(v.x) & 0x7fffu) << 13);
  const uint32_t magnitude = std::bit_cast<uint32_t>(std::bit_cast<float>(bits) * 0x1p112f);
  return std::bit_cast<float>(sign | magnitude | (bits >= 0x0f800000 ? 0x7f800000u : 0u));
}

// column_sum[c] = sum_{f < frames} sum_{h < rows} first_row[f * frame_stride + h * width + c] for
// c < cols (<= kBlockColumns), summed in registers; each row also prefetches the data
// kPrefetchBytes ahead (the next rows/plane).
template <typename scalar_t>
PROGRPO_FAST_INLINE void sum_rows(const scalar_t* first_row, int64_t frames, int64_t frame_stride, int64_t rows,
                                  int64_t width, int64_t cols, float* column_sum) {
  float block[kBlockColumns] = {};
  for (int64_t f = 0; f < frames; ++f) {
    for (int64_t h = 0; h < rows; ++h) {
      const scalar_t* row = first_row + f * frame_stride + h * width;
      for (int64_t byte = 0; byte < cols * static_cast<int64_t>(sizeof(scalar_t)); byte += kCacheLine) {
        __builtin_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes + byte);
      }
      for (int64_t c = 0; c < cols; ++c) {
        block[c] += to_float(row[c]);
      }
    }
  }
  std::copy(block, block + cols, column_sum);
}

// sum_{c < count} values[c] in double, in four interleaved partial sums (short dependency chains).
PROGRPO_FAST_INLINE double sum_columns(const float* values, int64_t count) {
  double lane[4] = {};
  int64_t c = 0;
  for (; c + 4 <= count; c += 4) {
    for (int64_t j = 0; j < 4; ++j) {
      lane[j] += values[c + j];
    }
  }
  for (int64_t j = 0; c + j < count; ++j) {
    lane[j] += values[c + j];
  }
  return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

// Extent of one plane: `frames` frames of height x width (frames = 1 for images).
struct PlaneShape {
  int64_t frames, height, width;
};

template <typename scalar_t>
PROGRPO_FAST_INLINE void pool_plane(const scalar_t* plane, PlaneShape shape, int64_t grid, float* column_sum,
                                    float* out) {
  const int64_t height = shape.height, width = shape.width, frame_stride = height * width;
  for (int64_t oh = 0; oh < grid; ++oh) {
    const int64_t h0 = bin_start(oh, height, grid), h1 = bin_end(oh, height, grid);
    const scalar_t* first_row = plane + h0 * width;
    int64_t w = 0;
    for (; w + kBlockColumns <= width; w += kBlockColumns) {  // constant width: fully in registers
      sum_rows(first_row + w, shape.frames, frame_stride, h1 - h0, width, kBlockColumns, column_sum + w);
    }
    if (w < width) {
      sum_rows(first_row + w, shape.frames, frame_stride, h1 - h0, width, width - w, column_sum + w);
    }
    for (int64_t ow = 0; ow < grid; ++ow) {
      const int64_t w0 = bin_start(ow, width, grid), w1 = bin_end(ow, width, grid);
      const double sum = sum_columns(column_sum + w0, w1 - w0);
      out[oh * grid + ow] = static_cast<float>(sum) / static_cast<float>(shape.frames) /
                            static_cast<float>(h1 - h0) / static_cast<float>(w1 - w0);
    }
  }
}

template <typename scalar_t>
PROGRPO_FAST_INLINE void pool_planes(const void* x, int64_t begin, int64_t end, PlaneShape shape, int64_t grid,
                                     float* column_sum, float* out) {
  const scalar_t* data = static_cast<const scalar_t*>(x);
  const int64_t plane_size = shape.frames * shape.height * shape.width;
  for (int64_t p = begin; p < end; ++p) {
    pool_plane(data + p * plane_size, shape, grid, column_sum, out + p * grid * grid);
  }
}

// fp16 planes. Not a template, so that it can have target clones: with F16C the conversion
// vectorises far better. (fp32/bf16 stay on the baseline: memory-bound, and the AVX2 clone
// measured slower there.)
PROGRPO_FAST_SIMD_CLONES
void pool_half_planes(const void* x, int64_t begin, int64_t end, PlaneShape shape, int64_t grid, float* column_sum,
                      float* out) {
  pool_planes<c10::Half>(x, begin, end, shape, grid, column_sum, out);
}

// Pools planes [begin, end) of x.
void pool_plane_range(const void* x, at::ScalarType dtype, int64_t begin, int64_t end, PlaneShape shape, int64_t grid,
                      float* column_sum, float* out) {
  switch (dtype) {
    case at::kFloat: return pool_planes<float>(x, begin, end, shape, grid, column_sum, out);
    case at::kDouble: return pool_planes<double>(x, begin, end, shape, grid, column_sum, out);
    case at::kHalf: return pool_half_planes(x, begin, end, shape, grid, column_sum, out);
    case at::kBFloat16: return pool_planes<c10::BFloat16>(x, begin, end, shape, grid, column_sum, out);
    default: TORCH_CHECK(false, "pool_latents: unsupported dtype ", dtype);
  }
}

}  // namespace

void pool_into(const at::Tensor& x, int64_t grid, float* out) {
  const PlaneShape shape{x.dim() == 5 ? x.size(2) : 1, x.size(-2), x.size(-1)};
  const int64_t planes = x.size(0) * x.size(1);
  at::parallel_for(0, planes, grain_for(shape.frames * shape.height * shape.width), [&](int64_t begin, int64_t end) {
    std::vector<float> column_sum(shape.width);
    pool_plane_range(x.const_data_ptr(), x.scalar_type(), begin, end, shape, grid, column_sum.data(), out);
  });
}

at::Tensor pool_latents(const at::Tensor& x, int64_t grid) {
  at::Tensor out = at::empty({x.size(0), x.size(1) * grid * grid}, x.options().dtype(at::kFloat));
  pool_into(x, grid, out.data_ptr<float>());
  return out;
}

}  // namespace progrpo_fast::cpu
