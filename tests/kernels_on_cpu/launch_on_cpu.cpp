// maskrt_cpu_launch(kernel, grid, block, params): cuLaunchKernel's contract (params[i] points at argument i) for the
// kernels of plugins/kernels, run with cuda_on_cpu.h. Device pointers are host addresses here.
#include "cuda_on_cpu.h"

#include <string>

#include "multilevel_roi_align.cu"
#include "batched_nms.cu"
#include "paste_masks.cu"

template <typename T>
static T arg(void** params, int i) {
  T value;
  std::memcpy(&value, params[i], sizeof value);
  return value;
}

extern "C" int maskrt_cpu_launch(const char* kernel, unsigned grid_x, unsigned grid_y, unsigned threads,
                                 void** p) {
  const std::string name(kernel);
  std::function<void()> body;
  if (name == "maskrt_multilevel_roi_align_f32") {
    body = [p] {
      maskrt_multilevel_roi_align_f32(arg<const float*>(p, 0), arg<FeatureLevels>(p, 1), arg<float*>(p, 2),
                                      arg<int>(p, 3), arg<int>(p, 4), arg<int>(p, 5), arg<int>(p, 6), arg<int>(p, 7),
                                      arg<float>(p, 8), arg<int>(p, 9), arg<int>(p, 10), arg<int>(p, 11),
                                      arg<float>(p, 12));
    };
  } else if (name == "maskrt_multilevel_roi_align_f16") {
    body = [p] {
      maskrt_multilevel_roi_align_f16(arg<const float*>(p, 0), arg<FeatureLevels>(p, 1), arg<maskrt_half*>(p, 2),
                                      arg<int>(p, 3), arg<int>(p, 4), arg<int>(p, 5), arg<int>(p, 6), arg<int>(p, 7),
                                      arg<float>(p, 8), arg<int>(p, 9), arg<int>(p, 10), arg<int>(p, 11),
                                      arg<float>(p, 12));
    };
  } else if (name == "maskrt_batched_nms_segments") {
    body = [p] {
      maskrt_batched_nms_segments(arg<const float*>(p, 0), arg<const float*>(p, 1), arg<int>(p, 2), arg<int>(p, 3),
                                  arg<int>(p, 4), arg<int>(p, 5), arg<int>(p, 6), arg<float>(p, 7), arg<float>(p, 8),
                                  arg<int>(p, 9), arg<unsigned long long*>(p, 10), arg<unsigned long long*>(p, 11),
                                  arg<int*>(p, 12));
    };
  } else if (name == "maskrt_batched_nms_merge") {
    body = [p] {
      maskrt_batched_nms_merge(arg<const float*>(p, 0), arg<const float*>(p, 1), arg<int>(p, 2), arg<int>(p, 3),
                               arg<int>(p, 4), arg<int>(p, 5), arg<int>(p, 6), arg<const unsigned long long*>(p, 7),
                               arg<const int*>(p, 8), arg<int*>(p, 9), arg<float*>(p, 10), arg<float*>(p, 11),
                               arg<int*>(p, 12), arg<int*>(p, 13));
    };
  } else if (name == "maskrt_paste_masks") {
    body = [p] {
      maskrt_paste_masks(arg<const float*>(p, 0), arg<const int*>(p, 1), arg<const float*>(p, 2), arg<int>(p, 3),
                         arg<float>(p, 4), arg<int>(p, 5), arg<int>(p, 6), arg<float>(p, 7), arg<unsigned char*>(p, 8));
    };
  } else {
    return 1;
  }
  run_grid(grid_x, grid_y, threads, body);
  return 0;
}
