// Just enough of CUDA to run maskrt's kernel sources on the CPU: each CUDA thread of a block is an OS thread,
// __syncthreads is a barrier, __shared__ variables are function statics, and blocks run one after another so that
// they never share those statics. The kernels' logic (indexing, synchronisation, sorting, NMS, level mapping) runs
// as written; what a GPU adds (warps, the memory model, FMA contraction) does not.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
inline std::barrier<>* block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicOr(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_or(address, value, __ATOMIC_SEQ_CST);
}
inline unsigned int __float_as_uint(float value) {
  unsigned int bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
inline float __fmul_rn(float a, float b) { return a * b; }  // built with -ffp-contract=off
inline int __ffsll(long long value) { return __builtin_ffsll(value); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// common.cuh converts FP16 with PTX; here the C++ compiler's _Float16 does it (also round to nearest even).
#define MASKRT_COMMON_CUH
typedef unsigned short maskrt_half;
inline float half_to_float(maskrt_half value) {
  _Float16 half;
  std::memcpy(&half, &value, sizeof half);
  return (float)half;
}
inline maskrt_half float_to_half(float value) {
  _Float16 half = (_Float16)value;
  maskrt_half bits;
  std::memcpy(&bits, &half, sizeof bits);
  return bits;
}

// Runs body for every thread of every block: `threads` OS threads, reused from block to block.
inline void run_grid(unsigned grid_x, unsigned grid_y, unsigned threads, const std::function<void()>& body) {
  blockDim = dim3{threads, 1, 1};
  gridDim = dim3{grid_x, grid_y, 1};
  std::barrier<> barrier(threads);
  block_barrier = &barrier;
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; t++) {
    workers.emplace_back([&, t] {
      threadIdx = dim3{t, 0, 0};
      for (unsigned y = 0; y < grid_y; y++) {
        for (unsigned x = 0; x < grid_x; x++) {
          blockIdx = dim3{x, y, 0};
          body();
          barrier.arrive_and_wait();
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  block_barrier = nullptr;
}
