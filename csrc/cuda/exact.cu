// Exact walk on the GPU: the CUDA twin of csrc/cpu/exact.cpp, launched from
// fastexpr/backends/cuda_exact.py through fastexpr/backends/cuda_compile.py (NVRTC; the include
// path holds csrc/common, so the shared walker csrc/common/exact_walk.h is included as is).
//
// One thread walks one unit at a time (grid-stride loop over units q = t, t + T, ... with
// T = gridDim.x * blockDim.x threads). Thread t's walker scratch is its own slice of buffers
// preallocated by the host for T threads: Z and dZ (3 total doubles each), exit_u (total doubles),
// code, before, flips, dir (total bytes each), changed (max_width ints), layer_min (L doubles)
// and gram (GRAM (L + 1) doubles). Outputs are per unit, in the layout of exact.cpp's arrays.
//
// Piece hashes: unit q writes its hashes to hashes[q cap ..] and their number to hash_count[q];
// past `cap` it stops writing but keeps counting, so the host sees hash_count[q] > cap and walks
// that unit again with enough slots. No crossings are recorded on the GPU.
//
// The network: widths (L), acts (L), offset (L + 1: first neuron of each layer in the flat
// per-neuron arrays), W^T of layers 2..L concatenated in `wt` (layer d's block, (n_{d-1}, n_d)
// row-major, at wt_off[d]; wt_off[0] unused), the biases of layers 2..L in `bias` (at
// bias_off[d]) and the pattern keys of every neuron (key_pos, key_neg: total each). Each block
// builds the walker's per-layer pointer tables in dynamic shared memory (2 L pointers).

#include "exact_walk.h"

namespace fxe {

typedef unsigned long long u64;
typedef long long i64;

// Hashes into the unit's own slice of the hash buffer; counts past the capacity.
struct DeviceSink {
  static constexpr bool wants_crossings = false;
  u64* slot;
  i64 cap;
  i64 count;
  __device__ void hash(u64 h) {
    if (count < cap) slot[count] = h;
    ++count;
  }
  __device__ void crossing(double, int, int, int, int) {}
};

extern __shared__ const double* layer_ptr[];  // [0, L): W^T of layer d; [L, 2L): bias of layer d

#define FX_EXACT_PARAMS                                                                                     \
  int L, const int *widths, const int *acts, const long long *offset, const double *wt,                     \
      const long long *wt_off, const double *bias, const long long *bias_off, const unsigned long long *key_pos, \
      const unsigned long long *key_neg, long long n_units, int n1, const double *k0, const double *k1,       \
      const double *k2, const double *u0, const double *u1, const double *g_in, double tol, double *Z,        \
      double *dZ, double *exit_u, signed char *code, signed char *before, signed char *flips, signed char *dir, \
      int *changed, int max_width, double *layer_min, double *gram, long long *transitions,                   \
      long long *pattern_changes, long long *network_changes, long long *repairs, double *lengths,            \
      signed char *first_code, signed char *last_code, int *errors, unsigned long long *hashes, long long cap, \
      long long *hash_count

template <int KIND>
__device__ void walk_units(FX_EXACT_PARAMS) {
  for (int d = threadIdx.x; d < L; d += blockDim.x) {
    layer_ptr[d] = d > 0 ? wt + wt_off[d] : wt;
    layer_ptr[L + d] = d > 0 ? bias + bias_off[d] : bias;
  }
  __syncthreads();
  const i64 total = offset[L];
  const fx::ExactNet net{L, widths, acts, offset, layer_ptr, layer_ptr + L, key_pos, key_neg};
  const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  fx::ExactScratch s{Z + 3 * total * t,    dZ + 3 * total * t, exit_u + total * t,    code + total * t,
                     before + total * t,   flips + total * t,  dir + total * t,       changed + (i64)max_width * t,
                     layer_min + (i64)L * t, gram + fx::GRAM * (i64)(L + 1) * t};
  for (i64 q = t; q < n_units; q += (i64)gridDim.x * blockDim.x) {
    fx::ExactOut out{transitions + q * L, pattern_changes + q * L, 0, 0, lengths + q * (L + 1),
                     first_code + q * total, 0};
    DeviceSink sink{hashes + q * cap, cap, 0};
    fx::exact_walk<KIND>(net, s, k0 + q * n1, k1 + q * n1, KIND == fx::TRIG_UNIT ? k2 + q * n1 : nullptr,
                         g_in + 3 * q, u0[q], u1[q], tol, out, sink);
    network_changes[q] = out.network_changes;
    repairs[q] = out.repairs;
    errors[q] = out.error;
    hash_count[q] = sink.count;
    for (i64 i = 0; i < total; ++i) last_code[q * total + i] = s.code[i];
  }
}

}  // namespace fxe

#define FX_EXACT_ARGS                                                                                        \
  L, widths, acts, offset, wt, wt_off, bias, bias_off, key_pos, key_neg, n_units, n1, k0, k1, k2, u0, u1, g_in, \
      tol, Z, dZ, exit_u, code, before, flips, dir, changed, max_width, layer_min, gram, transitions,           \
      pattern_changes, network_changes, repairs, lengths, first_code, last_code, errors, hashes, cap, hash_count

// Launch with blockDim.x <= FX_EXACT_THREADS and 2 L pointers of dynamic shared memory.
#define FX_EXACT_THREADS 64

extern "C" __global__ void __launch_bounds__(FX_EXACT_THREADS) exact_walk_linear(FX_EXACT_PARAMS) {
  fxe::walk_units<fx::LINEAR_UNIT>(FX_EXACT_ARGS);
}

extern "C" __global__ void __launch_bounds__(FX_EXACT_THREADS) exact_walk_trig(FX_EXACT_PARAMS) {
  fxe::walk_units<fx::TRIG_UNIT>(FX_EXACT_ARGS);
}
