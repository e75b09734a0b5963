// BatchedNMS: torchvision's batched_nms per image (independent NMS per class, kept boxes in descending score),
// then the K best kept boxes over all classes, padded with zero rows.
//
// Two launches, no host round trip:
//   maskrt_batched_nms_segments  grid (segments, batch), NMS_THREADS threads. A segment is one class of one image
//       (the whole image with class_agnostic). The block gathers the segment's candidates, sorts them, and runs
//       greedy NMS over them in tiles of NMS_TILE: each tile is checked against the boxes kept so far, then resolved
//       in score order with a bitmask of the suppressions inside the tile. It stops once K boxes are kept, since no
//       later box of the segment can reach the top K. Memory is linear in the candidates (no N x N mask).
//   maskrt_batched_nms_merge  grid (segments, batch), MERGE_THREADS threads. Every kept box finds its rank among
//       all classes by binary search in the other segments' sorted kept lists, and the top K are written there.
//
// Order: a 64-bit key sorts ascending as descending score, then ascending candidate index n * C + c (torchvision's
// stable sort on the flattened candidates). Keys are unique per image, so every order here is total.
#include "common.cuh"

#define NMS_THREADS 512
#define NMS_TILE 64         // one bit per tile candidate in a 64-bit mask word
#define NMS_SORT_SMEM 4096  // segments up to this size sort in shared memory, larger ones in the workspace
#define MERGE_THREADS 256

namespace maskrt_nms {

struct Box {
  float x1, y1, x2, y2;
};

__device__ __forceinline__ unsigned long long order_key(float score, unsigned int index) {
  if (score == 0.0f) score = 0.0f;  // -0 and +0 tie, as they do in a float sort
  const unsigned int bits = __float_as_uint(score);
  const unsigned int ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ((unsigned long long)(~ascending) << 32) | index;
}

__device__ __forceinline__ unsigned int key_index(unsigned long long key) { return (unsigned int)key; }

// Boxes are [B,N,4] (one box per row, shared by the classes) or [B,N,C,4] (one per class).
__device__ __forceinline__ Box load_box(const float* boxes, int boxes_per_class, int b, int num_boxes,
                                        int num_classes, unsigned int index) {
  const size_t n = index / num_classes;
  const size_t row = (size_t)b * num_boxes + n;
  const float* p = boxes + 4 * (boxes_per_class ? row * num_classes + index % num_classes : row);
  Box box;
  box.x1 = p[0];
  box.y1 = p[1];
  box.x2 = p[2];
  box.y2 = p[3];
  return box;
}

// torchvision's IoU test; the products are rounded on their own (no FMA) as on the CPU, so results agree on it.
__device__ __forceinline__ bool suppresses(const Box& a, const Box& b, float iou_threshold) {
  const float left = fmaxf(a.x1, b.x1), right = fminf(a.x2, b.x2);
  const float top = fmaxf(a.y1, b.y1), bottom = fminf(a.y2, b.y2);
  const float width = fmaxf(right - left, 0.0f), height = fmaxf(bottom - top, 0.0f);
  const float inter = __fmul_rn(width, height);
  const float area_a = __fmul_rn(a.x2 - a.x1, a.y2 - a.y1);
  const float area_b = __fmul_rn(b.x2 - b.x1, b.y2 - b.y1);
  return inter / (area_a + area_b - inter) > iou_threshold;
}

// Bitonic sort in ascending order by one block, for any n: every comparator puts its minimum at the lower index, so
// the positions from n up to the next power of two act as +infinity that never move, and their comparators are
// skipped. Works on shared or global memory; ends with the block synchronised.
__device__ void block_sort(unsigned long long* keys, int n) {
  int padded = 1;
  while (padded < n) padded <<= 1;
  for (int k = 2; k <= padded; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int q = threadIdx.x; q < padded / 2; q += blockDim.x) {
        const int lo = (q / j) * 2 * j + q % j;
        const int hi = j == (k >> 1) ? (lo ^ (k - 1)) : lo + j;
        if (hi < n) {
          const unsigned long long a = keys[lo], c = keys[hi];
          if (a > c) {
            keys[lo] = c;
            keys[hi] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Number of keys in sorted[0, count) below key.
__device__ __forceinline__ int lower_bound(const unsigned long long* sorted, int count, unsigned long long key) {
  int low = 0, high = count;
  while (low < high) {
    const int middle = (low + high) >> 1;
    if (sorted[middle] < key) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

}  // namespace maskrt_nms

// Workspace: candidates [B * N * C] keys (a class segment holds N of them, the agnostic one N * C), kept [B, S, K]
// keys, kept_count [B, S].
extern "C" __global__ void __launch_bounds__(NMS_THREADS) maskrt_batched_nms_segments(
    const float* boxes, const float* scores, int boxes_per_class, int num_boxes, int num_classes,
    int class_agnostic, int background_class, float score_threshold, float iou_threshold, int max_output,
    unsigned long long* candidates, unsigned long long* kept, int* kept_count) {
  using namespace maskrt_nms;
  __shared__ unsigned long long sort_keys[NMS_SORT_SMEM];
  __shared__ Box tile_boxes[NMS_TILE];
  __shared__ unsigned long long tile_mask[NMS_TILE];  // row t: the later tile candidates that t suppresses
  __shared__ volatile int tile_suppressed[NMS_TILE];  // suppressed by a box kept in an earlier tile
  __shared__ Box kept_boxes[NMS_THREADS];
  __shared__ int count;
  __shared__ int kept_total;

  const int num_segments = class_agnostic ? 1 : num_classes;
  const int segment = blockIdx.x;
  const int b = blockIdx.y;
  if (segment >= num_segments) return;
  const int slot = b * num_segments + segment;
  const size_t capacity = class_agnostic ? (size_t)num_boxes * num_classes : (size_t)num_boxes;
  unsigned long long* segment_candidates = candidates + (size_t)slot * capacity;
  unsigned long long* segment_kept = kept + (size_t)slot * max_output;
  const int tid = threadIdx.x;

  // Candidates in any order (the sort makes the result deterministic).
  if (tid == 0) count = 0;
  __syncthreads();
  if (class_agnostic || segment != background_class) {
    const float* image_scores = scores + (size_t)b * num_boxes * num_classes;
    for (size_t e = tid; e < capacity; e += blockDim.x) {
      const size_t index = class_agnostic ? e : e * num_classes + segment;  // n * C + c
      const float score = image_scores[index];
      if ((int)(index % num_classes) != background_class && score > score_threshold) {
        segment_candidates[atomicAdd(&count, 1)] = order_key(score, (unsigned int)index);
      }
    }
  }
  __syncthreads();
  const int n = count;
  unsigned long long* keys = segment_candidates;
  if (n <= NMS_SORT_SMEM) {
    for (int i = tid; i < n; i += blockDim.x) sort_keys[i] = segment_candidates[i];
    keys = sort_keys;
    __syncthreads();
  }
  block_sort(keys, n);

  if (tid == 0) kept_total = 0;
  __syncthreads();
  for (int base = 0; base < n; base += NMS_TILE) {
    const int kept_before = kept_total;
    if (kept_before >= max_output) break;
    const int size = min(NMS_TILE, n - base);
    if (tid < NMS_TILE) {
      tile_mask[tid] = 0;
      tile_suppressed[tid] = 0;
      if (tid < size) {
        tile_boxes[tid] = load_box(boxes, boxes_per_class, b, num_boxes, num_classes, key_index(keys[base + tid]));
      }
    }
    __syncthreads();

    // Against the boxes kept so far, a chunk of them at a time: thread (group, t) tests tile candidate t against
    // every (NMS_THREADS / NMS_TILE)-th kept box of the chunk.
    const int t = tid % NMS_TILE;
    const int group = tid / NMS_TILE;
    const int groups = NMS_THREADS / NMS_TILE;
    for (int chunk = 0; chunk < kept_before; chunk += NMS_THREADS) {
      const int chunk_size = min(NMS_THREADS, kept_before - chunk);
      if (tid < chunk_size) {
        kept_boxes[tid] =
            load_box(boxes, boxes_per_class, b, num_boxes, num_classes, key_index(segment_kept[chunk + tid]));
      }
      __syncthreads();
      if (t < size) {
        for (int j = group; j < chunk_size && !tile_suppressed[t]; j += groups) {
          if (suppresses(kept_boxes[j], tile_boxes[t], iou_threshold)) tile_suppressed[t] = 1;
        }
      }
      __syncthreads();
    }

    // Inside the tile: bit u of row t when t would suppress the later candidate u; the groups split the columns.
    if (t < size) {
      const int columns = NMS_TILE / groups;
      unsigned long long bits = 0;
      for (int u = max(group * columns, t + 1); u < min((group + 1) * columns, size); u++) {
        if (suppresses(tile_boxes[t], tile_boxes[u], iou_threshold)) bits |= 1ull << u;
      }
      if (bits) atomicOr(&tile_mask[t], bits);
    }
    __syncthreads();

    // Greedy NMS over the tile in score order: keep the first pending candidate, drop what it suppresses.
    if (tid == 0) {
      unsigned long long pending = 0;
      for (int u = 0; u < size; u++) {
        if (!tile_suppressed[u]) pending |= 1ull << u;
      }
      int total = kept_before;
      while (pending != 0 && total < max_output) {
        const int u = __ffsll((long long)pending) - 1;
        segment_kept[total++] = keys[base + u];
        pending &= ~(tile_mask[u] | (1ull << u));
      }
      kept_total = total;
    }
    __syncthreads();
  }
  if (tid == 0) kept_count[slot] = kept_total;
}

// Outputs: num [B,1], boxes [B,K,4], scores [B,K], classes [B,K], indices [B,K] (the row n of the box).
extern "C" __global__ void __launch_bounds__(MERGE_THREADS) maskrt_batched_nms_merge(
    const float* boxes, const float* scores, int boxes_per_class, int num_boxes, int num_classes,
    int class_agnostic, int max_output, const unsigned long long* kept, const int* kept_count, int* out_num,
    float* out_boxes, float* out_scores, int* out_classes, int* out_indices) {
  using namespace maskrt_nms;
  const int num_segments = class_agnostic ? 1 : num_classes;
  const int segment = blockIdx.x;
  const int b = blockIdx.y;
  const int tid = threadIdx.x;
  const int* counts = kept_count + (size_t)b * num_segments;
  const unsigned long long* image_kept = kept + (size_t)b * num_segments * max_output;
  const size_t out_row = (size_t)b * max_output;

  // Block 0 of each image writes num and zeroes the rows past it.
  if (segment == 0) {
    __shared__ int num;
    if (tid == 0) {
      int total = 0;
      for (int s = 0; s < num_segments; s++) total += counts[s];
      num = min(total, max_output);
      out_num[b] = num;
    }
    __syncthreads();
    for (int row = num + tid; row < max_output; row += blockDim.x) {
      for (int i = 0; i < 4; i++) out_boxes[(out_row + row) * 4 + i] = 0.0f;
      out_scores[out_row + row] = 0.0f;
      out_classes[out_row + row] = 0;
      out_indices[out_row + row] = 0;
    }
  }
  if (segment >= num_segments) return;

  const unsigned long long* own = image_kept + (size_t)segment * max_output;
  const int own_count = counts[segment];
  for (int i = tid; i < own_count; i += blockDim.x) {
    const unsigned long long key = own[i];
    int rank = i;
    for (int s = 0; s < num_segments && rank < max_output; s++) {
      if (s != segment) rank += lower_bound(image_kept + (size_t)s * max_output, counts[s], key);
    }
    if (rank >= max_output) continue;
    const unsigned int index = key_index(key);
    const Box box = load_box(boxes, boxes_per_class, b, num_boxes, num_classes, index);
    const size_t row = out_row + rank;
    out_boxes[row * 4 + 0] = box.x1;
    out_boxes[row * 4 + 1] = box.y1;
    out_boxes[row * 4 + 2] = box.x2;
    out_boxes[row * 4 + 3] = box.y2;
    out_scores[row] = scores[(size_t)b * num_boxes * num_classes + index];
    out_classes[row] = (int)(index % num_classes);
    out_indices[row] = (int)(index / num_classes);
  }
}
