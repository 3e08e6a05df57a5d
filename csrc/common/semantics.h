// fastexpr semantics shared by the C++ (csrc/cpu) and CUDA (csrc/cuda) kernels.
// Twin of fastexpr/plan.py: region codes, trajectory coefficients, pattern-hash keys.
// Self-contained on purpose: NVRTC cannot include host headers.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FX_HD __host__ __device__ __forceinline__
#else
#define FX_HD inline
#endif

namespace fx {

typedef unsigned long long u64;

enum Activation { IDENTITY = 0, RELU = 1, HARDTANH = 2 };
enum Kind { LINE = 0, ARC = 1, CIRCLE = 2, POLYLINE = 3 };

// Region code of a neuron: ties stay in the lower (relu) or inner (hardtanh) region.
template <typename T>
FX_HD int region_code(int act, T z) {
  if (act == RELU) return z > T(0) ? 1 : 0;
  if (act == HARDTANH) return z < T(-1) ? -1 : (z > T(1) ? 1 : 0);
  return 0;
}

template <typename T>
FX_HD T activate(int act, T z) {
  if (act == RELU) return z > T(0) ? z : T(0);
  if (act == HARDTANH) return z < T(-1) ? T(-1) : (z > T(1) ? T(1) : z);
  return z;
}

FX_HD u64 splitmix64(u64 x) {
  u64 z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Key added (mod 2^64) into a point's pattern hash when neuron j of layer d (1-based)
// has non-zero code. Code 0 contributes nothing.
FX_HD u64 pattern_key(u64 layer, u64 neuron, int code) {
  return splitmix64((layer << 33) ^ (neuron << 1) ^ (code > 0 ? 1ULL : 0ULL));
}

// Sample i of N (N >= 2), in float64.
FX_HD double sample_t(long long i, long long n) { return (double)i / (double)(n - 1); }

// Coefficients of the two-vector kinds (LINE, ARC, CIRCLE) at t.
FX_HD void two_vector_coeffs(int kind, double t, double* c0, double* c1) {
  const double pi = 3.14159265358979323846;
  if (kind == LINE) {
    *c0 = 1.0 - t;
    *c1 = t;
  } else if (kind == ARC) {
    *c0 = cos(0.5 * pi * t);
    *c1 = sin(0.5 * pi * t);
  } else {
    *c0 = cos(2.0 * pi * t);
    *c1 = sin(2.0 * pi * t);
  }
}

// POLYLINE over K vertices: segment index j in [0, K-2] and fraction f in [0, 1] at t.
FX_HD void polyline_segment(double t, long long k, long long* j, double* f) {
  double s = t * (double)(k - 1);
  long long seg = (long long)floor(s);
  if (seg > k - 2) seg = k - 2;
  if (seg < 0) seg = 0;
  *j = seg;
  *f = s - (double)seg;
}

}  // namespace fx
