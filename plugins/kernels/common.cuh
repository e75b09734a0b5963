// Helpers shared by maskrt's kernels. The sources include no CUDA header, so NVRTC compiles them as they are.
#ifndef MASKRT_COMMON_CUH
#define MASKRT_COMMON_CUH

// FP16 values travel as their bit pattern; conversions are single PTX instructions (round to nearest even).
typedef unsigned short maskrt_half;

__device__ __forceinline__ float half_to_float(maskrt_half value) {
  float result;
  asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(value));
  return result;
}

__device__ __forceinline__ maskrt_half float_to_half(float value) {
  maskrt_half result;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(result) : "f"(value));
  return result;
}

#endif  // MASKRT_COMMON_CUH
