// Exact walk of a piecewise-linear MLP along one piece of a trajectory ("unit"): from
// crossing point to crossing point, in float64. Shared by the C++ (csrc/cpu/exact.cpp) and
// CUDA (csrc/cuda/exact.cu) engines; self-contained (NVRTC cannot include host headers).
//
// Along a unit every pre-activation is z(u) = k0 + k1 u (LINEAR units: lines, polyline
// segments, u in [0, 1]) or z(u) = k0 + k1 cos u + k2 sin u (TRIG units: arcs and circles,
// u the angle). The walker keeps these coefficients for every neuron under the current
// pattern, the earliest exit time of every neuron from its code's interval, and the
// per-layer Gram sums of the post-activation coefficients (for the lengths). At the next
// crossing point u* it resolves the pattern just right of u* layer by layer (a neuron's
// coefficients depend only on the layers below it), flipping every neuron that leaves its
// interval within [u*, u* + tol]; then it updates the layers above by rank-k updates with
// the columns of W of the neurons whose post-activation changed. Crossing points closer
// than `tol` are one crossing point, so the walk always advances by more than `tol` and
// terminates. An exit time that lies behind the current position (a rounding-level
// inconsistency) is moved to the current position, flipped there and counted in
// `repairs`; coefficients are recomputed from scratch every REANCHOR_EVERY crossing points
// so that rounding from the rank-k updates cannot accumulate.
#pragma once

#include "semantics.h"

#if !defined(__CUDACC_RTC__)
#include <math.h>
#endif

namespace fx {

enum UnitKind { LINEAR_UNIT = 0, TRIG_UNIT = 1 };

static const double NEVER = 1e308;     // exit time of a neuron that never leaves its interval
static const int REANCHOR_EVERY = 4096;  // crossing points between recomputations from scratch
static const int MAX_FLIPS_PER_POINT = 2;  // a hardtanh neuron may pass -1 -> 0 -> +1 within tol

// The network, float64, layers 1..L (index d = 0..L-1).
struct ExactNet {
  int depth;
  const int* width;            // n_d
  const int* act;              // activation codes
  const long long* offset;     // first neuron of layer d in the flat per-neuron arrays; offset[L] = total
  const double* const* wt;     // wt[d] (d >= 1): W_d transposed, (n_{d-1}, n_d) row-major
  const double* const* bias;   // bias[d] (d >= 1): (n_d,); layer 1's bias is in the unit's coefficients
  const u64* key_pos;          // pattern_key(d+1, j, +1) per flat neuron
  const u64* key_neg;          // pattern_key(d+1, j, -1)
};

// Per-walk scratch, all of length total neurons (Z and dZ: 3 planes of that length).
struct ExactScratch {
  double* Z;           // coefficients k0 | k1 | k2 planes
  double* dZ;          // change of Z within the current crossing point
  double* exit_u;      // earliest exit time per neuron
  signed char* code;   // current code
  signed char* before; // code before the current crossing point
  signed char* flips;  // flips within the current crossing point
  signed char* exit_dir;  // +1: leaves upwards, -1: downwards, 0: never
  int* changed;        // indices (within a layer) whose post-activation changed
  double* layer_min;   // (L,) minimum exit time per layer
  double* gram;        // (L + 1, GRAM): per layer (0: input) the post-activation's Gram sums (layer_gram)
};

// What a walk reports (arrays owned by the caller, zeroed by the walker).
struct ExactOut {
  long long* transitions;      // (L,)
  long long* pattern_changes;  // (L,)
  long long network_changes;
  long long repairs;           // exit times found behind the current position and moved to it
  double* lengths;             // (L + 1,)
  signed char* first_code;     // (total,) the pattern of the unit's first piece
  int error;                   // 0, or EXACT_NONFINITE
};

enum { EXACT_OK = 0, EXACT_NONFINITE = 1 };

FX_HD bool is_linear_code(int act, int code) { return act == IDENTITY || (act == RELU ? code == 1 : code == 0); }

// Post-activation coefficient c (0, 1, 2) of a neuron with code `code` and pre-activation coefficient z.
FX_HD double post(int act, int code, int c, double z) {
  if (is_linear_code(act, code)) return z;
  return c == 0 ? (double)code : 0.0;  // relu off: 0; hardtanh saturated: the constant -1 or +1
}

// Thresholds that bound the interval of `code`: exit upwards through hi, downwards through lo.
FX_HD void code_bounds(int act, int code, double* lo, double* hi, bool* has_lo, bool* has_hi) {
  *has_lo = *has_hi = false;
  if (act == RELU) {
    if (code == 0) { *hi = 0.0; *has_hi = true; } else { *lo = 0.0; *has_lo = true; }
  } else if (act == HARDTANH) {
    if (code <= 0) { *hi = code < 0 ? -1.0 : 1.0; *has_hi = true; }
    if (code >= 0) { *lo = code > 0 ? 1.0 : -1.0; *has_lo = true; }
  }
}

FX_HD double positive_mod(double x, double m) {
  double r = fmod(x, m);
  return r < 0 ? r + m : r;
}

// Whether a pre-activation held constant at z has left its code's interval upwards (up) through
// thr or downwards: beyond thr, or on it where the code's interval is open there (a relu that is on
// and a saturated hardtanh leave on their threshold: its code is the tie code).
FX_HD bool constant_beyond(double z, double thr, bool up, bool open) {
  return up ? (z > thr || (open && z == thr)) : (z < thr || (open && z == thr));
}

// TRIG: first angle >= u where k0 + R cos(u - phi) rises above (up) or falls below (!up) thr;
// u itself if it is already past the threshold (or constant on it, `open` as in constant_beyond),
// NEVER if it never crosses (touching is no crossing).
FX_HD double trig_exit(double k0, double k1, double k2, double thr, bool up, bool open, double u, double tol) {
  const double two_pi = 6.283185307179586476925286766559;
  const double r = hypot(k1, k2);
  if (r == 0.0) return constant_beyond(k0, thr, up, open) ? u : NEVER;
  const double v = (thr - k0) / r;
  if (up ? v >= 1.0 : v <= -1.0) return NEVER;   // never beyond the threshold
  if (up ? v <= -1.0 : v >= 1.0) return u;       // always beyond: the code is inconsistent
  const double a = acos(v), phi = atan2(k2, k1);
  // Beyond the threshold on the open arc (start, start + span) of angles, 2 pi periodic.
  const double start = up ? phi - a : phi + a;
  const double span = up ? 2.0 * a : two_pi - 2.0 * a;
  if (span < tol) return NEVER;                  // touches the threshold without crossing it
  const double into = positive_mod(u - start, two_pi);
  if (into < span - tol) return u;               // already beyond (a rounding-level inconsistency)
  return u + (two_pi - into);
}

// Earliest exit of a neuron from its code's interval at or after u; sets *dir (+1 up, -1 down, 0 never).
template <int KIND>
FX_HD double exit_time(int act, int code, double k0, double k1, double k2, double u, double tol, signed char* dir) {
  double lo = 0, hi = 0;
  bool has_lo, has_hi;
  code_bounds(act, code, &lo, &hi, &has_lo, &has_hi);
  double best = NEVER;
  *dir = 0;
  if (KIND == LINEAR_UNIT) {
    if (has_hi && k1 > 0) { best = (hi - k0) / k1; *dir = 1; }
    else if (has_lo && k1 < 0) { best = (lo - k0) / k1; *dir = -1; }
    else if (has_hi && k1 == 0 && constant_beyond(k0, hi, true, code < 0)) { best = u; *dir = 1; }
    else if (has_lo && k1 == 0 && constant_beyond(k0, lo, false, code > 0)) { best = u; *dir = -1; }
    if (*dir != 0 && !(best >= u)) best = u;  // behind (or NaN from rounding): now
  } else {
    if (has_hi) {
      const double e = trig_exit(k0, k1, k2, hi, true, code < 0, u, tol);
      if (e < best) { best = e; *dir = 1; }
    }
    if (has_lo) {
      const double e = trig_exit(k0, k1, k2, lo, false, code > 0, u, tol);
      if (e < best) { best = e; *dir = -1; }
    }
  }
  return best;
}

// Length of u -> G + A cos u + B sin u over [a, b] given p = |A|^2, q = |B|^2, r = A.B:
// the integral of sqrt(p sin^2 u + q cos^2 u - 2 r sin u cos u), adaptive Gauss-Legendre
// (5 points against two halves) to about 1e-13 relative.
FX_HD double trig_speed(double p, double q, double r, double u) {
  const double s = sin(u), c = cos(u);
  const double v = p * s * s + q * c * c - 2.0 * r * s * c;
  return v > 0 ? sqrt(v) : 0.0;
}

FX_HD double gauss5(double p, double q, double r, double a, double b) {
  const double x[3] = {0.0, 0.5384693101056831, 0.9061798459386640};
  const double w[3] = {0.5688888888888889, 0.4786286704993665, 0.2369268850561891};
  const double m = 0.5 * (a + b), h = 0.5 * (b - a);
  double s = w[0] * trig_speed(p, q, r, m);
  for (int i = 1; i < 3; ++i) s += w[i] * (trig_speed(p, q, r, m - h * x[i]) + trig_speed(p, q, r, m + h * x[i]));
  return s * h;
}

FX_HD double adaptive_length(double p, double q, double r, double a, double b) {
  // Explicit stack instead of recursion (CUDA); 44 levels halve the interval 2^44 times.
  double lo[48], hi[48], whole[48];
  int top = 0;
  lo[0] = a; hi[0] = b; whole[0] = gauss5(p, q, r, a, b);
  double total = 0.0;
  const double scale = sqrt(p > q ? p : q) * (b - a);
  while (top >= 0) {
    const double x0 = lo[top], x1 = hi[top], m = 0.5 * (x0 + x1), w = whole[top];
    const double left = gauss5(p, q, r, x0, m), right = gauss5(p, q, r, m, x1);
    --top;
    if (fabs(left + right - w) <= 1e-14 * scale + 1e-13 * fabs(left + right) || top >= 44 || m <= x0 || m >= x1) {
      total += left + right;
    } else {
      ++top; lo[top] = x0; hi[top] = m; whole[top] = left;
      ++top; lo[top] = m; hi[top] = x1; whole[top] = right;
    }
  }
  return total;
}

// The speed^2 = (p+q)/2 + (q-p)/2 cos 2u - r sin 2u is smallest at u = (phi + pi)/2 + k pi; where it
// reaches 0 (an image that degenerates to a segment) the speed has a kink that no local error
// estimate can be trusted to see. The interval is split at those minima, then integrated adaptively.
FX_HD double trig_length(double p, double q, double r, double a, double b) {
  if (!(b > a) || (p <= 0 && q <= 0)) return 0.0;
  const double pi = 3.14159265358979323846;
  const double first = 0.5 * (atan2(-r, 0.5 * (q - p)) + pi);
  double k = ceil((a - first) / pi), total = 0.0, x0 = a;
  for (double m = first + k * pi; m < b; m += pi) {
    if (m > x0) { total += adaptive_length(p, q, r, x0, m); x0 = m; }
  }
  return total + adaptive_length(p, q, r, x0, b);
}

// Per layer, the Gram sums p = sum k1^2, q = sum k2^2, r = sum k1 k2 of the post-activation's
// coefficients divided by s^2, and s (the largest |coefficient|): GRAM doubles, so that no
// square under- or overflows (lengths of coefficients from 1e-300 to 1e300 survive).
static const int GRAM = 4;

// Add every layer's length over [a, b] (d = 0..L) from the Gram sums. TRIG: the Gauss-Legendre
// nodes of [a, b] and of its halves are shared by all layers (one sin/cos per node); a layer
// whose halves disagree with the whole goes to the adaptive rule.
template <int KIND>
FX_HD void add_piece_lengths(const double* gram, int L, double a, double b, double* lengths) {
  if (KIND == LINEAR_UNIT) {
    for (int d = 0; d <= L; ++d) lengths[d] += (b - a) * sqrt(gram[GRAM * d]) * gram[GRAM * d + 3];
    return;
  }
  if (!(b > a)) return;
  const double x[5] = {-0.9061798459386640, -0.5384693101056831, 0.0, 0.5384693101056831, 0.9061798459386640};
  const double w[5] = {0.2369268850561891, 0.4786286704993665, 0.5688888888888889, 0.4786286704993665,
                       0.2369268850561891};
  if (b - a > 1.0) {  // long pieces (few crossings): the general rule
    for (int d = 0; d <= L; ++d)
      lengths[d] += trig_length(gram[GRAM * d], gram[GRAM * d + 1], gram[GRAM * d + 2], a, b) * gram[GRAM * d + 3];
    return;
  }
  double sn[15], cs[15];
  const double m = 0.5 * (a + b), h = 0.5 * (b - a);
  // d(speed^2)/du = (p - q) sin 2u - 2 r cos 2u: a change of sign from - to + marks a minimum inside
  const double s2a = sin(2.0 * a), c2a = cos(2.0 * a), s2b = sin(2.0 * b), c2b = cos(2.0 * b);
  for (int i = 0; i < 5; ++i) {
    const double nodes[3] = {m + h * x[i], 0.5 * (a + m) + 0.5 * h * x[i], 0.5 * (m + b) + 0.5 * h * x[i]};
    for (int k = 0; k < 3; ++k) { sn[5 * k + i] = sin(nodes[k]); cs[5 * k + i] = cos(nodes[k]); }
  }
  for (int d = 0; d <= L; ++d) {
    const double p = gram[GRAM * d], q = gram[GRAM * d + 1], r = gram[GRAM * d + 2], s = gram[GRAM * d + 3];
    if (p <= 0 && q <= 0) continue;
    if ((p - q) * s2a - 2.0 * r * c2a < 0 && (p - q) * s2b - 2.0 * r * c2b > 0) {  // a minimum inside
      lengths[d] += trig_length(p, q, r, a, b) * s;
      continue;
    }
    double part[3] = {0, 0, 0};
    for (int k = 0; k < 3; ++k)
      for (int i = 0; i < 5; ++i) {
        const double v = p * sn[5 * k + i] * sn[5 * k + i] + q * cs[5 * k + i] * cs[5 * k + i] -
                         2.0 * r * sn[5 * k + i] * cs[5 * k + i];
        part[k] += w[i] * (v > 0 ? sqrt(v) : 0.0);
      }
    const double whole = part[0] * h, halves = (part[1] + part[2]) * 0.5 * h;
    const double scale = sqrt(p > q ? p : q) * (b - a);
    if (fabs(halves - whole) <= 1e-14 * scale + 1e-13 * fabs(halves)) lengths[d] += halves * s;
    else lengths[d] += trig_length(p, q, r, a, b) * s;
  }
}

// Gram sums of layer d's post-activation coefficients (1: k1, 2: k2) and their scale (GRAM).
// Returns false if a coefficient is not finite.
template <int KIND>
FX_HD bool layer_gram(const ExactNet& net, const ExactScratch& s, long long total, int d, double* g) {
  const long long o = net.offset[d];
  const int n = net.width[d], act = net.act[d];
  const double* Z1 = s.Z + total + o;
  const double* Z2 = s.Z + 2 * total + o;
  double big = 0.0;
  bool finite = true;
  for (int j = 0; j < n; ++j) {
    const double z0 = s.Z[o + j];
    if (!(fabs(z0) <= 1.79e308) || !(fabs(Z1[j]) <= 1.79e308) || (KIND == TRIG_UNIT && !(fabs(Z2[j]) <= 1.79e308)))
      finite = false;
    if (!is_linear_code(act, s.code[o + j])) continue;
    big = fmax(big, fabs(Z1[j]));
    if (KIND == TRIG_UNIT) big = fmax(big, fabs(Z2[j]));
  }
  g[0] = g[1] = g[2] = 0.0;
  g[3] = 1.0;
  if (!finite) return false;
  if (big == 0.0) return true;
  double p = 0, q = 0, r = 0;
  const double inv = 1.0 / big;
  const bool divide = !(inv <= 1.79e308);  // big is subnormal: its inverse overflows
  for (int j = 0; j < n; ++j) {
    if (!is_linear_code(act, s.code[o + j])) continue;
    const double a = divide ? Z1[j] / big : Z1[j] * inv;
    p += a * a;
    if (KIND == TRIG_UNIT) {
      const double b = divide ? Z2[j] / big : Z2[j] * inv;
      q += b * b;
      r += a * b;
    }
  }
  g[0] = p;
  g[1] = q;
  g[2] = r;
  g[3] = big;
  return true;
}

// TRIG only: a lower bound on the exit time of a neuron whose code holds at u with a margin,
// from |dz/du| <= |k1| + |k2|; LAZY marks it in exit_dir. Computing the exact exit (acos,
// atan2) is deferred until the bound comes up as a candidate (resolve_lazy), which most never do.
static const signed char LAZY = 2;

FX_HD double trig_exit_bound(int act, int code, double k0, double k1, double k2, double cu, double su, double u) {
  double lo = 0, hi = 0;
  bool has_lo, has_hi;
  code_bounds(act, code, &lo, &hi, &has_lo, &has_hi);
  if (!has_lo && !has_hi) return NEVER;
  const double z = k0 + k1 * cu + k2 * su, rate = fabs(k1) + fabs(k2);
  double dist = NEVER;
  if (has_hi) dist = hi - z;
  if (has_lo && z - lo < dist) dist = z - lo;
  const double margin = 1e-13 * (fabs(k0) + rate + 1.0);  // well above the rounding of z
  if (!(dist > margin) || rate == 0.0) return -1.0;       // too close to call (or constant): exact now
  return u + (dist - margin) / rate;
}

// Recompute exit times of layer d (all neurons) at u and its minimum.
template <int KIND>
FX_HD void layer_exits(const ExactNet& net, ExactScratch& s, long long total, int d, double u, double tol) {
  const long long o = net.offset[d];
  const double cu = KIND == TRIG_UNIT ? cos(u) : 0.0, su = KIND == TRIG_UNIT ? sin(u) : 0.0;
  double best = NEVER;
  for (int j = 0; j < net.width[d]; ++j) {
    const long long i = o + j;
    double e = -1.0;
    if (KIND == TRIG_UNIT) {
      e = trig_exit_bound(net.act[d], s.code[i], s.Z[i], s.Z[total + i], s.Z[2 * total + i], cu, su, u);
      s.exit_dir[i] = e == NEVER ? 0 : LAZY;
    }
    if (e < 0.0)
      e = exit_time<KIND>(net.act[d], s.code[i], s.Z[i], s.Z[total + i], s.Z[2 * total + i], u, tol, &s.exit_dir[i]);
    s.exit_u[i] = e;
    best = e < best ? e : best;
  }
  s.layer_min[d] = best;
}

// Replace the lazy bounds of layer d at or below `limit` by exact exit times (computed at u);
// true if there were any.
template <int KIND>
FX_HD bool resolve_lazy(const ExactNet& net, ExactScratch& s, long long total, int d, double u, double tol,
                        double limit) {
  if (KIND != TRIG_UNIT) return false;
  const long long o = net.offset[d];
  bool any = false;
  double best = NEVER;
  for (int j = 0; j < net.width[d]; ++j) {
    const long long i = o + j;
    if (s.exit_dir[i] == LAZY && s.exit_u[i] <= limit) {
      s.exit_u[i] = exit_time<KIND>(net.act[d], s.code[i], s.Z[i], s.Z[total + i], s.Z[2 * total + i], u, tol,
                                    &s.exit_dir[i]);
      any = true;
    }
    best = s.exit_u[i] < best ? s.exit_u[i] : best;
  }
  s.layer_min[d] = best;
  return any;
}

// Z of layer d >= 1 from scratch, from layer d-1's codes and coefficients.
template <int KIND>
FX_HD void forward_layer(const ExactNet& net, ExactScratch& s, long long total, int d) {
  const int planes = KIND == TRIG_UNIT ? 3 : 2;
  const long long o = net.offset[d], op = net.offset[d - 1];
  const int n = net.width[d], n_in = net.width[d - 1], act_in = net.act[d - 1];
  for (int c = 0; c < planes; ++c) {
    double* z = s.Z + c * total + o;
    for (int j = 0; j < n; ++j) z[j] = c == 0 ? net.bias[d][j] : 0.0;
    for (int k = 0; k < n_in; ++k) {
      const double h = post(act_in, s.code[op + k], c, s.Z[c * total + op + k]);
      if (h == 0.0) continue;
      const double* w = net.wt[d] + (long long)k * n;
      for (int j = 0; j < n; ++j) z[j] += w[j] * h;
    }
  }
}

// True if layer d's post-activation is constant in u: every neuron is off or saturated, or in a
// linear piece with slope exactly 0 (a weight row orthogonal to the path, or a constant layer below).
template <int KIND>
FX_HD bool constant_layer(const ExactNet& net, const ExactScratch& s, long long total, int d) {
  const long long o = net.offset[d];
  for (int j = 0; j < net.width[d]; ++j)
    if (is_linear_code(net.act[d], s.code[o + j]) &&
        (s.Z[total + o + j] != 0.0 || (KIND == TRIG_UNIT && s.Z[2 * total + o + j] != 0.0)))
      return false;
  return true;
}

// Layer d's Z from scratch within a crossing point (dZ kept as the change since the point began).
// Used where layer d-1's post-activation is constant: layer d's Z is then exactly constant too
// (k1 = k2 = 0, and k0 = the bias where every input is off), which rank-k updates would miss by
// rounding, leaving a zero-bias relu that every input left crossing 0 at a random u.
template <int KIND>
FX_HD void refresh_layer(const ExactNet& net, ExactScratch& s, long long total, int d) {
  const int planes = KIND == TRIG_UNIT ? 3 : 2;
  const long long o = net.offset[d];
  for (int c = 0; c < planes; ++c)
    for (int j = 0; j < net.width[d]; ++j) s.dZ[c * total + o + j] -= s.Z[c * total + o + j];
  forward_layer<KIND>(net, s, total, d);
  for (int c = 0; c < planes; ++c)
    for (int j = 0; j < net.width[d]; ++j) s.dZ[c * total + o + j] += s.Z[c * total + o + j];
}

FX_HD u64 pattern_key_delta(const ExactNet& net, long long i, int from, int to) {
  u64 h = 0;
  if (from > 0) h -= net.key_pos[i]; else if (from < 0) h -= net.key_neg[i];
  if (to > 0) h += net.key_pos[i]; else if (to < 0) h += net.key_neg[i];
  return h;
}

// Flip neuron i of layer d if it leaves its interval within u + tol; true if it did.
template <int KIND>
FX_HD bool try_flip(const ExactNet& net, ExactScratch& s, long long total, int d, long long i, double u, double tol,
                    u64* hash, long long* repairs) {
  if (!(s.exit_u[i] <= u + tol && s.exit_dir[i] != 0 && s.exit_dir[i] != LAZY && s.flips[i] < MAX_FLIPS_PER_POINT))
    return false;
  if (s.exit_u[i] < u - tol) ++*repairs;
  if (s.flips[i] == 0) s.before[i] = s.code[i];
  const int from = s.code[i], to = from + s.exit_dir[i];
  s.code[i] = (signed char)to;
  ++s.flips[i];
  *hash += pattern_key_delta(net, i, from, to);
  s.exit_u[i] = exit_time<KIND>(net.act[d], to, s.Z[i], s.Z[total + i], s.Z[2 * total + i], u, tol, &s.exit_dir[i]);
  return true;
}

// Flip every neuron of layer d that leaves its interval within u + tol (again while a
// flipped one leaves its new interval too: a flip never changes its own layer), at most
// MAX_FLIPS_PER_POINT times each. Lists the flipped neurons in s.changed; returns their number.
template <int KIND>
FX_HD int flip_layer(const ExactNet& net, ExactScratch& s, long long total, int d, double u, double tol,
                     u64* hash, long long* repairs) {
  if (!(s.layer_min[d] <= u + tol)) return 0;
  if (resolve_lazy<KIND>(net, s, total, d, u, tol, u + tol) && !(s.layer_min[d] <= u + tol)) return 0;
  const long long o = net.offset[d];
  int n_flipped = 0;
  double best = NEVER;
  for (int j = 0; j < net.width[d]; ++j) {
    if (try_flip<KIND>(net, s, total, d, o + j, u, tol, hash, repairs)) s.changed[n_flipped++] = j;
    else best = s.exit_u[o + j] < best ? s.exit_u[o + j] : best;
  }
  for (bool again = true; again;) {
    again = false;
    for (int q = 0; q < n_flipped; ++q) again = try_flip<KIND>(net, s, total, d, o + s.changed[q], u, tol, hash, repairs) || again;
  }
  for (int q = 0; q < n_flipped; ++q) best = s.exit_u[o + s.changed[q]] < best ? s.exit_u[o + s.changed[q]] : best;
  s.layer_min[d] = best;
  return n_flipped;
}

// Walk one unit over [u0, u1] with layer-1 coefficients (k0, k1, k2) and input Gram g_in.
// `sink.hash(h)` receives the pattern hash of every piece (the first included); when
// `sink.wants_crossings`, `sink.crossing(u, d, j, from, to)` receives every net code change
// of a neuron at a counted crossing point.
template <int KIND, class Sink>
FX_HD void exact_walk(const ExactNet& net, ExactScratch& s, const double* k0, const double* k1, const double* k2,
                      const double* g_in, double u0, double u1, double tol, ExactOut& out, Sink& sink) {
  const int L = net.depth;
  const long long total = net.offset[L];
  const int planes = KIND == TRIG_UNIT ? 3 : 2;
  for (int d = 0; d < L; ++d) { out.transitions[d] = 0; out.pattern_changes[d] = 0; }
  for (int d = 0; d <= L; ++d) out.lengths[d] = 0.0;
  out.network_changes = 0;
  out.repairs = 0;
  out.error = EXACT_OK;

  // Layer 1 from the unit, the rest from scratch, codes at u0 layer by layer.
  for (int j = 0; j < net.width[0]; ++j) {
    s.Z[j] = k0[j];
    s.Z[total + j] = k1[j];
    s.Z[2 * total + j] = KIND == TRIG_UNIT ? k2[j] : 0.0;
  }
  for (int d = 0; d < L; ++d) {
    if (d > 0) forward_layer<KIND>(net, s, total, d);
    const long long o = net.offset[d];
    for (int j = 0; j < net.width[d]; ++j) {
      const long long i = o + j;
      const double z = KIND == LINEAR_UNIT ? s.Z[i] + s.Z[total + i] * u0
                                           : s.Z[i] + s.Z[total + i] * cos(u0) + s.Z[2 * total + i] * sin(u0);
      s.code[i] = (signed char)region_code(net.act[d], z);
      s.flips[i] = 0;
    }
    for (long long i = o; i < o + net.width[d]; ++i) s.dZ[i] = s.dZ[total + i] = s.dZ[2 * total + i] = 0.0;
  }
  u64 hash = 0;
  for (int d = 0; d < L; ++d)
    for (int j = 0; j < net.width[d]; ++j) hash += pattern_key_delta(net, net.offset[d] + j, 0, s.code[net.offset[d] + j]);
  for (int d = 0; d < L; ++d) layer_exits<KIND>(net, s, total, d, u0, tol);

  double u = u0;
  bool counting = false;  // the first crossing point (at u0) only settles the right-limit pattern
  long long since_anchor = 0;
  for (;;) {
    // ---- one crossing point at u: layers in order, each settled before the next ----
    bool any_change = false;
    bool touched_below = false;  // layer d-1's post-activation changed: layer d's Z moved
    bool constant_below = false;  // layer d-1's post-activation is constant in u (as are all above it)
    for (int d = 0; d < L; ++d) {
      const long long o = net.offset[d];
      const int n = net.width[d], act = net.act[d];
      if (touched_below) layer_exits<KIND>(net, s, total, d, u, tol);
      const int n_flipped = flip_layer<KIND>(net, s, total, d, u, tol, &hash, &out.repairs);
      if (!touched_below && n_flipped == 0) {  // nothing of layer d moved; nor can a constant layer's
        constant_below = false;                // neuron flip later without a change below it
        continue;
      }
      constant_below = constant_below || constant_layer<KIND>(net, s, total, d);
      // Net code changes of this layer at this point.
      long long jumps = 0;
      for (int q = 0; q < n_flipped; ++q) {
        const long long i = o + s.changed[q];
        const int dc = s.code[i] - s.before[i];
        jumps += dc < 0 ? -dc : dc;
        if (counting && dc != 0 && sink.wants_crossings) sink.crossing(u, d, s.changed[q], s.before[i], s.code[i]);
      }
      if (jumps > 0) {
        any_change = true;
        if (counting) { out.transitions[d] += jumps; out.pattern_changes[d] += 1; }
      }
      // Post-activation changes of layer d: dH = post(new code, Z) - post(old code, Z - dZ).
      int n_changed = 0;
      if (touched_below) {
        for (int j = 0; j < n; ++j) {
          const long long i = o + j;
          if (s.flips[i] || is_linear_code(act, s.code[i])) s.changed[n_changed++] = j;
        }
      } else {
        n_changed = n_flipped;  // s.changed already lists the flipped neurons
      }
      bool changed_here = false;
      if (d + 1 < L && n_changed > 0 && constant_below) {
        refresh_layer<KIND>(net, s, total, d + 1);
        changed_here = true;
      } else if (d + 1 < L && n_changed > 0) {
        const int n_out = net.width[d + 1];
        const long long oo = net.offset[d + 1];
        for (int q = 0; q < n_changed; ++q) {
          const int j = s.changed[q];
          const long long i = o + j;
          const int before = s.flips[i] ? s.before[i] : s.code[i];
          double dh[3];
          bool nz = false;
          for (int c = 0; c < planes; ++c) {
            const double zn = s.Z[c * total + i];
            dh[c] = post(act, s.code[i], c, zn) - post(act, before, c, zn - s.dZ[c * total + i]);
            nz = nz || dh[c] != 0.0;
          }
          if (!nz) continue;
          changed_here = true;
          const double* w = net.wt[d + 1] + (long long)j * n_out;
          for (int c = 0; c < planes; ++c) {
            if (dh[c] == 0.0) continue;
            double* z = s.Z + c * total + oo;
            double* dz = s.dZ + c * total + oo;
            const double h = dh[c];
            for (int k = 0; k < n_out; ++k) {
              z[k] += w[k] * h;
              dz[k] += w[k] * h;
            }
          }
        }
      }
      // Lengths need this layer's Gram sums whenever its post-activation may have changed.
      if (touched_below || n_flipped > 0) {
        if (!layer_gram<KIND>(net, s, total, d, s.gram + GRAM * (d + 1))) { out.error = EXACT_NONFINITE; return; }
      }
      // Reset this layer's per-point state (dZ is non-zero only where layer d-1 moved).
      if (touched_below) {
        for (int j = 0; j < n; ++j) {
          const long long i = o + j;
          s.flips[i] = 0;
          s.dZ[i] = s.dZ[total + i] = s.dZ[2 * total + i] = 0.0;
        }
      } else {
        for (int q = 0; q < n_changed; ++q) s.flips[o + s.changed[q]] = 0;
      }
      touched_below = changed_here;
    }
    if (!counting) {
      counting = true;
      for (long long i = 0; i < total; ++i) out.first_code[i] = s.code[i];
      sink.hash(hash);
      s.gram[0] = g_in[0]; s.gram[1] = g_in[1]; s.gram[2] = g_in[2]; s.gram[3] = 1.0;  // in units of in_scale
      for (int d = 0; d < L; ++d)
        if (!layer_gram<KIND>(net, s, total, d, s.gram + GRAM * (d + 1))) { out.error = EXACT_NONFINITE; return; }
    } else if (any_change) {
      ++out.network_changes;
      sink.hash(hash);
    }
    if (++since_anchor >= REANCHOR_EVERY) {  // drop the rounding of the rank-k updates
      since_anchor = 0;
      for (int d = 0; d < L; ++d) {
        if (d > 0) forward_layer<KIND>(net, s, total, d);
        layer_exits<KIND>(net, s, total, d, u, tol);
        if (!layer_gram<KIND>(net, s, total, d, s.gram + GRAM * (d + 1))) { out.error = EXACT_NONFINITE; return; }
      }
    }
    // ---- advance to the next crossing point ----
    double next = NEVER;
    for (bool lazy = true; lazy;) {  // until the earliest candidate is an exact exit time
      int first = 0;
      for (int d = 1; d < L; ++d) first = s.layer_min[d] < s.layer_min[first] ? d : first;
      next = s.layer_min[first];
      lazy = next < u1 && resolve_lazy<KIND>(net, s, total, first, u, tol, next + tol);
    }
    if (next < u + tol) next = u + 2.0 * tol;  // a neuron held back by MAX_FLIPS_PER_POINT: still advance
    const double stop = next < u1 - tol ? next : u1;
    add_piece_lengths<KIND>(s.gram, L, u, stop, out.lengths);
    if (stop >= u1) break;
    u = next;
  }
}

}  // namespace fx
