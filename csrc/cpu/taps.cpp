// Fused per-tap reduction of the taps engine (fastexpr/taps.py): one pass over the activation
// tensor a torch forward pass produced for B consecutive samples of a trajectory, (B, F) row-major.
//
// For every sample i (a row) and feature j: the region code of the pre-activation z[i, j], its
// comparison with the code of sample i-1 (transitions, a pattern-change flag per pair), the
// wrapping sum of fx::pattern_key(layer, j, code) over non-zero codes (the sample's hash for this
// tap, the same keys as the MLP engine), and the squared post-activation differences
// h[i, j] - h[i-1, j] summed per pair for the length. Rows are independent given their
// predecessor, so OpenMP splits the rows; row i-1 is still in cache when row i reads it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "semantics.h"

namespace py = pybind11;

namespace {

using i64 = std::int64_t;
using fx::u64;

// Tap kinds, shared with fastexpr/taps.py. STEP: code 1 if z > lo else 0 (relu, leaky relu,
// prelu, threshold; relu's rule in semantics.h at lo = 0). CLAMP: -1 if z < lo, +1 if z > hi,
// else 0 (hardtanh with any bounds, relu6; hardtanh's rule in semantics.h at (-1, 1)). Ties stay
// in the lower (STEP) or inner (CLAMP) region, as in the MLP engine.
enum TapKind { STEP = 0, CLAMP = 1 };

template <typename T>
inline int tap_code(int kind, T z, T lo, T hi) {
  if (kind == STEP) return z > lo ? 1 : 0;
  return z < lo ? -1 : (z > hi ? 1 : 0);
}

// One pair's length: the plain float64 sum of squares where it is safe, else a scaled sum
// (fx::SafeSum / fx::ScaledNorm; a float difference squared in float64 is always safe).
template <typename T>
inline double pair_length(const T* h, const T* hp, i64 f, double q) {
  if (q >= fx::SafeSum<double>::lo && q <= fx::SafeSum<double>::hi) return std::sqrt(q);
  if (q == 0.0 && sizeof(T) == sizeof(float)) return 0.0;
  fx::ScaledNorm norm;
  for (i64 j = 0; j < f; ++j) norm.add((double)h[j] - (double)hp[j]);
  return norm.value();
}

template <typename T>
py::tuple reduce_tap(py::array z_arr, py::array h_arr, int kind, double lo_d, double hi_d, u64 layer, int threads) {
  auto z = py::array_t<T, py::array::c_style>::ensure(z_arr);
  auto h = py::array_t<T, py::array::c_style>::ensure(h_arr);
  if (!z || !h) throw py::value_error("taps_reduce: z and h must be C-contiguous arrays of the same dtype");
  if (z.ndim() != 2 || h.ndim() != 2 || z.shape(0) != h.shape(0) || z.shape(1) != h.shape(1))
    throw py::value_error("taps_reduce: z and h must be 2-D arrays of the same shape (samples, features)");
  if (kind != STEP && kind != CLAMP) throw py::value_error("taps_reduce: kind must be 0 (step) or 1 (clamp)");
  const i64 b = z.shape(0), f = z.shape(1);
  if (b < 1) throw py::value_error("taps_reduce: at least one sample is needed");
  const T* zp = z.data();
  const T* hp = h.data();
  const T lo = (T)lo_d, hi = (T)hi_d;
  py::array_t<uint8_t> changed(b > 1 ? b - 1 : 0);
  py::array_t<u64> hashes(b);
  uint8_t* chg = changed.mutable_data();
  u64* hsh = hashes.mutable_data();
  i64 transitions = 0, pattern_changes = 0;
  double length = 0.0;
  int nonfinite = 0;
  {
    py::gil_scoped_release release;
#ifdef _OPENMP
    const int n_threads = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+ : transitions, pattern_changes, length) reduction(| : nonfinite)
#endif
    for (i64 i = 0; i < b; ++i) {
      const T* zi = zp + i * f;
      u64 hash = 0;
      int bad = 0;
      if (i == 0) {
        for (i64 j = 0; j < f; ++j) {
          const int c = tap_code(kind, zi[j], lo, hi);
          if (c) hash += fx::pattern_key(layer, (u64)j, c);
          bad |= !std::isfinite(zi[j]);
        }
      } else {
        const T* zq = zi - f;
        const T* hi_row = hp + i * f;
        const T* hq = hi_row - f;
        i64 t = 0;
        double q = 0.0;
        for (i64 j = 0; j < f; ++j) {
          const int c = tap_code(kind, zi[j], lo, hi);
          const int cq = tap_code(kind, zq[j], lo, hi);
          t += std::abs(c - cq);
          if (c) hash += fx::pattern_key(layer, (u64)j, c);
          bad |= !std::isfinite(zi[j]);
          const double d = (double)hi_row[j] - (double)hq[j];
          q += d * d;
        }
        transitions += t;
        pattern_changes += t > 0;
        chg[i - 1] = t > 0;
        length += pair_length(hi_row, hq, f, q);
      }
      hsh[i] = hash;
      nonfinite |= bad;
    }
  }
  return py::make_tuple(transitions, pattern_changes, changed, hashes, length, (bool)nonfinite);
}

}  // namespace

void register_taps(py::module_& m) {
  m.def(
      "taps_reduce",
      [](py::array z, py::array h, int kind, double lo, double hi, u64 layer, int threads) {
        if (!h.dtype().is(z.dtype())) throw py::value_error("taps_reduce: z and h must have the same dtype");
        if (z.dtype().is(py::dtype::of<float>())) return reduce_tap<float>(z, h, kind, lo, hi, layer, threads);
        if (z.dtype().is(py::dtype::of<double>())) return reduce_tap<double>(z, h, kind, lo, hi, layer, threads);
        throw py::value_error("taps_reduce: z must be float32 or float64");
      },
      py::arg("z"), py::arg("h"), py::arg("kind"), py::arg("lo"), py::arg("hi"), py::arg("layer"),
      py::arg("threads") = 0,
      "Fused reduction of one tap over B consecutive samples (see csrc/cpu/taps.cpp): (transitions, "
      "pattern_changes, changed[B-1] uint8, hashes[B] uint64, length, nonfinite).");
}
