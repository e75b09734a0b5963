// Mask pasting on the GPU: torchvision's paste_masks_in_image (roi_heads.py) followed by > threshold, for the
// detections of one image, straight from the engine's masks output.
//
// torchvision pads each M x M mask by one zero pixel, widens its box by (M + 2) / M about the centre, truncates the
// box to integers, resizes the padded mask to the box's (w, h) = (x2 - x1 + 1, y2 - y1 + 1) with bilinear
// interpolation (align_corners=False, no antialiasing) and writes it into the image where the box overlaps it. Here
// each thread computes one output pixel: the same float32 operations, in the same order, for that pixel alone.
#include "common.cuh"

#define PASTE_THREADS 256

// masks: [K, M, M] sigmoid probabilities; rows: [N] which of the K to paste; boxes: [N, 4] x1, y1, x2, y2 in the
// output image's pixels; out: [N, height, width] 0 or 1. grid = (ceil(height * width / PASTE_THREADS), N).
extern "C" __global__ void __launch_bounds__(PASTE_THREADS)
maskrt_paste_masks(const float* __restrict__ masks, const int* __restrict__ rows, const float* __restrict__ boxes,
                   int mask_size, float expand, int height, int width, float threshold,
                   unsigned char* __restrict__ out) {
  const int n = blockIdx.y;
  const long long pixel = (long long)blockIdx.x * PASTE_THREADS + threadIdx.x;
  if (pixel >= (long long)height * width) return;
  const int y = (int)(pixel / width);
  const int x = (int)(pixel % width);

  // expand_boxes: half sizes and centres in float32, each product rounded on its own as PyTorch's ops round it.
  const float* box = boxes + 4 * n;
  const float w_half = __fmul_rn(__fmul_rn(box[2] - box[0], 0.5f), expand);
  const float h_half = __fmul_rn(__fmul_rn(box[3] - box[1], 0.5f), expand);
  const float x_c = __fmul_rn(box[2] + box[0], 0.5f);
  const float y_c = __fmul_rn(box[3] + box[1], 0.5f);
  // .to(torch.int64) truncates toward zero.
  const int x1 = (int)(x_c - w_half), x2 = (int)(x_c + w_half);
  const int y1 = (int)(y_c - h_half), y2 = (int)(y_c + h_half);

  unsigned char inside = 0;
  if (x >= max(x1, 0) && x < min(x2 + 1, width) && y >= max(y1, 0) && y < min(y2 + 1, height)) {
    const int box_w = max(x2 - x1 + 1, 1), box_h = max(y2 - y1 + 1, 1);
    const int padded = mask_size + 2;
    // upsample_bilinear2d: source = max(scale * (dst + 0.5) - 0.5, 0) with scale = in / out, in float32.
    const float scale_x = (float)padded / (float)box_w, scale_y = (float)padded / (float)box_h;
    const float src_x = fmaxf(scale_x * ((float)(x - x1) + 0.5f) - 0.5f, 0.0f);
    const float src_y = fmaxf(scale_y * ((float)(y - y1) + 0.5f) - 0.5f, 0.0f);
    const int x0i = (int)src_x, y0i = (int)src_y;
    const int x1i = x0i + (x0i < padded - 1 ? 1 : 0), y1i = y0i + (y0i < padded - 1 ? 1 : 0);
    const float lx1 = src_x - (float)x0i, ly1 = src_y - (float)y0i;
    const float lx0 = 1.0f - lx1, ly0 = 1.0f - ly1;
    // The padded mask: the one-pixel border is zero.
    const float* mask = masks + (long long)rows[n] * mask_size * mask_size;
#define MASKRT_PADDED(r, c) \
  (((r) >= 1 && (r) <= mask_size && (c) >= 1 && (c) <= mask_size) ? mask[((r) - 1) * mask_size + (c) - 1] : 0.0f)
    const float value = ly0 * (lx0 * MASKRT_PADDED(y0i, x0i) + lx1 * MASKRT_PADDED(y0i, x1i)) +
                        ly1 * (lx0 * MASKRT_PADDED(y1i, x0i) + lx1 * MASKRT_PADDED(y1i, x1i));
#undef MASKRT_PADDED
    inside = value > threshold ? 1 : 0;
  }
  out[(long long)n * height * width + pixel] = inside;
}
