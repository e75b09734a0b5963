// MultilevelRoIAlign: torchvision's MultiScaleRoIAlign in one launch.
//
// Each RoI picks its FPN level with torchvision's LevelMapper (FPN paper, eq. 1) and is pooled with roi_align on that
// level. The arithmetic follows torchvision's CUDA kernels operation by operation (float32 throughout), so that the
// outputs agree to rounding; FP16 features are read and written as FP16 and accumulated in FP32.
//
// Launch: grid (batch * num_rois, chunks), block ROI_ALIGN_THREADS; block x pools one RoI, its threads and the y
// blocks share the RoI's channels * output_size^2 outputs.
#include "common.cuh"

#define MASKRT_MAX_LEVELS 17  // levels 0..16, the range the plugin contract allows

// The feature maps of levels min_level.. in order, passed by value (one kernel argument for any level count).
struct FeatureLevels {
  const void* data[MASKRT_MAX_LEVELS];
  int height[MASKRT_MAX_LEVELS];
  int width[MASKRT_MAX_LEVELS];
};

namespace maskrt_roi_align {

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const maskrt_half* p) { return half_to_float(*p); }
__device__ __forceinline__ void store(float* p, float value) { *p = value; }
__device__ __forceinline__ void store(maskrt_half* p, float value) { *p = float_to_half(value); }

// torchvision's bilinear_interpolate: zero outside [-1, size] (NaN included), clamped to the last row/column.
template <typename T>
__device__ float bilinear(const T* plane, int height, int width, float y, float x) {
  if (!(y >= -1.0f && y <= height && x >= -1.0f && x <= width)) return 0.0f;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int y_low = (int)y;
  int x_low = (int)x;
  int y_high;
  int x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = (float)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = (float)x_low;
  } else {
    x_high = x_low + 1;
  }
  const float ly = y - y_low;
  const float lx = x - x_low;
  const float hy = 1.0f - ly;
  const float hx = 1.0f - lx;
  const float v1 = load(plane + y_low * width + x_low);
  const float v2 = load(plane + y_low * width + x_high);
  const float v3 = load(plane + y_high * width + x_low);
  const float v4 = load(plane + y_high * width + x_high);
  const float w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;
  return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

// Adaptive sampling (sampling_ratio 0) takes torchvision's ceil(roi size / output size) samples per bin along an
// axis, that is ceil(bin size): unbounded. TensorRT times the plugin on uninitialised RoIs, where a bin can be 1e30
// pixels: (int) of its ceil saturates to 2^31 - 1 on the GPU and the kernel would never finish. So the grid is taken
// up to 2^30 per axis (past 46341 torchvision's int count of samples overflows already), none for a bin that is not
// positive and finite (where torchvision pools nothing either), and a bin with more samples than the map has pixels
// visits only those that can land on the map (visible_samples): the others add exactly 0 to its sum. The result is
// torchvision's wherever torchvision's is defined, at a cost bounded by the map's size.
__device__ __forceinline__ int adaptive_grid(float bin_size) {
  if (!(bin_size > 0.0f && bin_size <= 3.402823466e38f)) return 0;  // NaN, negative, zero or infinite
  return (int)ceilf(fminf(bin_size, 1073741824.0f));
}

// Where sample i of bin p lies along an axis: torchvision's expression, in its order.
__device__ __forceinline__ float sample_position(float start, int p, float bin_size, int i, int grid) {
  return start + p * bin_size + (float)(i + .5f) * bin_size / (float)grid;
}

// The samples [first, last) of bin p that bilinear can read (position in [-1, extent]). Positions grow with i for a
// positive bin, so the visible ones are one run, found by bisection on the same expression; a grid no larger than
// the map is visited whole, as torchvision visits it.
__device__ __forceinline__ void visible_samples(float start, int p, float bin_size, int grid, int extent, int* first,
                                                int* last) {
  *first = 0;
  *last = grid;
  if (grid <= extent + 2 || !(bin_size > 0.0f)) return;
  int low = 0, high = grid;
  while (low < high) {  // the first sample at or past -1
    const int middle = low + (high - low) / 2;
    if (sample_position(start, p, bin_size, middle, grid) >= -1.0f) {
      high = middle;
    } else {
      low = middle + 1;
    }
  }
  *first = low;
  high = grid;
  while (low < high) {  // the first sample past the extent
    const int middle = low + (high - low) / 2;
    if (sample_position(start, p, bin_size, middle, grid) > (float)extent) {
      high = middle;
    } else {
      low = middle + 1;
    }
  }
  *last = low;
}

template <typename T>
__device__ void multilevel_roi_align(const float* rois, const FeatureLevels& levels, T* output, int num_rois,
                                     int channels, int output_size, int sampling_ratio, int aligned,
                                     float canonical_scale, int canonical_level, int min_level, int num_levels,
                                     float eps) {
  const int roi = blockIdx.x;  // b * num_rois + r
  const int b = roi / num_rois;
  const int outputs_per_roi = channels * output_size * output_size;
  T* roi_output = output + (size_t)roi * outputs_per_roi;
  const int first = blockIdx.y * blockDim.x + threadIdx.x;
  const int stride = gridDim.y * blockDim.x;

  const float x1 = rois[(size_t)roi * 4 + 0];
  const float y1 = rois[(size_t)roi * 4 + 1];
  const float x2 = rois[(size_t)roi * 4 + 2];
  const float y2 = rois[(size_t)roi * 4 + 3];

  // LevelMapper in torchvision's float32 order. A RoI with negative area gets a NaN level, which matches no level
  // in torchvision, so its output stays zero. With a single level torchvision maps nothing and pools every RoI.
  int level = 0;
  if (num_levels > 1) {
    const float area = (x2 - x1) * (y2 - y1);
    const float target = floorf((float)canonical_level + log2f(sqrtf(area) / canonical_scale) + eps);
    if (target != target) {
      for (int e = first; e < outputs_per_roi; e += stride) store(roi_output + e, 0.0f);
      return;
    }
    level = (int)fminf(fmaxf(target, (float)min_level), (float)(min_level + num_levels - 1)) - min_level;
  }
  const T* features = (const T*)levels.data[level];
  const int height = levels.height[level];
  const int width = levels.width[level];
  const float spatial_scale = ldexpf(1.0f, -(min_level + level));  // exactly 2^-level, as torchvision infers it

  // roi_align: no rounding of the RoI; legacy (aligned = 0) RoIs are at least 1x1.
  const float offset = aligned ? 0.5f : 0.0f;
  const float roi_start_w = x1 * spatial_scale - offset;
  const float roi_start_h = y1 * spatial_scale - offset;
  const float roi_end_w = x2 * spatial_scale - offset;
  const float roi_end_h = y2 * spatial_scale - offset;
  float roi_width = roi_end_w - roi_start_w;
  float roi_height = roi_end_h - roi_start_h;
  if (!aligned) {
    roi_width = fmaxf(roi_width, 1.0f);
    roi_height = fmaxf(roi_height, 1.0f);
  }
  const float bin_size_h = roi_height / (float)output_size;
  const float bin_size_w = roi_width / (float)output_size;
  const int grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(bin_size_h);
  const int grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(bin_size_w);
  // torchvision's max(grid_h * grid_w, 1) as a float, without the int overflow of a 2^30 grid.
  const float count = fmaxf((float)grid_h * (float)grid_w, 1.0f);

  const size_t plane_size = (size_t)height * width;
  const T* image_features = features + (size_t)b * channels * plane_size;
  for (int e = first; e < outputs_per_roi; e += stride) {
    const int pw = e % output_size;
    const int ph = (e / output_size) % output_size;
    const int c = e / (output_size * output_size);
    const T* plane = image_features + c * plane_size;
    int first_y, last_y, first_x, last_x;
    visible_samples(roi_start_h, ph, bin_size_h, grid_h, height, &first_y, &last_y);
    visible_samples(roi_start_w, pw, bin_size_w, grid_w, width, &first_x, &last_x);
    float sum = 0.0f;
    for (int iy = first_y; iy < last_y; iy++) {
      const float y = sample_position(roi_start_h, ph, bin_size_h, iy, grid_h);
      for (int ix = first_x; ix < last_x; ix++) {
        const float x = sample_position(roi_start_w, pw, bin_size_w, ix, grid_w);
        sum += bilinear(plane, height, width, y, x);
      }
    }
    store(roi_output + e, sum / count);
  }
}

}  // namespace maskrt_roi_align

extern "C" __global__ void maskrt_multilevel_roi_align_f32(const float* rois, FeatureLevels levels, float* output,
                                                            int num_rois, int channels, int output_size,
                                                            int sampling_ratio, int aligned, float canonical_scale,
                                                            int canonical_level, int min_level, int num_levels,
                                                            float eps) {
  maskrt_roi_align::multilevel_roi_align<float>(rois, levels, output, num_rois, channels, output_size,
                                                sampling_ratio, aligned, canonical_scale, canonical_level, min_level,
                                                num_levels, eps);
}

extern "C" __global__ void maskrt_multilevel_roi_align_f16(const float* rois, FeatureLevels levels,
                                                            maskrt_half* output, int num_rois, int channels,
                                                            int output_size, int sampling_ratio, int aligned,
                                                            float canonical_scale, int canonical_level,
                                                            int min_level, int num_levels, float eps) {
  maskrt_roi_align::multilevel_roi_align<maskrt_half>(rois, levels, output, num_rois, channels, output_size,
                                                      sampling_ratio, aligned, canonical_scale, canonical_level,
                                                      min_level, num_levels, eps);
}
