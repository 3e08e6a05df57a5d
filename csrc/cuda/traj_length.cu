// Trajectory length of the rows of a contiguous (B, D) array on the GPU: fused forward and
// backward (twin of csrc/cpu/traj_length.cpp; launched from fastexpr/autograd.py through
// fastexpr/backends/cuda_compile.py). Self-contained: NVRTC cannot include host headers.
//
// Segment i runs from row i to row next(i) = i+1 (0 for the closing segment i = B-1 of a
// closed path); S = B-1 segments (B when closed). Memory traffic is the floor: the forward
// reads h once, the backward reads h once and writes the gradient once.
//
// Forward, two launches:
//   traj_length_partial_*  grid (ceil(S/TL_ROWS), GY): block (x, y) takes TL_ROWS consecutive
//       segments and the column chunks y, y+GY, ...; it slides down the rows holding the previous
//       row in registers and writes the float64 squared distance of each segment over its columns
//       to part[y * S + i].
//   traj_length_finalize_* grid (NB): norms[i] = sqrt(sum_y part[y * S + i]); each block sums its
//       norms, and the last block to finish adds the block sums in a fixed order into out[0]
//       (deterministic; `counter` must be zero on entry and is left zero).
// Backward, one launch:
//   traj_length_backward_* grid (ceil(B/TL_ROWS), GY): grad_j = g (h_j - h_prev) / n_prev
//       - g (h_next - h_j) / n_j in float64, a zero-length segment contributing zero, g read
//       from device memory (no host synchronisation).

#define TL_THREADS 256                      // threads per block
#define TL_COLS 4                           // columns per thread and chunk
#define TL_CHUNK (TL_THREADS * TL_COLS)     // columns per chunk
#define TL_ROWS 16                          // segments (forward) or rows (backward) per block
#define TL_WARPS (TL_THREADS / 32)

typedef long long i64;

__device__ __forceinline__ i64 tl_min(i64 a, i64 b) { return a < b ? a : b; }

__device__ __forceinline__ double tl_warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. `scratch` holds TL_WARPS doubles.
__device__ double tl_block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = tl_warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < TL_WARPS ? scratch[threadIdx.x] : 0.0;
  if (warp == 0) v = tl_warp_sum(v);
  return v;
}

template <typename T>
__device__ void tl_partial(const T* __restrict__ h, i64 b, i64 d, int closed, double* __restrict__ part) {
  __shared__ double sums[TL_ROWS][TL_WARPS];
  const i64 s = closed ? b : b - 1;
  const i64 s0 = (i64)blockIdx.x * TL_ROWS;
  const int nrows = (int)tl_min(TL_ROWS, s - s0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
    for (int r = 0; r < TL_ROWS; ++r) sums[r][warp] = 0.0;
  for (i64 chunk = blockIdx.y; chunk * TL_CHUNK < d; chunk += gridDim.y) {
    const i64 c0 = chunk * TL_CHUNK + threadIdx.x;
    double cur[TL_COLS];
#pragma unroll
    for (int k = 0; k < TL_COLS; ++k) {
      const i64 col = c0 + k * TL_THREADS;
      cur[k] = col < d ? (double)h[s0 * d + col] : 0.0;
    }
#pragma unroll 4
    for (int r = 0; r < nrows; ++r) {
      const i64 i = s0 + r;
      const i64 next = i + 1 < b ? i + 1 : 0;
      double acc = 0.0;
#pragma unroll
      for (int k = 0; k < TL_COLS; ++k) {
        const i64 col = c0 + k * TL_THREADS;
        const double x = col < d ? (double)h[next * d + col] : 0.0;
        const double diff = x - cur[k];
        acc += diff * diff;
        cur[k] = x;
      }
      acc = tl_warp_sum(acc);
      if (lane == 0) sums[r][warp] += acc;
    }
  }
  __syncthreads();
  if (threadIdx.x < nrows) {
    double t = 0.0;
#pragma unroll
    for (int w = 0; w < TL_WARPS; ++w) t += sums[threadIdx.x][w];
    part[(i64)blockIdx.y * s + s0 + threadIdx.x] = t;
  }
}

template <typename T>
__device__ void tl_finalize(const double* __restrict__ part, i64 gy, i64 s, double* __restrict__ norms,
                            double* __restrict__ block_sums, unsigned int* counter, T* __restrict__ out) {
  __shared__ double scratch[TL_WARPS];
  __shared__ bool last;
  double local = 0.0;
  for (i64 i = (i64)blockIdx.x * TL_THREADS + threadIdx.x; i < s; i += (i64)gridDim.x * TL_THREADS) {
    double sq = 0.0;
    for (i64 y = 0; y < gy; ++y) sq += part[y * s + i];
    const double n = sqrt(sq);
    norms[i] = n;
    local += n;
  }
  local = tl_block_sum(local, scratch);
  if (threadIdx.x == 0) {
    block_sums[blockIdx.x] = local;
    __threadfence();
    last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  double total = 0.0;
  for (int k = threadIdx.x; k < (int)gridDim.x; k += TL_THREADS) total += __ldcg(block_sums + k);
  total = tl_block_sum(total, scratch);
  if (threadIdx.x == 0) {
    out[0] = (T)total;
    *counter = 0u;
  }
}

// Zero-length segments contribute a zero subgradient.
__device__ __forceinline__ double tl_coefficient(double g, double n) { return n > 0.0 ? g / n : 0.0; }

template <typename T>
__device__ void tl_backward(const T* __restrict__ h, const double* __restrict__ norms, const T* __restrict__ grad_out,
                            i64 b, i64 d, int closed, T* __restrict__ grad) {
  __shared__ double cp[TL_ROWS], cn[TL_ROWS];
  const i64 s = closed ? b : b - 1;
  const i64 j0 = (i64)blockIdx.x * TL_ROWS;
  const int nrows = (int)tl_min(TL_ROWS, b - j0);
  if (threadIdx.x < nrows) {
    // Segment j - 1 (or B - 1, closing, for j = 0) comes in, segment j goes out.
    const double g = (double)grad_out[0];
    const i64 j = j0 + threadIdx.x;
    cp[threadIdx.x] = (j > 0 || closed) ? tl_coefficient(g, norms[j > 0 ? j - 1 : b - 1]) : 0.0;
    cn[threadIdx.x] = j < s ? tl_coefficient(g, norms[j]) : 0.0;
  }
  __syncthreads();
  // A missing neighbour (open path ends) is row j itself, with a zero coefficient.
  const i64 p0 = j0 > 0 ? j0 - 1 : (closed ? b - 1 : 0);
  for (i64 chunk = blockIdx.y; chunk * TL_CHUNK < d; chunk += gridDim.y) {
    const i64 c0 = chunk * TL_CHUNK + threadIdx.x;
    double xp[TL_COLS], x[TL_COLS];
#pragma unroll
    for (int k = 0; k < TL_COLS; ++k) {
      const i64 col = c0 + k * TL_THREADS;
      xp[k] = col < d ? (double)h[p0 * d + col] : 0.0;
      x[k] = col < d ? (double)h[j0 * d + col] : 0.0;
    }
#pragma unroll 4
    for (int r = 0; r < nrows; ++r) {
      const i64 j = j0 + r;
      const i64 next = j + 1 < b ? j + 1 : (closed ? 0 : j);
      const double a = cp[r], c = cn[r];
#pragma unroll
      for (int k = 0; k < TL_COLS; ++k) {
        const i64 col = c0 + k * TL_THREADS;
        if (col < d) {
          const double xn = (double)h[next * d + col];
          grad[j * d + col] = (T)(a * (x[k] - xp[k]) - c * (xn - x[k]));
          xp[k] = x[k];
          x[k] = xn;
        }
      }
    }
  }
}

#define TL_KERNELS(T, SUFFIX)                                                                                  \
  extern "C" __global__ void __launch_bounds__(TL_THREADS)                                                     \
      traj_length_partial_##SUFFIX(const T* h, i64 b, i64 d, int closed, double* part) {                        \
    tl_partial<T>(h, b, d, closed, part);                                                                      \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(TL_THREADS)                                                     \
      traj_length_finalize_##SUFFIX(const double* part, i64 gy, i64 s, double* norms, double* block_sums,       \
                                    unsigned int* counter, T* out) {                                           \
    tl_finalize<T>(part, gy, s, norms, block_sums, counter, out);                                              \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(TL_THREADS)                                                     \
      traj_length_backward_##SUFFIX(const T* h, const double* norms, const T* grad_out, i64 b, i64 d,           \
                                    int closed, T* grad) {                                                     \
    tl_backward<T>(h, norms, grad_out, b, d, closed, grad);                                                    \
  }

TL_KERNELS(float, f32)
TL_KERNELS(double, f64)
