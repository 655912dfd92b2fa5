// Per-element conversions of the supported input dtypes and the dtype dispatch, shared by the
// kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/launchers.h"

namespace progrpo_fast::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(double v) { return __double2float_rn(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The value as double; kRoundToFloat rounds fp64 inputs to fp32 first (fp32/16 are exact anyway).
template <bool kRoundToFloat, typename scalar_t>
__device__ __forceinline__ double to_double(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, double> && !kRoundToFloat) {
    return v;
  } else {
    return static_cast<double>(to_float(v));
  }
}

// Calls launch(scalar_t{}) with the element type of `dtype`.
template <typename Launch>
cudaError_t dispatch_dtype(DType dtype, Launch&& launch) {
  switch (dtype) {
    case DType::kFloat32: return launch(float{});
    case DType::kFloat64: return launch(double{});
    case DType::kFloat16: return launch(__half{});
    case DType::kBFloat16: return launch(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace progrpo_fast::cuda
