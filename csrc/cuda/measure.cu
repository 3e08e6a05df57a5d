// Fused trajectory measurement on the GPU (issue 3): the CUDA twin of csrc/cpu/measure.cpp,
// launched from fastexpr/backends/cuda.py through fastexpr/backends/cuda_compile.py (NVRTC).
// Self-contained: the only include is the shared semantics header (NVRTC has no host headers).
// Design, tile sizes and the performance reasoning: bench/notes_cuda.md.
//
// Grid (X B): block x works on trajectory x / X as its persistent worker w = x % X, taking the
// tiles w, w+X, ... of samples start..stop-1 (the trajectory in blockIdx.x, not blockIdx.y, so
// that a batch may exceed gridDim.y's 65,535). Tile t holds the BM consecutive samples
// s0 .. s0+BM-1, s0 = start + t (BM-1): its first sample is the previous tile's last, so each
// pair (i, i+1) with start <= i < stop-1 belongs to exactly one tile. Rows past stop-1 repeat
// sample stop-1, so their pairs are zero in every measure and need no mask.
//
// Per tile and layer d (the tile's activations never leave shared memory):
//   d = 1   z = w0 proj[j] + w1 proj[j+1] + bias1 in float64 from the projected basis, then cast;
//   d >= 2  z = b + h W^T: a register-tiled GEMM, each thread owning TM consecutive rows and CN
//           columns, the activations read from shared memory and W^T streamed through two
//           shared stages of BK rows with cp.async (the next stage loads during the current
//           one's FMAs, across layer and tile boundaries);
//   epilogue, while z is in registers: region codes, transitions and code changes against the
//           previous row, pattern keys added into the row's hash, activation written back in
//           place, squared differences of the activations (plus z * 0, NaN exactly when a
//           pre-activation is inf or NaN); partials are reduced per row over the threads
//           sharing it, then one warp folds the rows into the block's totals, redoing in
//           float64 (scaled) a row whose sum of squares may have under- or overflowed.
// After layer L the same warp emits the hashes of rows that start a new whole-network pattern
// (slots reserved with one atomicAdd per 32 rows, written only below the capacity: the count
// goes on, so the host sees an overflow); at exit each block adds its totals with one atomicAdd
// per counter. Errors set bits of a flag (FX_ERROR_*) instead of trapping, which would poison
// the CUDA context of the whole process.
//
// Every kernel takes the same arguments (FX_KERNEL_PARAMS); the FX_KERNEL lines at the end
// define the configurations and fastexpr/backends/cuda.py reads them from this file.

#include "semantics.h"

// Bits of the kernels' `error` flag (fastexpr/backends/cuda.py reads these lines).
#define FX_ERROR_SHARED_MEMORY 1  // the launch's smem_size is smaller than the layout of Smem needs

namespace fxc {

typedef unsigned long long u64;
constexpr unsigned FULL_MASK = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Small device helpers.

// A 16-byte vector of T: the unit of every shared-memory and cp.async transfer.
template <typename T> struct Vec16;
template <> struct Vec16<float> { typedef float4 type; };
template <> struct Vec16<double> { typedef double2 type; };

template <typename T>
__device__ __forceinline__ void copy16(T* dst, const T* src) {
  typedef typename Vec16<T>::type V;
  *reinterpret_cast<V*>(dst) = *reinterpret_cast<const V*>(src);
}

__device__ __forceinline__ float fx_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double fx_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ long long fx_min(long long a, long long b) { return a < b ? a : b; }

// Sum over aligned groups of W lanes (W a power of two <= 32); every lane gets its group's sum.
template <int W, typename V>
__device__ __forceinline__ V group_sum(V v) {
#pragma unroll
  for (int offset = W / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
  return v;
}

// 16-byte global -> shared copy that bypasses registers (cp.async on sm_80+).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *reinterpret_cast<uint4*>(smem) = *reinterpret_cast<const uint4*>(gmem);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Configuration: NT threads in TR x TC, each owning TM consecutive rows of the BM-row tile and
// CN columns (CN/G groups of G = 16/sizeof(T) adjacent columns, group q of thread tx at columns
// (tx + q TC) G ..). NP = TC CN is the widest layer a configuration handles. Every layer is
// computed NP neurons wide: the host pads weights, biases and keys with zeros, so a padded
// neuron has z = 0, code 0 and h = 0 and changes no measure. Only the GEMM's depth follows the
// layer: layer d sums over npad[d-2] inputs, the previous width rounded up to BK.

template <typename T_, int NT_, int BM_, int TM_, int CN_, int BK_>
struct Cfg {
  typedef T_ T;
  static constexpr int NT = NT_, BM = BM_, TM = TM_, CN = CN_, BK = BK_;
  static constexpr int G = 16 / (int)sizeof(T);
  static constexpr int TR = BM / TM;
  static constexpr int TC = NT / TR;
  static constexpr int NP = TC * CN;
  static constexpr int NW = NT / 32;
  static constexpr int TCW = TC < 32 ? TC : 32;      // lanes of one warp that share a row
  static constexpr int WPR = TC < 32 ? 1 : TC / 32;  // warps that share a row (one slot each)
  // Column k of the activation tile holds thread row ty's 16-byte chunk u at ty TM/G + (u ^ sw(k)),
  // sw(k) = (k/G) & SWZ: neighbouring threads' epilogue stores spread over the banks, while the
  // GEMM's swizzle stays a compile-time constant (BK/G is a multiple of SWZ+1).
  static constexpr int SWZ = (TM / G < BK / G ? TM / G : BK / G) - 1;
  static_assert(NT % 32 == 0 && BM % TM == 0 && NT % TR == 0, "thread grid");
  static_assert((TC & (TC - 1)) == 0 && ((TM / G) & (TM / G - 1)) == 0 && ((BK / G) & (BK / G - 1)) == 0,
                "powers of two");
  static_assert(TM % G == 0 && CN % G == 0 && BK % G == 0 && NP % BK == 0, "16-byte vectors");
  static_assert(BK * NP / G % NT == 0, "every thread copies the same number of W^T chunks");
  static_assert(BM >= 2 && BM % G == 0, "tile rows");
};

// Shared memory of one block, carved in this order with every part 16-byte aligned
// (fastexpr/backends/cuda.py computes the same size).
template <class C>
struct Smem {
  typedef typename C::T T;
  T* h;                // activations, column-major: h[k BM + swizzled row], NP x BM
  T* w;                // two stages of BK rows of W^T, row stride NP
  T* edge;             // pre-activation of the last row of each thread row: edge[ty NP + col]
  u64* row_hash;       // [row][slot] partial pattern hash, summed over the layers
  T* row_sq;           // [row][slot] partial squared length of the pair (row-1, row), this layer
  unsigned* row_chg;   // [row][slot] the pair's layer code differs, this layer
  unsigned* net_row;   // [row] the pair's whole-network code differs (layers so far)
  double* in0;         // [row] input length of the pair (row-1, row)
  long long* seg;      // [row] first basis vector of the row's layer-1 combination
  double* w0;          // [row] its weight
  double* w1;          // [row] the weight of basis vector seg+1
  unsigned* warp_trans;  // [warp] transitions of this layer
  u64* blk_trans;      // [L] block totals
  u64* blk_pc;         // [L]
  double* blk_len;     // [L+1]
  u64* blk_net;        // [1]
  int* blk_bad;        // [1] first layer with an inf or NaN pre-activation in this block's tiles; 0: none
  size_t bytes;

  template <typename P>
  __device__ static P* carve(unsigned char* base, size_t& off, size_t count) {
    P* p = reinterpret_cast<P*>(base + off);
    off += (count * sizeof(P) + 15) & ~size_t(15);
    return p;
  }

  __device__ Smem(unsigned char* base, int L) {
    size_t off = 0;
    h = carve<T>(base, off, (size_t)C::NP * C::BM);
    w = carve<T>(base, off, (size_t)2 * C::BK * C::NP);
    edge = carve<T>(base, off, (size_t)C::TR * C::NP);
    row_hash = carve<u64>(base, off, C::BM * C::WPR);
    row_sq = carve<T>(base, off, C::BM * C::WPR);
    row_chg = carve<unsigned>(base, off, C::BM * C::WPR);
    net_row = carve<unsigned>(base, off, C::BM);
    in0 = carve<double>(base, off, C::BM);
    seg = carve<long long>(base, off, C::BM);
    w0 = carve<double>(base, off, C::BM);
    w1 = carve<double>(base, off, C::BM);
    warp_trans = carve<unsigned>(base, off, C::NW);
    blk_trans = carve<u64>(base, off, L);
    blk_pc = carve<u64>(base, off, L);
    blk_len = carve<double>(base, off, L + 1);
    blk_net = carve<u64>(base, off, 1);
    blk_bad = carve<int>(base, off, 1);
    bytes = off;
  }
};

// ---------------------------------------------------------------------------------------------
// Arguments.

template <typename T>
struct Net {
  const T* wt;        // layers 2..L: W_d^T padded to (npad[d-2], NP), concatenated
  const T* bias;      // layers 2..L: b_d padded to NP, concatenated
  const u64* keys;    // layers 1..L: (NP, 2) pattern keys of codes +1 and -1, concatenated
  const int* acts;    // (L,) activation codes
  const int* npad;    // (L,) widths of layers 1..L rounded up to BK
  const double* bias1;  // (NP,) layer-1 bias
  int L;
};

struct Traj {
  int kind;             // fx::Kind
  long long n;          // N: samples t_i = i / (N-1)
  const double* proj;   // (k, NP) projected basis
  long long k;          // basis vectors (POLYLINE: vertices)
  const double* verts;  // POLYLINE: (k, m) vertices / scale
  const double* seglen; // POLYLINE: (k-1,) segment lengths / scale
  const double* geom;   // (scale, line_norm, coords 2x2 row-major): the plan's input-length fields
  int m;                // input dimension
};

// ---------------------------------------------------------------------------------------------
// Trajectory: layer-1 combination of a sample and the input length of a pair (float64).

__device__ __forceinline__ void basis_weights(const Traj& tj, long long i, long long* j, double* a0, double* a1) {
  if (tj.kind == fx::POLYLINE) {
    double f;
    fx::polyline_segment(i, tj.n, tj.k, j, &f);
    *a0 = 1.0 - f;
    *a1 = f;
  } else {
    *j = 0;
    fx::two_vector_coeffs(tj.kind, fx::sample_t(i, tj.n), a0, a1);
  }
}

// Length of the input segment from sample ip to sample i (ip <= i).
__device__ double input_step(const Traj& tj, long long ip, long long i) {
  if (ip == i) return 0.0;
  const double scale = tj.geom[0];
  if (tj.kind != fx::POLYLINE)
    return scale * fx::two_vector_step(tj.kind, fx::sample_t(ip, tj.n), fx::sample_t(i, tj.n), tj.geom[1], tj.geom + 2);
  long long jp, j;
  double ap0, ap1, a0, a1;
  basis_weights(tj, ip, &jp, &ap0, &ap1);
  basis_weights(tj, i, &j, &a0, &a1);
  if (j == jp) return scale * fabs(a1 - ap1) * tj.seglen[j];
  return scale * fx::vertex_step(tj.verts, tj.m, jp, ap0, ap1, j, a0, a1);
}

// ---------------------------------------------------------------------------------------------
// Streaming W^T through the two shared stages: the cursor points at the next BK x NP tile to
// load (layer d >= 2, its k-tile kt of nkt) and cycles through layers 2..L, tile after tile;
// the layers' W^T lie one after the other, so the next tile always starts BK NP further on,
// except after layer L. A stage is a contiguous copy: thread tid copies chunks tid, tid + NT, ...

template <class C>
struct Cursor {
  typedef typename C::T T;
  const T* src;
  int d, kt, nkt;

  __device__ void start(const Net<T>& net, const T* at, int layer) {
    src = at;
    d = layer;
    kt = 0;
    nkt = net.npad[layer - 2] / C::BK;
  }

  __device__ void advance(const Net<T>& net) {
    if (++kt < nkt) src += C::BK * C::NP;
    else if (d < net.L) start(net, src + C::BK * C::NP, d + 1);
    else start(net, net.wt, 2);
  }

  __device__ void stage(T* dst, int tid) const {
    const T* from = src + tid * C::G;
    T* to = dst + tid * C::G;
#pragma unroll
    for (int j = 0; j < C::BK * C::NP / C::G / C::NT; ++j) cp_async16(to + j * C::NT * C::G, from + j * C::NT * C::G);
  }
};

// ---------------------------------------------------------------------------------------------
// The layers. acc[i][q G + e] is z of row ty TM + i, column (tx + q TC) G + e.

// Layer 1 from the projected basis, in float64, cast to T.
template <class C, typename T>
__device__ __forceinline__ void first_layer(T (&acc)[C::TM][C::CN], const Smem<C>& s, const Traj& tj,
                                            const Net<T>& net, int tx, int ty) {
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
    const int r = ty * C::TM + i;
    const double a0 = s.w0[r], a1 = s.w1[r];
    const double* p0 = tj.proj + s.seg[r] * C::NP;
    const double* p1 = p0 + C::NP;
#pragma unroll
    for (int q = 0; q < C::CN / C::G; ++q)
#pragma unroll
      for (int e = 0; e < C::G; ++e) {
        const int col = (tx + q * C::TC) * C::G + e;
        acc[i][q * C::G + e] = (T)(a0 * p0[col] + a1 * p1[col] + net.bias1[col]);
      }
  }
}

// Layer d >= 2: acc = b_d + h W_d^T over nin (padded) inputs.
template <class C, typename T>
__device__ __forceinline__ void hidden_layer(T (&acc)[C::TM][C::CN], const Smem<C>& s, const Net<T>& net,
                                             const T* bias, int nin, Cursor<C>& next, long long& step, int tid,
                                             int tx, int ty) {
#pragma unroll
  for (int q = 0; q < C::CN / C::G; ++q)
#pragma unroll
    for (int e = 0; e < C::G; ++e) {
      const T b = bias[(tx + q * C::TC) * C::G + e];
#pragma unroll
      for (int i = 0; i < C::TM; ++i) acc[i][q * C::G + e] = b;
    }
  for (int kt = 0; kt * C::BK < nin; ++kt, ++step) {
    cp_async_wait_all();  // this thread's part of stage `step` has landed
    __syncthreads();      // everyone's part has, and stage step+1 is no longer read
    next.stage(s.w + ((step + 1) & 1) * C::BK * C::NP, tid);
    cp_async_commit();
    next.advance(net);
    const T* w = s.w + (step & 1) * C::BK * C::NP;
#pragma unroll
    for (int kk = 0; kk < C::BK; ++kk) {
      const T* hk = s.h + (kt * C::BK + kk) * C::BM;
      const int sw = (kk / C::G) & C::SWZ;
      __align__(16) T a[C::TM];
      __align__(16) T b[C::CN];
#pragma unroll
      for (int u = 0; u < C::TM / C::G; ++u) copy16(a + u * C::G, hk + (ty * C::TM / C::G + (u ^ sw)) * C::G);
#pragma unroll
      for (int q = 0; q < C::CN / C::G; ++q) copy16(b + q * C::G, w + kk * C::NP + (tx + q * C::TC) * C::G);
#pragma unroll
      for (int i = 0; i < C::TM; ++i)
#pragma unroll
        for (int j = 0; j < C::CN; ++j) acc[i][j] += a[i] * b[j];
    }
  }
}

// Codes, transitions, hash keys, activation and lengths of layer d while z is in registers;
// leaves the activations in s.h and the per-row partials in the row slots.
template <int ACT, class C, typename T>
__device__ __forceinline__ void epilogue(const T (&acc)[C::TM][C::CN], const Smem<C>& s, const u64* keys, int tx,
                                         int ty, int lane, int warp) {
  T sq[C::TM];
  u64 hs[C::TM];
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
    sq[i] = T(0);
    hs[i] = 0;
  }
  unsigned chg = 0, trans = 0;  // chg: bit i = row i's code differs from the row above
  __syncthreads();  // every read of the previous activations is done

  // Pass 1: every row's keys and activation; the pairs inside this thread's rows.
#pragma unroll
  for (int q = 0; q < C::CN / C::G; ++q) {
#pragma unroll
    for (int e = 0; e < C::G; ++e) {
      const int j = q * C::G + e, col = (tx + q * C::TC) * C::G + e;
      u64 kplus = 0, kminus = 0;
      if (ACT != fx::IDENTITY) {
        kplus = keys[2 * col];
        kminus = keys[2 * col + 1];
      }
      __align__(16) T hv[C::TM];
      int cprev = 0;
      T hprev = T(0);
#pragma unroll
      for (int i = 0; i < C::TM; ++i) {
        const T z = acc[i][j];
        const int c = fx::region_code(ACT, z);
        const T h = fx::activate(ACT, z);
        sq[i] += z * T(0);
        hs[i] += c > 0 ? kplus : (c < 0 ? kminus : 0ULL);
        if (i > 0) {
          const int dc = c - cprev;
          trans += dc < 0 ? -dc : dc;
          chg |= (unsigned)(dc != 0) << i;
          const T dh = h - hprev;
          sq[i] += dh * dh;
        }
        hv[i] = h;
        cprev = c;
        hprev = h;
      }
      T* hc = s.h + col * C::BM;
      const int sw = (col / C::G) & C::SWZ;
#pragma unroll
      for (int u = 0; u < C::TM / C::G; ++u) copy16(hc + (ty * C::TM / C::G + (u ^ sw)) * C::G, hv + u * C::G);
      s.edge[ty * C::NP + col] = acc[C::TM - 1][j];
    }
  }
  __syncthreads();  // activations and edge rows are visible

  // Pass 2: the pair (last row of the thread row above, this thread's first row).
  if (ty > 0) {
#pragma unroll
    for (int q = 0; q < C::CN / C::G; ++q) {
#pragma unroll
      for (int e = 0; e < C::G; ++e) {
        const int j = q * C::G + e, col = (tx + q * C::TC) * C::G + e;
        const T zp = s.edge[(ty - 1) * C::NP + col], z = acc[0][j];
        const int dc = fx::region_code(ACT, z) - fx::region_code(ACT, zp);
        trans += dc < 0 ? -dc : dc;
        chg |= (unsigned)(dc != 0);
        const T dh = fx::activate(ACT, z) - fx::activate(ACT, zp);
        sq[0] += dh * dh;
      }
    }
  }

  // Per-row partials over the lanes sharing a row; one slot per (row, warp).
  const bool leader = (lane & (C::TCW - 1)) == 0;
  const unsigned group_bits = C::TCW == 32 ? FULL_MASK : (1u << C::TCW) - 1u;
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
    const T v = group_sum<C::TCW>(sq[i]);
    const u64 hsum = group_sum<C::TCW>(hs[i]);
    const unsigned ballot = __ballot_sync(FULL_MASK, (chg >> i) & 1u);
    if (leader) {
      const int slot = (ty * C::TM + i) * C::WPR + tx / 32;
      s.row_sq[slot] = v;
      s.row_hash[slot] += hsum;
      s.row_chg[slot] = ((ballot >> lane) & group_bits) != 0u;
    }
  }
  trans = group_sum<32>(trans);
  if (lane == 0) s.warp_trans[warp] = trans;
  __syncthreads();  // every row slot of this layer is written
}

// Position of row r, column k in the activation tile s.h (the swizzle of the epilogue's stores).
template <class C>
__device__ __forceinline__ int h_index(int k, int r) {
  const int u = (r % C::TM) / C::G, sw = (k / C::G) & C::SWZ;
  return k * C::BM + ((r / C::TM) * (C::TM / C::G) + (u ^ sw)) * C::G + r % C::G;
}

// Norm of the step from row r-1 to row r of this layer's activations (s.h), in float64 and
// scaled so that no square under- or overflows: the slow path of finalize_layer.
template <class C>
__device__ double scaled_step(const Smem<C>& s, int r) {
  fx::ScaledNorm norm;
  for (int k = 0; k < C::NP; ++k) norm.add((double)s.h[h_index<C>(k, r)] - (double)s.h[h_index<C>(k, r - 1)]);
  return norm.value();
}

// Warp 0: fold layer d's row slots into the block totals. Row 0 has no pair (its change flag
// and input step are 0) but its sum flags a non-finite pre-activation like every other row's.
template <class C>
__device__ void finalize_layer(const Smem<C>& s, int d, int lane) {
  typedef typename C::T T;
  double len = 0.0, len0 = 0.0;
  unsigned pc = 0, trans = 0;
  bool finite = true;
  for (int r = lane; r < C::BM; r += 32) {
    T v = T(0);
    unsigned c = 0;
    for (int k = 0; k < C::WPR; ++k) {
      v += s.row_sq[r * C::WPR + k];
      c |= s.row_chg[r * C::WPR + k];
    }
    if (v != v)
      finite = false;
    else if (r > 0)
      len += v >= fx::SafeSum<T>::lo && v <= fx::SafeSum<T>::hi ? (double)fx_sqrt(v) : scaled_step(s, r);
    pc += c;
    s.net_row[r] |= c;
    if (d == 1) len0 += s.in0[r];
  }
  if (__ballot_sync(FULL_MASK, !finite) != 0u && lane == 0 && (*s.blk_bad == 0 || d < *s.blk_bad)) *s.blk_bad = d;
  for (int k = lane; k < C::NW; k += 32) trans += s.warp_trans[k];
  len = group_sum<32>(len);
  len0 = group_sum<32>(len0);
  pc = group_sum<32>(pc);
  trans = group_sum<32>(trans);
  if (lane == 0) {
    s.blk_len[d] += len;
    s.blk_pc[d - 1] += pc;
    s.blk_trans[d - 1] += trans;
    if (d == 1) s.blk_len[0] += len0;
  }
}

// Warp 0, after layer L: count the tile's network changes, emit the hashes of the rows that
// start a new pattern (row 0 only for the first sample of the range) and clear the row state.
template <class C>
__device__ void emit_tile(const Smem<C>& s, long long s0, long long start, long long stop, u64* hcount,
                          u64* hashes, long long cap, int lane) {
  __syncwarp();  // finalize_layer's lanes wrote net_row of other lanes' rows
  unsigned net = 0;
  for (int r0 = 0; r0 < C::BM; r0 += 32) {
    const int r = r0 + lane;
    u64 h = 0;
    bool emit = false;
    if (r < C::BM) {
      for (int k = 0; k < C::WPR; ++k) {
        h += s.row_hash[r * C::WPR + k];
        s.row_hash[r * C::WPR + k] = 0;
      }
      const unsigned c = s.net_row[r];  // always 0 for row 0
      s.net_row[r] = 0;
      net += c;
      emit = s0 + r < stop && (r == 0 ? s0 == start : c != 0u);
    }
    const unsigned ballot = __ballot_sync(FULL_MASK, emit);
    if (ballot != 0u) {
      u64 base = 0;
      if (lane == 0) base = atomicAdd(hcount, (u64)__popc(ballot));
      base = __shfl_sync(FULL_MASK, base, 0);
      const u64 slot = base + __popc(ballot & ((1u << lane) - 1u));
      if (emit && slot < (u64)cap) hashes[slot] = h;
    }
  }
  net = group_sum<32>(net);
  if (lane == 0) *s.blk_net += net;
}

// ---------------------------------------------------------------------------------------------
// The kernel body.

template <class C, typename T>
__device__ __forceinline__ void measure(const Net<T>& net, const Traj& tj, long long start, long long stop,
                                        int worker, int workers, u64* trans_out, u64* pc_out, u64* net_out,
                                        double* len_out, int* bad_out, u64* hcount, u64* hashes, long long cap,
                                        long long smem_size, int* error) {
  extern __shared__ __align__(16) unsigned char fx_smem[];
  const Smem<C> s(fx_smem, net.L);
  if (s.bytes > (size_t)smem_size) {  // the launch gave less shared memory than the layout needs
    if (threadIdx.x == 0) atomicOr(error, FX_ERROR_SHARED_MEMORY);
    return;  // the whole block, before any barrier
  }
  const int L = net.L;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int ty = tid / C::TC, tx = tid % C::TC;

  const uint4 zero = {0u, 0u, 0u, 0u};
  for (size_t off = (size_t)tid * 16; off < s.bytes; off += (size_t)C::NT * 16)
    *reinterpret_cast<uint4*>(fx_smem + off) = zero;
  __syncthreads();

  Cursor<C> next;       // the next W^T tile to stage
  long long step = 0;   // W^T tiles consumed so far; tile `step` sits in stage step & 1
  if (L >= 2) {
    next.start(net, net.wt, 2);
    next.stage(s.w, tid);
    cp_async_commit();
    next.advance(net);
  }

  const long long pairs = stop - start - 1;
  const long long ntiles = pairs > 0 ? (pairs + C::BM - 2) / (C::BM - 1) : 1;
  T acc[C::TM][C::CN];
  for (long long tile = worker; tile < ntiles; tile += workers) {
    const long long s0 = start + tile * (C::BM - 1);
    __syncthreads();  // warp 0 is done with the previous tile's rows
    for (int r = tid; r < C::BM; r += C::NT) {
      const long long i = fx_min(s0 + r, stop - 1);
      basis_weights(tj, i, &s.seg[r], &s.w0[r], &s.w1[r]);
      s.in0[r] = r > 0 ? input_step(tj, fx_min(s0 + r - 1, stop - 1), i) : 0.0;
    }
    __syncthreads();
    first_layer<C>(acc, s, tj, net, tx, ty);
    const T* bias = net.bias;
    const u64* keys = net.keys;
    for (int d = 1; d <= L; ++d) {
      if (d > 1) {
        hidden_layer<C>(acc, s, net, bias, net.npad[d - 2], next, step, tid, tx, ty);
        bias += C::NP;
      }
      switch (net.acts[d - 1]) {
        case fx::RELU: epilogue<fx::RELU, C>(acc, s, keys, tx, ty, lane, warp); break;
        case fx::HARDTANH: epilogue<fx::HARDTANH, C>(acc, s, keys, tx, ty, lane, warp); break;
        default: epilogue<fx::IDENTITY, C>(acc, s, keys, tx, ty, lane, warp); break;
      }
      keys += 2 * C::NP;
      if (warp == 0) {
        finalize_layer<C>(s, d, lane);
        if (d == L) emit_tile<C>(s, s0, start, stop, hcount, hashes, cap, lane);
      }
    }
  }
  cp_async_wait_all();  // the last prefetch must land before the block exits
  __syncthreads();      // warp 0's totals are visible
  for (int d = tid; d < L; d += C::NT) {
    atomicAdd(trans_out + d, s.blk_trans[d]);
    atomicAdd(pc_out + d, s.blk_pc[d]);
  }
  for (int d = tid; d <= L; d += C::NT) atomicAdd(len_out + d, s.blk_len[d]);
  if (tid == 0) atomicAdd(net_out, *s.blk_net);
  if (tid == 0 && *s.blk_bad != 0) atomicMin(bad_out, *s.blk_bad);
}

}  // namespace fxc

// ---------------------------------------------------------------------------------------------
// Entry points, launched with `workers` blocks per trajectory (grid workers x B). Per trajectory
// b = blockIdx.x / workers, traj[6 b ..] = (kind, n_points, offset of its projected basis in
// proj, basis vectors k, offset of its vertices in verts, offset of its segment lengths in
// seglen) and geom[6 b ..] = (scale, line_norm, coords row-major); outputs are per trajectory:
// trans/pcs (B, L), net (B,), lengths (B, L+1), overflow (B,) (atomicMin'd with the first layer
// that had an inf or NaN pre-activation), hcount (B,) (hashes emitted, written or not) and
// hashes (B, cap), of which the first min(hcount, cap) are written (cap >= stop-start suffices).
// Counters must be zero (or hold earlier totals) on entry, overflow larger than L; `error`
// (one int) collects FX_ERROR_* bits and should be zero on entry.

#define FX_KERNEL_PARAMS(T)                                                                            \
  const T *wt, const T *bias, const unsigned long long *keys, const int *acts, const int *npad, int L,  \
      const double *bias1, const double *proj, const double *geom, const double *verts,                 \
      const double *seglen, const long long *traj, int m, long long start, long long stop,              \
      unsigned long long *trans, unsigned long long *pcs, unsigned long long *net, double *lengths,     \
      int *overflow, unsigned long long *hcount, unsigned long long *hashes, long long cap,             \
      long long smem_size, int workers, int *error

// FX_KERNEL(name, dtype, threads NT, tile rows BM, rows per thread TM, columns per thread CN,
//           W^T rows per stage BK, minimum resident blocks per SM): one line per configuration.
#define FX_KERNEL(NAME, T, NT, BM, TM, CN, BK, MINB)                                                   \
  extern "C" __global__ void __launch_bounds__(NT, MINB) NAME(FX_KERNEL_PARAMS(T)) {                 \
    typedef fxc::Cfg<T, NT, BM, TM, CN, BK> C;                                                         \
    const long long b = blockIdx.x / workers;                                                          \
    const long long* tr = traj + 6 * b;                                                                \
    const fxc::Net<T> nt = {wt, bias, keys, acts, npad, bias1, L};                                     \
    const fxc::Traj tj = {(int)tr[0], tr[1], proj + tr[2], tr[3], verts + tr[4], seglen + tr[5],       \
                          geom + 6 * b, m};                                                            \
    fxc::measure<C, T>(nt, tj, start, stop, (int)(blockIdx.x % workers), workers, trans + b * L,       \
                       pcs + b * L, net + b, lengths + b * (L + 1), overflow + b, hcount + b,          \
                       hashes + b * cap, cap, smem_size, error);                                       \
  }

// float32: 64 accumulators per thread except at width 64 (32). Launch bounds that leave no spills
// (ptxas: 128 registers at width 64, up to 255 at 128-512; width 1024's 512 threads cap it at 128):
// 1.08-1.14x the rate of the earlier 3 and 2 blocks per SM, which spilled 432-652 bytes per thread
// (bench/kernel_variants.py on an H100, 2026-11-24; bench/RESULTS.md section 5).
FX_KERNEL(measure_f32_w64, float, 256, 128, 4, 8, 32, 2)
FX_KERNEL(measure_f32_w128, float, 256, 128, 8, 8, 32, 1)
FX_KERNEL(measure_f32_w256, float, 256, 64, 8, 8, 16, 1)
FX_KERNEL(measure_f32_w512, float, 256, 32, 8, 8, 8, 1)
FX_KERNEL(measure_f32_w1024, float, 512, 32, 8, 8, 8, 1)
// float64: 32 accumulators per thread (64 registers). Two blocks per SM although they spill
// (264-320 byte stacks): one block per SM without spills ran at 0.78-0.91x (same measurement).
FX_KERNEL(measure_f64_w64, double, 256, 128, 4, 8, 16, 2)
FX_KERNEL(measure_f64_w128, double, 256, 64, 4, 8, 8, 2)
FX_KERNEL(measure_f64_w256, double, 256, 32, 4, 8, 4, 2)
FX_KERNEL(measure_f64_w512, double, 256, 16, 4, 8, 2, 2)
FX_KERNEL(measure_f64_w1024, double, 256, 8, 2, 16, 4, 1)
