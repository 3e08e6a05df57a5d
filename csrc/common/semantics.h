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

// Coefficients of the two-vector kinds at t (LINE: over x0 and x1 - x0, see fastexpr/plan.py).
FX_HD void two_vector_coeffs(int kind, double t, double* c0, double* c1) {
  const double pi = 3.14159265358979323846;
  if (kind == LINE) {
    *c0 = 1.0;
    *c1 = t;
  } else if (kind == ARC) {
    *c0 = cos(0.5 * pi * t);
    *c1 = sin(0.5 * pi * t);
  } else {
    *c0 = cos(2.0 * pi * t);
    *c1 = sin(2.0 * pi * t);
  }
}

// POLYLINE over K vertices, sample i of N: s = i (K-1) / (N-1), segment j = floor(s) and
// fraction f = s - j, with j = K-2, f = 1 at the last sample. Exact integer arithmetic, so a
// sample that falls on a vertex has f = 0 exactly. q below is within 1 of floor(s) (K < 2^50),
// so the remainder i (K-1) - q (N-1) lies within N-1 of [0, N-1) and wrapping 64-bit
// arithmetic gives it exactly (N <= 2^62).
FX_HD void polyline_segment(long long i, long long n, long long k, long long* j, double* f) {
  const long long m = n - 1, a = k - 1;
  long long q = (long long)((double)i * (double)a / (double)m);
  long long r = (long long)((u64)i * (u64)a - (u64)q * (u64)m);
  while (r < 0) {
    r += m;
    --q;
  }
  while (r >= m) {
    r -= m;
    ++q;
  }
  if (q > k - 2) {
    *j = k - 2;
    *f = 1.0;
  } else {
    *j = q;
    *f = (double)r / (double)m;
  }
}

// Length of the input step of a two-vector trajectory from t0 to t1, in units of the plan's
// scale, with no difference of nearby values: LINE |t1 - t0| line_norm; ARC and CIRCLE the
// chord 2 |sin(D/2)| ||sin(a) u - cos(a) v|| between the angles a0 and a1 (D = a1 - a0, a their
// midpoint), u and v given by their coordinates in an orthonormal basis of their span
// (coords, row-major 2x2, column 0 for u, column 1 for v).
FX_HD double two_vector_step(int kind, double t0, double t1, double line_norm, const double* coords) {
  if (kind == LINE) return fabs(t1 - t0) * line_norm;
  const double pi = 3.14159265358979323846;
  const double w = kind == ARC ? 0.5 * pi : 2.0 * pi;
  const double a0 = w * t0, a1 = w * t1, a = 0.5 * (a0 + a1);
  const double s = sin(a), c = cos(a);
  return 2.0 * fabs(sin(0.5 * (a1 - a0))) * hypot(s * coords[0] - c * coords[1], s * coords[2] - c * coords[3]);
}

// sqrt(sum x^2) accumulated with a running scale (LAPACK's classic dnrm2), so that no square
// under- or overflows: the slow path for steps whose plain sum of squares would.
struct ScaledNorm {
  double scale = 0.0, ssq = 1.0;
  FX_HD void add(double x) {
    const double a = fabs(x);
    if (a == 0.0) return;
    if (scale < a) {
      ssq = 1.0 + ssq * (scale / a) * (scale / a);
      scale = a;
    } else {
      ssq += a == scale ? 1.0 : (a / scale) * (a / scale);  // inf twice: inf, not inf / inf = NaN
    }
  }
  FX_HD double value() const { return scale * sqrt(ssq); }
};

// A plain sum of squares q in T is accurate when SafeSum<T>::lo <= q <= SafeSum<T>::hi: lo is
// the square root of T's smallest normal number, so whatever underflowed is negligible against
// q, and hi is T's largest number, so nothing overflowed. Outside (or for q = 0) a step is
// recomputed with ScaledNorm.
template <typename T>
struct SafeSum;
template <>
struct SafeSum<float> {
  static constexpr float lo = 1.0842021724855044e-19f, hi = 3.4028234663852886e38f;
};
template <>
struct SafeSum<double> {
  static constexpr double lo = 1.4916681462400413e-154, hi = 1.7976931348623157e308;
};

// Length of the input step between two POLYLINE samples on different segments, in units of the
// plan's scale: ||x1 - x0|| with x0 = ap0 p[jp] + ap1 p[jp+1] and x1 = a0 p[j] + a1 p[j+1], p the
// scaled vertices (row-major, m coordinates).
FX_HD double vertex_step(const double* p, int m, long long jp, double ap0, double ap1, long long j, double a0,
                         double a1) {
  const double* p0 = p + jp * m;
  const double* p1 = p + j * m;
  double q = 0.0;
  for (int x = 0; x < m; ++x) {
    const double d = (a0 * p1[x] + a1 * p1[x + m]) - (ap0 * p0[x] + ap1 * p0[x + m]);
    q += d * d;
  }
  if (q >= SafeSum<double>::lo && q <= SafeSum<double>::hi) return sqrt(q);
  ScaledNorm norm;
  for (int x = 0; x < m; ++x) norm.add((a0 * p1[x] + a1 * p1[x + m]) - (ap0 * p0[x] + ap1 * p0[x + m]));
  return norm.value();
}

}  // namespace fx
