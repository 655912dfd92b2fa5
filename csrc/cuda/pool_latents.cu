// Adaptive average pooling (planes, F, H, W) -> (planes, g*g) fp32 with torch's bin edges
// start = floor(i*H/g), end = ceil((i+1)*H/g); the F frames of a plane (F = 1 for images) share one
// temporal bin. One block per plane; warp w pools bins w, w+8, ...: its lanes walk the bin's rows
// of every frame over consecutive columns (coalesced), sum in fp32, reduce with shuffles, and
// lane 0 writes sum / F / kh / kw (torch's order of the divisions).
#include "cuda/convert.cuh"
#include "cuda/launchers.h"

namespace progrpo_fast::cuda {
namespace {

constexpr int kPoolThreads = 256;

template <typename scalar_t>
__global__ void pool_latents_kernel(const scalar_t* __restrict__ x, int64_t frames, int64_t height, int64_t width,
                                    int64_t grid, float* __restrict__ out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t frame_size = height * width;
  const scalar_t* plane = x + blockIdx.x * frames * frame_size;
  for (int64_t bin = warp; bin < grid * grid; bin += warps) {
    const int64_t oh = bin / grid, ow = bin % grid;
    const int64_t h0 = oh * height / grid, h1 = ((oh + 1) * height + grid - 1) / grid;
    const int64_t w0 = ow * width / grid, w1 = ((ow + 1) * width + grid - 1) / grid;
    float sum = 0.0f;
    for (int64_t f = 0; f < frames; ++f) {
      const scalar_t* frame = plane + f * frame_size;
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t w = w0 + lane; w < w1; w += 32) {
          sum += to_float(frame[h * width + w]);
        }
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
      out[blockIdx.x * grid * grid + bin] =
          sum / static_cast<float>(frames) / static_cast<float>(h1 - h0) / static_cast<float>(w1 - w0);
    }
  }
}

}  // namespace

cudaError_t launch_pool_latents(const void* x, DType dtype, int64_t planes, int64_t frames, int64_t height,
                                int64_t width, int64_t grid, float* out, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    pool_latents_kernel<scalar_t><<<planes, kPoolThreads, 0, stream>>>(static_cast<const scalar_t*>(x), frames,
                                                                       height, width, grid, out);
    return cudaGetLastError();
  });
}

}  // namespace progrpo_fast::cuda
