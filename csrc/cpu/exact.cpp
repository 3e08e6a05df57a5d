// Exact walk on the CPU: units (sub-intervals of a trajectory) walked in parallel on OpenMP
// threads with the shared walker of csrc/common/exact_walk.h. fastexpr/exact.py cuts the
// trajectory into units and merges their results at the shared ends.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "exact_walk.h"
#include "semantics.h"

namespace py = pybind11;

namespace {

using i64 = long long;
using fx::u64;

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

// Collects one walk's piece hashes and, up to a cap shared by all walks, its crossings.
struct CpuSink {
  bool wants_crossings = false;
  std::vector<u64> hashes;
  struct Crossing {
    double u;
    int layer, neuron, from, to;
  };
  std::vector<Crossing> crossings;
  i64 cap = 0;
  void hash(u64 h) { hashes.push_back(h); }
  void crossing(double u, int d, int j, int from, int to) {
    if ((i64)crossings.size() < cap) crossings.push_back({u, d, j, from, to});
  }
};

template <typename T>
const T* checked(const py::array& a, const std::string& name, std::vector<i64> shape) {
  if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
    fail(name + " must be a C-contiguous array of " + (sizeof(T) == 8 ? "float64" : "the right dtype"));
  bool ok = a.ndim() == (py::ssize_t)shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) fail(name + " has the wrong shape");
  return static_cast<const T*>(a.data());
}

py::dict exact_walk(int unit_kind, const std::vector<py::array>& weights, const std::vector<py::array>& biases,
                     const std::vector<int>& activations, const py::array& k0, const py::array& k1,
                     const py::array& k2, const py::array& u0, const py::array& u1, const py::array& g_in, double tol,
                     i64 max_crossings, int threads) {
  const int L = (int)activations.size();
  if (L < 1) fail("the network needs at least one layer");
  if (unit_kind != fx::LINEAR_UNIT && unit_kind != fx::TRIG_UNIT) fail("unit_kind must be 0 (linear) or 1 (trig)");
  if ((int)weights.size() != L - 1 || (int)biases.size() != L - 1) fail("expected L-1 hidden weights and biases");
  if (k0.ndim() != 2) fail("k0 must be 2-D (units, n_1)");
  const i64 U = k0.shape(0), n1 = k0.shape(1);
  if (U < 1 || n1 < 1) fail("need at least one unit and one first-layer neuron");
  if (!(tol > 0)) fail("tol must be positive");
  std::vector<int> width{(int)n1};
  std::vector<std::vector<double>> wt(L), bias(L);
  for (int d = 1; d < L; ++d) {
    const py::array& w = weights[d - 1];
    if (w.ndim() != 2) fail("weights must be 2-D");
    const i64 n_out = w.shape(0), n_in = width[d - 1];
    const double* W = checked<double>(w, "weights[" + std::to_string(d - 1) + "]", {n_out, n_in});
    const double* b = checked<double>(biases[d - 1], "biases[" + std::to_string(d - 1) + "]", {n_out});
    wt[d].resize((size_t)(n_out * n_in));
    for (i64 o = 0; o < n_out; ++o)
      for (i64 k = 0; k < n_in; ++k) wt[d][(size_t)(k * n_out + o)] = W[o * n_in + k];
    bias[d].assign(b, b + n_out);
    width.push_back((int)n_out);
  }
  for (int a : activations)
    if (a < fx::IDENTITY || a > fx::HARDTANH) fail("unknown activation code " + std::to_string(a));
  std::vector<i64> offset(L + 1, 0);
  for (int d = 0; d < L; ++d) offset[d + 1] = offset[d] + width[d];
  const i64 total = offset[L];
  std::vector<u64> key_pos(total), key_neg(total);
  for (int d = 0; d < L; ++d)
    for (int j = 0; j < width[d]; ++j) {
      key_pos[offset[d] + j] = fx::pattern_key(d + 1, j, +1);
      key_neg[offset[d] + j] = fx::pattern_key(d + 1, j, -1);
    }
  std::vector<const double*> wt_ptr(L, nullptr), bias_ptr(L, nullptr);
  for (int d = 1; d < L; ++d) { wt_ptr[d] = wt[d].data(); bias_ptr[d] = bias[d].data(); }
  fx::ExactNet net{L, width.data(), activations.data(), offset.data(), wt_ptr.data(), bias_ptr.data(),
                   key_pos.data(), key_neg.data()};

  const double* K0 = checked<double>(k0, "k0", {U, n1});
  const double* K1 = checked<double>(k1, "k1", {U, n1});
  const double* K2 = unit_kind == fx::TRIG_UNIT ? checked<double>(k2, "k2", {U, n1}) : nullptr;
  const double* A = checked<double>(u0, "u0", {U});
  const double* B = checked<double>(u1, "u1", {U});
  const double* G = checked<double>(g_in, "g_in", {U, 3});

  py::array_t<i64> transitions({U, (i64)L}), pattern_changes({U, (i64)L});
  py::array_t<i64> network_changes(U), repairs(U);
  py::array_t<double> lengths({U, (i64)L + 1});
  py::array_t<int8_t> first_code({U, total}), last_code({U, total});
  std::vector<int> errors(U, 0);
  i64* T_ = transitions.mutable_data();
  i64* P_ = pattern_changes.mutable_data();
  i64* N_ = network_changes.mutable_data();
  i64* R_ = repairs.mutable_data();
  double* Len = lengths.mutable_data();
  int8_t* F_ = first_code.mutable_data();
  int8_t* Z_ = last_code.mutable_data();

#ifdef _OPENMP
  const int n_threads = (int)std::max<i64>(1, std::min<i64>(threads > 0 ? threads : omp_get_max_threads(), U));
#else
  const int n_threads = 1;
  (void)threads;
#endif
  std::vector<CpuSink> sinks(n_threads);
  for (CpuSink& s : sinks) {
    s.wants_crossings = max_crossings > 0;
    s.cap = max_crossings;
  }
  std::vector<std::vector<i64>> crossing_unit(n_threads);
  bool out_of_memory = false;
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
      const int me = omp_get_thread_num();
#else
      const int me = 0;
#endif
      try {
        std::vector<double> Z(3 * total), dZ(3 * total), exit_u(total), layer_min(L), gram(fx::GRAM * (L + 1));
        std::vector<signed char> code(total), before(total), flips(total), dir(total);
        std::vector<int> changed(*std::max_element(width.begin(), width.end()));
        fx::ExactScratch s{Z.data(), dZ.data(), exit_u.data(), code.data(), before.data(), flips.data(),
                           dir.data(), changed.data(), layer_min.data(), gram.data()};
        CpuSink& sink = sinks[me];
#pragma omp for schedule(dynamic, 1)
        for (i64 q = 0; q < U; ++q) {
          fx::ExactOut out{T_ + q * L, P_ + q * L, 0, 0, Len + q * (L + 1),
                           reinterpret_cast<signed char*>(F_ + q * total), 0};
          if (unit_kind == fx::LINEAR_UNIT)
            fx::exact_walk<fx::LINEAR_UNIT>(net, s, K0 + q * n1, K1 + q * n1, nullptr, G + 3 * q, A[q], B[q], tol,
                                            out, sink);
          else
            fx::exact_walk<fx::TRIG_UNIT>(net, s, K0 + q * n1, K1 + q * n1, K2 + q * n1, G + 3 * q, A[q], B[q], tol,
                                          out, sink);
          N_[q] = out.network_changes;
          R_[q] = out.repairs;
          errors[q] = out.error;
          std::copy(code.begin(), code.end(), Z_ + q * total);
          crossing_unit[me].resize(sink.crossings.size(), q);
        }
        std::sort(sink.hashes.begin(), sink.hashes.end());
        sink.hashes.erase(std::unique(sink.hashes.begin(), sink.hashes.end()), sink.hashes.end());
      } catch (const std::bad_alloc&) {
#pragma omp atomic write
        out_of_memory = true;
      }
    }
  }
  if (out_of_memory) throw std::bad_alloc();

  std::vector<u64> hashes;
  i64 n_cross = 0;
  for (const CpuSink& s : sinks) {
    hashes.insert(hashes.end(), s.hashes.begin(), s.hashes.end());
    n_cross += (i64)s.crossings.size();
  }
  std::sort(hashes.begin(), hashes.end());
  hashes.erase(std::unique(hashes.begin(), hashes.end()), hashes.end());
  py::array_t<u64> out_hashes((py::ssize_t)hashes.size());
  std::copy(hashes.begin(), hashes.end(), out_hashes.mutable_data());
  py::array_t<int> out_errors(U);
  std::copy(errors.begin(), errors.end(), out_errors.mutable_data());
  // Crossings as columns: unit, u, layer (0-based), neuron, from code, to code.
  py::array_t<i64> c_unit(n_cross), c_layer(n_cross), c_neuron(n_cross);
  py::array_t<double> c_u(n_cross);
  py::array_t<int8_t> c_from(n_cross), c_to(n_cross);
  i64 at = 0;
  for (int t = 0; t < n_threads; ++t)
    for (size_t k = 0; k < sinks[t].crossings.size(); ++k, ++at) {
      const CpuSink::Crossing& c = sinks[t].crossings[k];
      c_unit.mutable_data()[at] = crossing_unit[t][k];
      c_u.mutable_data()[at] = c.u;
      c_layer.mutable_data()[at] = c.layer;
      c_neuron.mutable_data()[at] = c.neuron;
      c_from.mutable_data()[at] = (int8_t)c.from;
      c_to.mutable_data()[at] = (int8_t)c.to;
    }
  py::dict out;
  out["transitions"] = transitions;
  out["pattern_changes"] = pattern_changes;
  out["network_changes"] = network_changes;
  out["repairs"] = repairs;
  out["lengths"] = lengths;
  out["first_code"] = first_code;
  out["last_code"] = last_code;
  out["hashes"] = out_hashes;
  out["errors"] = out_errors;
  out["crossings"] = py::make_tuple(c_unit, c_u, c_layer, c_neuron, c_from, c_to);
  return out;
}

}  // namespace

void register_exact(py::module_& m) {
  m.def("exact_walk", &exact_walk,
        "Exact walk of units (sub-intervals of one trajectory) through a float64 network; see\n"
        "csrc/common/exact_walk.h. unit_kind 0: z = k0 + k1 u; 1: z = k0 + k1 cos u + k2 sin u.\n"
        "Returns a dict of per-unit arrays, the union of piece hashes, and crossings (capped per thread).",
        py::arg("unit_kind"), py::arg("weights"), py::arg("biases"), py::arg("activations"), py::arg("k0"),
        py::arg("k1"), py::arg("k2"), py::arg("u0"), py::arg("u1"), py::arg("g_in"), py::arg("tol"),
        py::arg("max_crossings") = 0, py::arg("threads") = 0);
}
