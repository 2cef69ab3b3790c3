// CPU kernel of latentquant::logistic_loss_grad: the weighted softmax cross-entropy of a batch of
// multinomial logistic regressions (one per target, shared features) and its gradient, in one pass.
//
//   loss[t]       = sum_n w[t,n] * (logsumexp_c z[t,c,n] - z[t,labels[t,n],n])
//   grad[t,c,:]   = sum_n w[t,n] * (softmax_c z[t,:,n] - onehot(labels[t,n]))[c] * x[:,n]
//   z[t,c,n]      = sum_f weights[t,c,f] * x1t[f,n]
//
// Same semantics as the oracle (src/latentquant/reference/logistic.py): logits more than 80 below a
// sample's largest are raised to that floor before exp (kLogFloor), so exp never leaves its polynomial
// range; padded classes (intercept -1e30) therefore contribute e^-80 relative, nothing at float
// precision. NaN or +Inf logits make the loss NaN, as in the oracle.
//
// Layout: samples are walked in blocks of kBlock. For each block and target the (C, kBlock) logits are
// formed in a buffer that stays in L1 (register-tiled over classes and samples), turned in place into
// exp and then into the residual softmax - onehot, and contracted with the block's feature rows into
// per-block gradient tiles. x1t is feature-major, so every inner loop runs over contiguous samples and
// vectorizes; the loops run over whole blocks (a short last block is zero-padded, with weight 0).
//
// exp and log are the polynomial ones below (libm's do not vectorize without -ffast-math), on whole
// vectors. Accuracy (eps = 2^-23 in float, 2^-52 in double):
// - exp_floor: Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2 (ln2 split in two parts), then the Taylor
//   polynomial of degree 7 (float; truncation < 7.5e-9 relative, 0.06 eps) or 13 (double; < 6e-18,
//   0.03 eps) by Horner; 2^k is put in the exponent bits. Measured (float): <= 0.7 eps relative on [-80, 0].
// - log_pos (its argument, the per-sample total, is >= 1: the top class contributes exp(0) = 1):
//   x = 2^k m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716,
//   series to s^9 (float; truncation < 3e-9 relative) or s^21 (double; < 1e-18). Measured: <= 1.6 eps
//   absolute on [1, 16] (2.6 ulps of results near 0).
// tests/test_logistic_kernel.py reads both out through the op (exp(a) / total and log(total), one sample
// per target) and bounds their errors against float64 math.
//
// Determinism: the samples are cut into chunks of kBlocksPerChunk blocks, a partition that depends only on
// N; each chunk's partial sums (float per block, double across the chunk's blocks) go to its own buffer,
// and the buffers are added in chunk order. Results do not depend on the number of threads.
//
// Instruction sets: the kernel body is one always-inline template compiled three times, for the x86-64
// baseline (16-byte vectors), with __attribute__((target("avx2,fma"))) (32 bytes) and with AVX-512 (F, DQ, VL,
// BW; 64 bytes); the widest the CPU has (checked at run time) runs, float64 at most the AVX2 copy
// (vector_bytes_for), unless LATENTQUANT_DISABLE_AVX512=1 (stop at AVX2) or LATENTQUANT_DISABLE_AVX2=1 (the
// baseline), which the tests use to run every copy. The copies differ only in rounding (FMA contraction, the
// lane order of sums). Measured on the 2-core Zen 4 (N = 50,000,
// 12 latents x 6 sources, float32, ms per call of one target): dense C = 4 0.29 (AVX2 0.64), C = 15 1.04
// (1.37); one-hot C = 15 3.26 (4.91).
//
// logistic_fit_lbfgs (at the end) runs the whole L-BFGS of latentquant.metrics.logistic on these kernels,
// target by target, on threads of its own.

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/library.h>

#include "../common.h"

// Every helper is force-inlined, so the one body compiles separately into each instruction-set entry point.
#define LQ_INLINE inline __attribute__((always_inline))

#if defined(__GNUC__) && !defined(__clang__)
// 32-byte vectors pass only between force-inlined helpers of the AVX2 entry point: the ABI note is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LQ_HAVE_AVX2_PATH 1
#define LQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define LQ_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#else
#define LQ_HAVE_AVX2_PATH 0
#endif

namespace latentquant {
namespace {

constexpr const char* kOp = "logistic_loss_grad";
constexpr int64_t kBlock = 256;         // samples per block: logits (C x kBlock) and x rows stay in L1
constexpr int64_t kBlocksPerChunk = 8;  // 2048 samples: the unit of the deterministic reduction
constexpr double kLogFloor = -80.0;     // _LOG_FLOOR of the oracle

template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using U = uint32_t;
  static constexpr int kMant = 23;
  static constexpr U kBias = 127;
  static constexpr U kSqrtHalf = 0x3f3504f3;  // bits of sqrt(1/2)
  static constexpr U kOne = 0x3f800000;
  static constexpr U kMantMask = 0x007fffff;
  static constexpr U kTwoPowMant = 0x4b000000;  // bits of 2^23
};
template <>
struct Bits<double> {
  using U = uint64_t;
  static constexpr int kMant = 52;
  static constexpr U kBias = 1023;
  static constexpr U kSqrtHalf = 0x3fe6a09e667f3bcdULL;
  static constexpr U kOne = 0x3ff0000000000000ULL;
  static constexpr U kMantMask = 0x000fffffffffffffULL;
  static constexpr U kTwoPowMant = 0x4330000000000000ULL;  // bits of 2^52
};

// ln 2 split so that k * kLn2Hi is exact for |k| < 2^8 (float) / 2^11 (double).
template <typename T>
constexpr T kLn2Hi = T(0.693359375);
template <>
constexpr double kLn2Hi<double> = 6.93147180369123816490e-01;
template <typename T>
constexpr T kLn2Lo = T(-2.12194440e-4);
template <>
constexpr double kLn2Lo<double> = 1.90821492927058770002e-10;

// GNU vector types (gcc, clang) of VB bytes: the kernel is written on whole vectors, so every sample loop
// runs in SIMD registers with the register tiling below, whatever the auto-vectorizer would do.
template <typename T, int VB>
struct Lanes {
  typedef T type __attribute__((vector_size(VB)));
};

template <typename T, int VB>
struct Vec {
  typedef typename Lanes<T, VB>::type type;
  typedef typename Bits<T>::U bits __attribute__((vector_size(VB)));
  typedef T half __attribute__((vector_size(VB / 2)));
  typedef double wide __attribute__((vector_size(VB)));  // VB / 8 double lanes
  static constexpr int64_t kWidth = VB / sizeof(T);
};

template <typename V, typename T>
LQ_INLINE V load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
LQ_INLINE void store(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// acc += v in double: a double vector holds half the lanes of a float one, so float vectors go in halves
// (a whole float vector converted at once makes an over-wide vector that gcc spills to the stack).
template <typename T, int VB>
LQ_INLINE void add_wide(typename Vec<T, VB>::wide& acc, const typename Vec<T, VB>::type& v) {
  using DV = typename Vec<T, VB>::wide;
  if constexpr (sizeof(T) == sizeof(double)) {
    acc += v;
  } else {
    using H = typename Vec<T, VB>::half;
    H lo, hi;
    __builtin_memcpy(&lo, &v, sizeof(H));
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
    acc += __builtin_convertvector(lo, DV);
    acc += __builtin_convertvector(hi, DV);
  }
}

// Lane-wise combinations for hreduce (functors, not lambdas: always inlined, also into the AVX2 copies).
struct LaneAdd {
  template <typename H>
  LQ_INLINE H operator()(const H& lo, const H& hi) const {
    return lo + hi;
  }
};
struct LaneMax {
  template <typename H>
  LQ_INLINE H operator()(const H& lo, const H& hi) const {
    return lo > hi ? lo : hi;
  }
};

// One lane from all the lanes of a vector, by halving (a fixed order: Combine(lane l, lane l + W/2), and so
// on): the sum with LaneAdd, the largest lane with LaneMax.
template <typename T, int VB, typename Combine>
LQ_INLINE T hreduce(const typename Lanes<T, VB>::type& v) {
  if constexpr (VB == static_cast<int>(sizeof(T))) {
    return v[0];
  } else {
    using H = typename Lanes<T, VB / 2>::type;
    H lo, hi;
    __builtin_memcpy(&lo, &v, sizeof(H));
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
    return hreduce<T, VB / 2, Combine>(Combine{}(lo, hi));
  }
}

// Horner evaluation of sum_{i >= I} c[i] r^(i - I), unrolled at compile time.
template <size_t I = 0, typename R, typename T, size_t K>
LQ_INLINE auto horner(const R& r, const T (&c)[K]) {
  if constexpr (I + 1 == K) {
    return c[I];
  } else {
    return horner<I + 1>(r, c) * r + c[I];
  }
}

template <typename T>
struct ExpPoly;
template <>
struct ExpPoly<float> {  // 1 / i!, i = 0..7
  static constexpr float c[8] = {1.0f, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040};
};
template <>
struct ExpPoly<double> {  // 1 / i!, i = 0..13
  static constexpr double c[14] = {1.0,
                                   1.0,
                                   0.5,
                                   1.0 / 6,
                                   1.0 / 24,
                                   1.0 / 120,
                                   1.0 / 720,
                                   1.0 / 5040,
                                   1.0 / 40320,
                                   1.0 / 362880,
                                   1.0 / 3628800,
                                   1.0 / 39916800,
                                   1.0 / 479001600,
                                   1.0 / 6227020800.0};
};

template <typename T>
struct LogPoly;
template <>
struct LogPoly<float> {  // 1 / (2i + 1), i = 0..4
  static constexpr float c[5] = {1.0f, 1.0f / 3, 1.0f / 5, 1.0f / 7, 1.0f / 9};
};
template <>
struct LogPoly<double> {  // 1 / (2i + 1), i = 0..10
  static constexpr double c[11] = {1.0,      1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9, 1.0 / 11,
                                   1.0 / 13, 1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21};
};

// exp(max(x, -80)) lane by lane; NaN stays NaN. No branches, no libm: bit operations and a polynomial.
template <typename T, int VB>
LQ_INLINE typename Vec<T, VB>::type exp_floor(const typename Vec<T, VB>::type& x) {
  using B = Bits<T>;
  using V = typename Vec<T, VB>::type;
  using U = typename Vec<T, VB>::bits;
  const V y = x < T(kLogFloor) ? T(kLogFloor) : x;  // a NaN lane fails the comparison and stays NaN
  // Round y / ln 2 to the nearest integer k by adding 1.5 * 2^mant: k lands in the low mantissa bits.
  const T shifter = T(1.5) * std::bit_cast<T>(B::kTwoPowMant);
  const V t = y * T(1.44269504088896340736) + shifter;
  const V k = t - shifter;
  const V r = (y - k * kLn2Hi<T>) - k * kLn2Lo<T>;
  // 2^k: the low bits of t are k + 2^(mant - 1); shifting them into the exponent field drops the rest.
  const V scale = reinterpret_cast<V>(((reinterpret_cast<U>(t) + B::kBias) << B::kMant));
  return horner(r, ExpPoly<T>::c) * scale;
}

// log(x) lane by lane, for finite x >= the smallest normal (x >= 1 here).
template <typename T, int VB>
LQ_INLINE typename Vec<T, VB>::type log_pos(const typename Vec<T, VB>::type& x) {
  using B = Bits<T>;
  using V = typename Vec<T, VB>::type;
  using U = typename Vec<T, VB>::bits;
  // Bias the bits so that the exponent field steps at sqrt(1/2) * 2^k instead of 2^k.
  const U ix = reinterpret_cast<U>(x) + (B::kOne - B::kSqrtHalf);
  // The exponent as a float without an integer conversion (int64 -> double has no AVX2 instruction):
  // (2^mant + e) - (2^mant + bias).
  const T two_pow_mant = std::bit_cast<T>(B::kTwoPowMant);
  const V k = reinterpret_cast<V>((ix >> B::kMant) | B::kTwoPowMant) - (two_pow_mant + T(B::kBias));
  const V m = reinterpret_cast<V>((ix & B::kMantMask) + B::kSqrtHalf);  // in [sqrt(1/2), sqrt(2))
  const V f = m - T(1);
  const V s = f / (T(2) + f);
  const V log_m = T(2) * s * horner(s * s, LogPoly<T>::c);
  return k * kLn2Hi<T> + (k * kLn2Lo<T> + log_m);
}

template <typename T>
struct Problem {
  const T* x;              // x1t (F1, N)
  const T* weights;        // (T, C, F1)
  const int64_t* labels;   // (T, N)
  const T* sample_weight;  // (T, N)
  int64_t n, f1, targets, classes;
};

// Logits of R consecutive classes (rows of w, stride F1) on one block: R rows of kBlock in out. Tiles
// of R classes x 2 vectors of samples: 2R accumulators, each feature row loaded once per tile.
template <int R, typename T, int VB>
LQ_INLINE void logits_rows(const T* w, int64_t f1, const T* x, int64_t ldx, T* out) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  for (int64_t j = 0; j < kBlock; j += 2 * W) {
    V acc[R][2];
    if (f1 == 0) {
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V{};
    } else {
      const V x0 = load<V>(x + j), x1 = load<V>(x + j + W);
      for (int r = 0; r < R; ++r) {
        const T wr = w[r * f1];
        acc[r][0] = wr * x0;
        acc[r][1] = wr * x1;
      }
    }
    for (int64_t f = 1; f < f1; ++f) {
      const V x0 = load<V>(x + f * ldx + j), x1 = load<V>(x + f * ldx + j + W);
      for (int r = 0; r < R; ++r) {
        const T wr = w[r * f1 + f];
        acc[r][0] += wr * x0;
        acc[r][1] += wr * x1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store(out + r * kBlock + j, acc[r][0]);
      store(out + r * kBlock + j + W, acc[r][1]);
    }
  }
}

// Gradient tile: RC residual rows (stride kBlock) times RF feature rows (stride ldx) over one block, summed
// over the block's samples (lanes added in a fixed order) and added in double to g[c * f1 + f].
template <int RC, int RF, typename T, int VB>
LQ_INLINE void grad_tile(const T* res, const T* x, int64_t ldx, int64_t f1, double* g) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  V acc[RC][RF];
  for (int c = 0; c < RC; ++c)
    for (int f = 0; f < RF; ++f) acc[c][f] = V{};
  for (int64_t j = 0; j < kBlock; j += W) {
    V xf[RF];
    for (int f = 0; f < RF; ++f) xf[f] = load<V>(x + f * ldx + j);
    for (int c = 0; c < RC; ++c) {
      const V rc = load<V>(res + c * kBlock + j);
      for (int f = 0; f < RF; ++f) acc[c][f] += rc * xf[f];
    }
  }
  for (int c = 0; c < RC; ++c)
    for (int f = 0; f < RF; ++f) g[c * f1 + f] += static_cast<double>(hreduce<T, VB, LaneAdd>(acc[c][f]));
}

// Tiles of 4 rows, with three tiles of 3 instead of a last tile of 1 or 2 (13 = 3 + 3 + 3 + 4): a thin tile
// has too few independent accumulators to hide the FMA latency and costs about as much as a full one.
// Returns the number of 3-tiles to take first.
inline int64_t tiles_of_three(int64_t n) {
  const int64_t threes = (4 - n % 4) % 4;
  return 3 * threes <= n ? threes : 0;
}

template <int RC, typename T, int VB>
LQ_INLINE void grad_rows(const T* res, const T* x, int64_t ldx, int64_t f1, double* g) {
  int64_t f = 0;
  for (int64_t i = tiles_of_three(f1); i > 0; --i, f += 3) grad_tile<RC, 3, T, VB>(res, x + f * ldx, ldx, f1, g + f);
  for (; f + 4 <= f1; f += 4) grad_tile<RC, 4, T, VB>(res, x + f * ldx, ldx, f1, g + f);
  switch (f1 - f) {
    case 3:
      grad_tile<RC, 3, T, VB>(res, x + f * ldx, ldx, f1, g + f);
      break;
    case 2:
      grad_tile<RC, 2, T, VB>(res, x + f * ldx, ldx, f1, g + f);
      break;
    case 1:
      grad_tile<RC, 1, T, VB>(res, x + f * ldx, ldx, f1, g + f);
      break;
    default:
      break;
  }
}

// Scratch of one chunk: a zero-padded copy of a short block's features, the block's logits (turned into
// exp and then residuals in place), and the block's sample weights and labels (labels as unsigned integers
// of T's width, so they compare lane by lane with T vectors).
template <typename T>
struct Scratch {
  std::vector<T> xpad, z, w;
  std::vector<typename Bits<T>::U> label;
  Scratch(int64_t f1, int64_t classes) : xpad(f1 * kBlock), z(classes * kBlock), w(kBlock), label(kBlock) {}
};

// One target on one block: adds its loss to *loss and its gradient to g (C, F1), both in double.
// Returns false if a label lies outside [0, C) (such a sample matches no class; the caller raises).
template <typename T, int VB>
LQ_INLINE bool block_target(const Problem<T>& p, int64_t t, int64_t s0, int64_t nb, const T* x, int64_t ldx,
                            Scratch<T>& sc, double* loss, double* g) {
  using V = typename Vec<T, VB>::type;
  using U = typename Bits<T>::U;
  using UV = typename Vec<T, VB>::bits;
  using DV = typename Vec<T, VB>::wide;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  const int64_t C = p.classes, f1 = p.f1;
  const T* wt = p.weights + t * C * f1;
  const int64_t* lab = p.labels + t * p.n + s0;
  const T* sw = p.sample_weight + t * p.n + s0;
  T* z = sc.z.data();
  T* w = sc.w.data();
  U* label = sc.label.data();

  uint64_t out_of_range = 0;
  for (int64_t j = 0; j < nb; ++j) {
    out_of_range |= static_cast<uint64_t>(static_cast<uint64_t>(lab[j]) >= static_cast<uint64_t>(C));
    label[j] = static_cast<U>(lab[j]);
    w[j] = sw[j];
  }
  for (int64_t j = nb; j < kBlock; ++j) {  // padding: weight 0 (its features are 0)
    label[j] = 0;
    w[j] = T(0);
  }

  int64_t c = 0;
  for (int64_t i = tiles_of_three(C); i > 0; --i, c += 3)
    logits_rows<3, T, VB>(wt + c * f1, f1, x, ldx, z + c * kBlock);
  for (; c + 4 <= C; c += 4) logits_rows<4, T, VB>(wt + c * f1, f1, x, ldx, z + c * kBlock);
  switch (C - c) {
    case 3:
      logits_rows<3, T, VB>(wt + c * f1, f1, x, ldx, z + c * kBlock);
      break;
    case 2:
      logits_rows<2, T, VB>(wt + c * f1, f1, x, ldx, z + c * kBlock);
      break;
    case 1:
      logits_rows<1, T, VB>(wt + c * f1, f1, x, ldx, z + c * kBlock);
      break;
    default:
      break;
  }

  // Per vector of samples: the top logit and the label's logit, exp in place and their total, the loss
  // term w * (top + log(total) - picked), then the residual exp * (w / total) - w [class == label] in
  // place. The loss is summed in double; total - total is 0, or NaN when total is NaN (a NaN or +Inf
  // logit), which log_pos would not pass on.
  DV loss_lanes = DV{};
  for (int64_t j = 0; j < kBlock; j += W) {
    const UV lj = load<UV>(label + j);
    V top = load<V>(z + j);
    V picked = lj == U(0) ? top : V{};
    for (int64_t k = 1; k < C; ++k) {
      const V zk = load<V>(z + k * kBlock + j);
      top = zk > top ? zk : top;
      picked = lj == static_cast<U>(k) ? zk : picked;
    }
    V total = V{};
    for (int64_t k = 0; k < C; ++k) {
      const V e = exp_floor<T, VB>(load<V>(z + k * kBlock + j) - top);
      store(z + k * kBlock + j, e);
      total += e;
    }
    const V wj = load<V>(w + j);
    const V term = wj * ((top + log_pos<T, VB>(total)) - picked) + (total - total);
    add_wide<T, VB>(loss_lanes, term);
    const V q = wj / total;
    for (int64_t k = 0; k < C; ++k) {
      const V r = load<V>(z + k * kBlock + j) * q;
      store(z + k * kBlock + j, lj == static_cast<U>(k) ? r - wj : r);
    }
  }
  double block_loss = 0.0;
  for (int64_t l = 0; l < VB / 8; ++l) block_loss += loss_lanes[l];
  *loss += block_loss;

  c = 0;
  for (; c + 2 <= C; c += 2) grad_rows<2, T, VB>(z + c * kBlock, x, ldx, f1, g + c * f1);
  if (c < C) grad_rows<1, T, VB>(z + c * kBlock, x, ldx, f1, g + c * f1);
  return out_of_range == 0;
}

// Chunks [c0, c1) of the samples, chunk c being blocks [c * per_chunk, (c + 1) * per_chunk): adds chunk c's
// loss (T) and gradient (T, C, F1) to its own buffer out + c * out_size, and sets bad[c] on a label outside
// [0, C). One scratch serves the whole range.
struct ChunkRange {
  int64_t c0, c1, per_chunk, blocks, out_size;
  double* out;
  char* bad;
};

template <int VB, typename T>
LQ_INLINE void chunk_body(const Problem<T>& p, const ChunkRange& r) {
  Scratch<T> sc(p.f1, p.classes);
  const int64_t grad_size = p.classes * p.f1;
  for (int64_t c = r.c0; c < r.c1; ++c) {
    double* out = r.out + c * r.out_size;
    bool ok = true;
    for (int64_t b = c * r.per_chunk; b < std::min(r.blocks, (c + 1) * r.per_chunk); ++b) {
      const int64_t s0 = b * kBlock;
      const int64_t nb = std::min(kBlock, p.n - s0);
      const T* x = p.x + s0;
      int64_t ldx = p.n;
      if (nb < kBlock) {  // short last block: zero-padded copy
        for (int64_t f = 0; f < p.f1; ++f) {
          T* dst = sc.xpad.data() + f * kBlock;
          std::copy(p.x + f * p.n + s0, p.x + f * p.n + s0 + nb, dst);
          std::fill(dst + nb, dst + kBlock, T(0));
        }
        x = sc.xpad.data();
        ldx = kBlock;
      }
      for (int64_t t = 0; t < p.targets; ++t)
        ok &= block_target<T, VB>(p, t, s0, nb, x, ldx, sc, out + t, out + p.targets + t * grad_size);
    }
    if (!ok) r.bad[c] = 1;
  }
}

// One chunk range of either op (Problem or OneHotProblem: the chunk_body overloads), baseline and AVX2 copies.
template <typename P>
void chunk_generic(const P& p, const ChunkRange& r) {
  chunk_body<16>(p, r);
}

#if LQ_HAVE_AVX2_PATH
template <typename P>
LQ_TARGET_AVX2 void chunk_avx2(const P& p, const ChunkRange& r) {
  chunk_body<32>(p, r);
}

template <typename P>
LQ_TARGET_AVX512 void chunk_avx512(const P& p, const ChunkRange& r) {
  chunk_body<64>(p, r);
}

bool env_off(const char* name) {
  const char* off = std::getenv(name);
  return !(off == nullptr || off[0] == '\0' || off[0] == '0');
}

bool use_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported && !env_off("LATENTQUANT_DISABLE_AVX2");
}

bool use_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  return supported && use_avx2() && !env_off("LATENTQUANT_DISABLE_AVX512");
}
#endif

// Vector bytes of the widest copy the CPU and the environment allow: 64 (AVX-512), 32 (AVX2 + FMA) or 16 (the
// x86-64 baseline). LATENTQUANT_DISABLE_AVX512=1 stops at AVX2, LATENTQUANT_DISABLE_AVX2=1 at the baseline (the
// tests run every copy that way). The copies differ only in rounding (FMA contraction, lane order of sums).
int vector_bytes() {
#if LQ_HAVE_AVX2_PATH
  if (use_avx512()) return 64;
  if (use_avx2()) return 32;
#endif
  return 16;
}

// The checks both ops open with: `features` (x1t or codes, named `name`) 2-D, weights (T, C, F1) 3-D, labels and
// sample_weight 2-D, weights float32 or float64. Returns weights' dtype.
at::ScalarType check_ranks_and_weight_dtype(const char* op, const at::Tensor& features, const char* name,
                                            const at::Tensor& weights, const at::Tensor& labels,
                                            const at::Tensor& sample_weight) {
  check_rank(features, 2, op, name);
  check_rank(weights, 3, op, "weights");
  check_rank(labels, 2, op, "labels");
  check_rank(sample_weight, 2, op, "sample_weight");
  const auto dtype = weights.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble, op, ": weights must be float32 or float64, got ",
                    dtype);
  return dtype;
}

// The checks both ops close with: at least one class, labels and sample_weight of shape (T, N) with T from
// weights and N = features.shape[1], every argument on features' device.
void check_targets_and_device(const char* op, const at::Tensor& features, const char* name,
                              const at::Tensor& weights, const at::Tensor& labels,
                              const at::Tensor& sample_weight) {
  const int64_t n = features.size(1), targets = weights.size(0);
  TORCH_CHECK_VALUE(weights.size(1) >= 1, op, ": weights needs at least one class (shape (T, C, F1), C >= 1), got ",
                    weights.sizes());
  TORCH_CHECK_VALUE(labels.size(0) == targets && labels.size(1) == n, op, ": labels must have shape (T, N) = (",
                    targets, ", ", n, ") from weights and ", name, ", got ", labels.sizes());
  TORCH_CHECK_VALUE(sample_weight.size(0) == targets && sample_weight.size(1) == n, op,
                    ": sample_weight must have shape (T, N) = (", targets, ", ", n, ") from weights and ", name,
                    ", got ", sample_weight.sizes());
  for (const at::Tensor* t : {&weights, &labels, &sample_weight})
    TORCH_CHECK_VALUE(t->device() == features.device(), op, ": all arguments must be on one device, ", name,
                      " is on ", features.device(), " but another on ", t->device());
}

// Splits N samples into chunks of kBlocksPerChunk blocks (fewer, longer chunks when the partial buffers would
// pass ~32 MiB), runs `run` on the chunks in parallel, each into its own (out_size) double partial buffer, and
// adds the partials in chunk order: the partition depends only on N and out_size, so the results do not depend
// on the number of threads. The chunks run the AVX2 copy where use_avx2() allows. Returns the (out_size) double
// sums and the OR of the chunks' flags.
// The vectors the ops and the fit use: vector_bytes(), except at most AVX2's in float64. The float64 fits are
// the reference-precision path, compared in the tests and benchmarks (one-hot fit against dense fit) after 100
// L-BFGS iterations that have not converged on one-hot data, where any change of rounding order moves a
// cross-entropy by up to ~2e-6 (measured, N = 4,000: dense on AVX-512 against one-hot 1.6e-6, both on AVX2
// 1.3e-7); float64 keeps the copy those figures were taken with. float32 (InfoE) takes AVX-512: one zmm per
// one-hot row of 9-16 classes, ~20% faster one-hot fits, dense evaluations 1.3x (C = 15).
int vector_bytes_for(bool is_double) {
  const int vb = vector_bytes();
  return is_double ? std::min(vb, 32) : vb;
}

template <typename P>
using ChunkFn = void (*)(const P&, const ChunkRange&);

// The chunk runner for vectors of vb bytes (vector_bytes_for()).
template <typename P>
ChunkFn<P> pick_chunk_fn(int vb) {
#if LQ_HAVE_AVX2_PATH
  if (vb == 64) return &chunk_avx512<P>;
  if (vb == 32) return &chunk_avx2<P>;
#endif
  (void)vb;
  return &chunk_generic<P>;
}

// The partition of N samples into chunks of kBlocksPerChunk blocks (fewer, longer chunks when the partial
// buffers of out_size doubles each would pass ~32 MiB): depends only on N and out_size.
struct ChunkPlan {
  int64_t blocks, per_chunk, chunks;
};

inline ChunkPlan chunk_plan(int64_t n, int64_t out_size) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t per_chunk = kBlocksPerChunk;
  const int64_t max_chunks = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, out_size));
  if ((blocks + per_chunk - 1) / per_chunk > max_chunks) per_chunk = (blocks + max_chunks - 1) / max_chunks;
  const int64_t chunks = blocks == 0 ? 0 : (blocks + per_chunk - 1) / per_chunk;
  return {blocks, per_chunk, chunks};
}

template <typename P>
std::pair<at::Tensor, char> run_chunked(const P& p, int64_t n, int64_t out_size, int vb) {
  const auto run = pick_chunk_fn<P>(vb);
  const auto [blocks, per_chunk, chunks] = chunk_plan(n, out_size);

  auto partial = at::zeros({std::max<int64_t>(chunks, 1), out_size}, at::TensorOptions().dtype(at::kDouble));
  double* part = partial.data_ptr<double>();
  std::vector<char> bad(chunks, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    run(p, ChunkRange{c0, c1, per_chunk, blocks, out_size, part, bad.data()});
  });
  char flags = 0;
  for (char b : bad) flags |= b;
  for (int64_t c = 1; c < chunks; ++c) {  // fixed order
    const double* src = part + c * out_size;
    for (int64_t i = 0; i < out_size; ++i) part[i] += src[i];
  }
  return {partial[0], flags};
}

void check_inputs(const at::Tensor& x1t, const at::Tensor& weights, const at::Tensor& labels,
                  const at::Tensor& sample_weight) {
  const auto dtype = check_ranks_and_weight_dtype(kOp, x1t, "x1t", weights, labels, sample_weight);
  TORCH_CHECK_VALUE(x1t.scalar_type() == dtype, kOp, ": x1t must have weights' dtype ", dtype, ", got ",
                    x1t.scalar_type());
  TORCH_CHECK_VALUE(sample_weight.scalar_type() == dtype, kOp, ": sample_weight must have weights' dtype ", dtype,
                    ", got ", sample_weight.scalar_type());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, kOp, ": labels must be int64, got ", labels.scalar_type());
  const int64_t f1 = x1t.size(0);
  TORCH_CHECK_VALUE(weights.size(2) == f1, kOp, ": weights must have shape (T, C, F1) with F1 = x1t.shape[0] = ", f1,
                    ", got weights of shape ", weights.sizes());
  check_targets_and_device(kOp, x1t, "x1t", weights, labels, sample_weight);
}

std::tuple<at::Tensor, at::Tensor> logistic_loss_grad_cpu(const at::Tensor& x1t_in, const at::Tensor& weights_in,
                                                          const at::Tensor& labels_in,
                                                          const at::Tensor& sample_weight_in) {
  check_inputs(x1t_in, weights_in, labels_in, sample_weight_in);
  const auto x1t = x1t_in.contiguous();
  const auto weights = weights_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto sample_weight = sample_weight_in.contiguous();
  const int64_t f1 = x1t.size(0), n = x1t.size(1), targets = weights.size(0), classes = weights.size(1);

  const int64_t out_size = targets * (1 + classes * f1);
  at::Tensor sums;
  char flags = 0;
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), kOp, [&] {
    const Problem<scalar_t> p{x1t.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
                              sample_weight.data_ptr<scalar_t>(), n, f1, targets, classes};
    std::tie(sums, flags) = run_chunked(p, n, out_size, vector_bytes_for(std::is_same_v<scalar_t, double>));
  });
  TORCH_CHECK_VALUE(flags == 0, kOp, ": labels must lie in [0, C) = [0, ", classes,
                    "), C = weights.shape[1] the number of classes; got a label outside it");
  sums = sums.to(weights.scalar_type());
  auto loss = sums.slice(0, 0, targets).clone();
  auto grad = sums.slice(0, targets, out_size).reshape({targets, classes, f1}).clone();
  return {loss, grad};
}

// ---- logistic_onehot_loss_grad: the same loss and gradient on one-hot features given as codes ----
//
// Features x1t[f, n] = #{g : codes[g, n] = f} for f < F, and x1t[F, n] = 1 (the intercept, F = F1 - 1): the
// one-hot encoding of G discrete latents whose codes are already offset into disjoint column ranges. Then
//   z[t, :, n]       = weights[t, :, F] + sum_g weights[t, :, codes[g, n]]         (a sum of G gathered columns)
//   grad[t, :, f]   += residual[t, :, n] for every g with codes[g, n] = f, and for f = F (a scatter-add)
// so one evaluation costs O(T N G C) instead of the dense op's O(T N F1 C).
//
// Layout: sample-major, vectorized over classes. The weights are transposed per target to wt (F1, Cp), Cp
// = C rounded up to whole vectors (padded lanes: 0, masked to probability 0), so a gathered column is Cp
// contiguous values and the gradient row of a code is Cp contiguous accumulators. Per block of kBlock
// samples and per target: (1) logits of each sample (register tiles of up to 4 vectors, G gathered rows
// each), its top logit (horizontal max), exp (masked) in place and their total; (2) the loss terms and
// w / total over whole vectors of samples (the polynomial log of the dense op); (3) the residual in place,
// scatter-added into the rows of a (F1, Cp) tile in T (the block's sums, like the dense op's per-block
// tiles), which is then added to the chunk's double buffer and zeroed (all rows, or when F1 is large only
// the rows the block's codes name). Same floor (kLogFloor) and NaN semantics as the dense op.
//
// Determinism: as the dense op, chunks of kBlocksPerChunk blocks (a partition that depends only on N) own
// their partial buffers (loss (T) then gradient (T, F1, Cp), double), added in chunk order; within a chunk
// the samples are visited in order. Results do not depend on the number of threads.

constexpr const char* kOpOneHot = "logistic_onehot_loss_grad";

template <typename T>
struct OneHotProblem {
  const int64_t* codes;    // (G, N)
  const T* wt;             // (T, F1, Cp) transposed weights, padded lanes 0
  const T* lane;           // (Cp,) 0, 1, ..., Cp - 1: lanes below C are real classes
  const int64_t* labels;   // (T, N)
  const T* sample_weight;  // (T, N)
  int64_t n, groups, f1, targets, classes, cp;
};

// R vectors (lanes v0 * W ..) of one sample's logits: the intercept row plus the G gathered rows (row
// offsets off[g], already multiplied by Cp).
template <int R, typename T, int VB>
LQ_INLINE void onehot_logit_tile(const T* wt, const int64_t* off, int64_t groups, const T* intercept, T* out) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = load<V>(intercept + r * W);
  for (int64_t g = 0; g < groups; ++g) {
    const T* row = wt + off[g];
    for (int r = 0; r < R; ++r) acc[r] += load<V>(row + r * W);
  }
  for (int r = 0; r < R; ++r) store(out + r * W, acc[r]);
}

// acc[0 .. n) += res[0 .. n), n a whole number of vectors.
template <typename T, int VB>
LQ_INLINE void add_row(T* acc, const T* res, int64_t vectors) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  for (int64_t v = 0; v < vectors; ++v) store(acc + v * W, load<V>(acc + v * W) + load<V>(res + v * W));
}

// out[0 .. n) += tile[0 .. n) in double, and tile[0 .. n) = 0 (float vectors converted in halves).
template <typename T, int VB>
LQ_INLINE void flush_row(double* out, T* tile, int64_t vectors) {
  using V = typename Vec<T, VB>::type;
  using DV = typename Vec<T, VB>::wide;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  constexpr int64_t DW = VB / 8;
  for (int64_t v = 0; v < vectors; ++v) {
    const V r = load<V>(tile + v * W);
    store(tile + v * W, V{});
    double* d = out + v * W;
    if constexpr (sizeof(T) == sizeof(double)) {
      store(d, load<DV>(d) + r);
    } else {
      using H = typename Vec<T, VB>::half;
      H lo, hi;
      __builtin_memcpy(&lo, &r, sizeof(H));
      __builtin_memcpy(&hi, reinterpret_cast<const char*>(&r) + sizeof(H), sizeof(H));
      store(d, load<DV>(d) + __builtin_convertvector(lo, DV));
      store(d + DW, load<DV>(d + DW) + __builtin_convertvector(hi, DV));
    }
  }
}

// Scratch of one chunk: row offsets of the block's codes (kBlock x G), logits / exp / residuals (kBlock x
// Cp), per-sample top logit, label logit, total, weight and label, and the block's gradient tile (F1 x Cp,
// in T: summed over at most kBlock samples, then flushed into the chunk's double buffer and zeroed).
template <typename T>
struct OneHotScratch {
  std::vector<int64_t> off;
  std::vector<T> z, top, picked, total, w, tile;
  std::vector<int64_t> label;
  OneHotScratch(int64_t groups, int64_t f1, int64_t cp)
      : off(std::max<int64_t>(groups, 1) * kBlock),
        z(cp * kBlock),
        top(kBlock),
        picked(kBlock),
        total(kBlock),
        w(kBlock),
        tile(f1 * cp),
        label(kBlock) {}
};

// The padding samples of a block, j in [nb, kBlock): weight 0, top 0, label logit 0, total 1 -> a loss term of 0.
template <typename T>
LQ_INLINE void pad_block(OneHotScratch<T>& sc, int64_t nb) {
  for (int64_t j = nb; j < kBlock; ++j) {
    sc.w[j] = T(0);
    sc.top[j] = T(0);
    sc.picked[j] = T(0);
    sc.total[j] = T(1);
  }
}

// The block's loss sum_j w_j (top_j + log total_j - label logit_j), over whole vectors of samples (vector lanes
// in double, then summed in lane order); with kStoreRatio, sc.total[j] becomes w_j / total_j, the residual's
// scale. total - total is 0, or NaN when total is NaN (a NaN or +Inf logit), which log_pos would not pass on.
template <bool kStoreRatio, typename T, int VB>
LQ_INLINE double onehot_block_loss(OneHotScratch<T>& sc) {
  using V = typename Vec<T, VB>::type;
  using DV = typename Vec<T, VB>::wide;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  DV loss_lanes = DV{};
  for (int64_t j = 0; j < kBlock; j += W) {
    const V total = load<V>(sc.total.data() + j);
    const V wj = load<V>(sc.w.data() + j);
    const V term =
        wj * ((load<V>(sc.top.data() + j) + log_pos<T, VB>(total)) - load<V>(sc.picked.data() + j)) + (total - total);
    add_wide<T, VB>(loss_lanes, term);
    if constexpr (kStoreRatio) store(sc.total.data() + j, wj / total);
  }
  double block_loss = 0.0;
  for (int64_t l = 0; l < VB / 8; ++l) block_loss += loss_lanes[l];
  return block_loss;
}

// One target on one block of nb samples (codes already in sc.off): adds its loss to *loss and its gradient
// to g (F1, Cp), both in double. Returns false if a label lies outside [0, C).
template <typename T, int VB>
LQ_INLINE bool onehot_block_target(const OneHotProblem<T>& p, int64_t t, int64_t s0, int64_t nb,
                                   OneHotScratch<T>& sc, double* loss, double* g) {
  using V = typename Vec<T, VB>::type;
  using DV = typename Vec<T, VB>::wide;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  const int64_t cp = p.cp, vectors = cp / W, groups = p.groups;
  const T* wt = p.wt + t * p.f1 * cp;
  const T* intercept = wt + (p.f1 - 1) * cp;
  const int64_t* lab = p.labels + t * p.n + s0;
  const T* sw = p.sample_weight + t * p.n + s0;
  T* z = sc.z.data();

  uint64_t out_of_range = 0;
  for (int64_t j = 0; j < nb; ++j) {
    const bool ok = static_cast<uint64_t>(lab[j]) < static_cast<uint64_t>(p.classes);
    out_of_range |= static_cast<uint64_t>(!ok);
    sc.label[j] = ok ? lab[j] : 0;
    sc.w[j] = sw[j];
  }
  pad_block(sc, nb);

  // (1) logits, top, exp and total per sample
  const V neg_inf = V{} + (-std::numeric_limits<T>::infinity());
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t* off = sc.off.data() + j * groups;
    T* zj = z + j * cp;
    int64_t v = 0;
    for (; v + 4 <= vectors; v += 4)
      onehot_logit_tile<4, T, VB>(wt + v * W, off, groups, intercept + v * W, zj + v * W);
    switch (vectors - v) {
      case 3:
        onehot_logit_tile<3, T, VB>(wt + v * W, off, groups, intercept + v * W, zj + v * W);
        break;
      case 2:
        onehot_logit_tile<2, T, VB>(wt + v * W, off, groups, intercept + v * W, zj + v * W);
        break;
      case 1:
        onehot_logit_tile<1, T, VB>(wt + v * W, off, groups, intercept + v * W, zj + v * W);
        break;
      default:
        break;
    }
    // Padded lanes hold 0 logits: the top is taken over lanes masked to -inf there.
    V m = neg_inf;
    for (int64_t u = 0; u < vectors; ++u) {
      const V zu = load<V>(zj + u * W);
      const V masked = load<V>(p.lane + u * W) < T(p.classes) ? zu : neg_inf;
      m = masked > m ? masked : m;
    }
    const T top = hreduce<T, VB, LaneMax>(m);
    sc.top[j] = top;
    sc.picked[j] = zj[sc.label[j]];
    V tot = V{};
    for (int64_t u = 0; u < vectors; ++u) {  // a select, not a product: a padded lane's exp may be +inf
      const V e_all = exp_floor<T, VB>(load<V>(zj + u * W) - top);
      const V e = load<V>(p.lane + u * W) < T(p.classes) ? e_all : V{};
      store(zj + u * W, e);
      tot += e;
    }
    sc.total[j] = hreduce<T, VB, LaneAdd>(tot);
  }

  // (2) loss terms and w / total (kept in sc.total) over whole vectors of samples
  *loss += onehot_block_loss<true, T, VB>(sc);

  // (3) residual exp * w / total - w [lane == label] (whole vectors: a scalar update of one lane would stall
  // the vector loads that follow), added to the tile rows of the sample's codes and of the intercept
  T* tile = sc.tile.data();
  T* tile_intercept = tile + (p.f1 - 1) * cp;
  for (int64_t j = 0; j < nb; ++j) {
    T* zj = z + j * cp;
    const T q = sc.total[j], wj = sc.w[j], lj = static_cast<T>(sc.label[j]);
    for (int64_t u = 0; u < vectors; ++u) {
      const V r = load<V>(zj + u * W) * q;
      store(zj + u * W, load<V>(p.lane + u * W) == lj ? r - wj : r);
    }
    const int64_t* off = sc.off.data() + j * groups;
    for (int64_t gi = 0; gi < groups; ++gi) add_row<T, VB>(tile + off[gi], zj, vectors);
    add_row<T, VB>(tile_intercept, zj, vectors);
  }
  // Flush the tile into g: every row when that is cheaper than visiting the block's codes, else only the
  // rows the codes name (a row named twice is flushed once and then adds its zeros).
  if (p.f1 <= (groups + 1) * nb) {
    flush_row<T, VB>(g, tile, p.f1 * vectors);
  } else {
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t* off = sc.off.data() + j * groups;
      for (int64_t gi = 0; gi < groups; ++gi) flush_row<T, VB>(g + off[gi], tile + off[gi], vectors);
    }
    flush_row<T, VB>(g + (p.f1 - 1) * cp, tile_intercept, vectors);
  }
  return out_of_range == 0;
}

// Chunks [r.c0, r.c1): chunk c's loss (T) and gradient (T, F1, Cp) go to its own buffer out + c * out_size;
// bad[c] is set on a label outside [0, C) (1) or a code outside [0, F) (2).
template <int VB, typename T>
LQ_INLINE void chunk_body(const OneHotProblem<T>& p, const ChunkRange& r) {
  OneHotScratch<T> sc(p.groups, p.f1, p.cp);
  const int64_t grad_size = p.f1 * p.cp, features = p.f1 - 1;
  for (int64_t c = r.c0; c < r.c1; ++c) {
    double* out = r.out + c * r.out_size;
    bool labels_ok = true, codes_ok = true;
    for (int64_t b = c * r.per_chunk; b < std::min(r.blocks, (c + 1) * r.per_chunk); ++b) {
      const int64_t s0 = b * kBlock;
      const int64_t nb = std::min(kBlock, p.n - s0);
      for (int64_t g = 0; g < p.groups; ++g) {  // codes (G, N) -> row offsets (kBlock, G)
        const int64_t* src = p.codes + g * p.n + s0;
        for (int64_t j = 0; j < nb; ++j) {
          const bool ok = static_cast<uint64_t>(src[j]) < static_cast<uint64_t>(features);
          codes_ok &= ok;
          sc.off[j * p.groups + g] = (ok ? src[j] : 0) * p.cp;
        }
      }
      for (int64_t t = 0; t < p.targets; ++t)
        labels_ok &= onehot_block_target<T, VB>(p, t, s0, nb, sc, out + t, out + p.targets + t * grad_size);
    }
    if (!codes_ok) r.bad[c] |= 2;
    if (!labels_ok) r.bad[c] |= 1;
  }
}

// ---- the one-hot evaluation of logistic_fit_lbfgs: one target, codes prepared once per fit ----
//
// The same sums as onehot_block_target for one target, three changes for speed (measured with perf on the
// N = 50,000 x 12-latent InfoMEC problem, one target of 15 classes per call: ~20% of the time went to turning
// the (G, N) int64 codes into row offsets in every call, ~25% to the scatter's runtime-length row loop):
// - the row offsets (code * Cp) are computed once per fit, sample-major (N, G) int32, shared by all targets;
// - the number of vectors per class row, NV, is a compile-time constant (1 to 4): the logits, the residual and
//   the scatter of one sample stay in registers, and the label's logit is a masked lane sum (no scalar load of
//   a lane just stored);
// - the intercept's gradient is summed in registers over the block instead of a scattered row.
// Cp and the chunk partition are those of the op, the block sums are in T and then added in double, as there.

template <typename T>
struct OneHotFitProblem {
  const int32_t* off;      // (N, G) row offsets code * Cp
  const T* wt;             // (F1, Cp) transposed weights, padded lanes 0
  const T* lane;           // (Cp,) 0, 1, ..., Cp - 1
  const int64_t* labels;   // (N,)
  const T* sample_weight;  // (N,)
  int64_t n, groups, f1, classes, cp;
};

// kDefer (the paired layout below): the tile is flushed, whole, only when `flush` is set (the last block of a
// chunk), not after every block: its rows are many and each receives few samples.
template <int NV, typename T, int VB, bool kDefer = false>
LQ_INLINE void onehot_fit_block(const OneHotFitProblem<T>& p, int64_t s0, int64_t nb, OneHotScratch<T>& sc,
                                double* loss, double* g, bool flush = true) {
  using V = typename Vec<T, VB>::type;
  using DV = typename Vec<T, VB>::wide;
  constexpr int64_t W = Vec<T, VB>::kWidth;
  const int64_t groups = p.groups, cp = p.cp;
  const T* wt = p.wt;
  const int64_t* lab = p.labels + s0;
  const T* sw = p.sample_weight + s0;
  const V neg_inf = V{} + (-std::numeric_limits<T>::infinity());
  V lane[NV], intercept[NV];
  for (int r = 0; r < NV; ++r) {
    lane[r] = load<V>(p.lane + r * W);
    intercept[r] = load<V>(wt + (p.f1 - 1) * cp + r * W);
  }
  pad_block(sc, nb);
  // (1) per sample, in registers: logits, top, the label's logit, exp and total, the residual
  // exp * (w / total) - w [lane == label], scattered into the tile rows of the sample's codes (the intercept's
  // summed in registers); top, the label's logit and total are kept for the loss.
  T* tile = sc.tile.data();
  V icpt[NV];
  for (int r = 0; r < NV; ++r) icpt[r] = V{};
  for (int64_t j = 0; j < nb; ++j) {
    const int32_t* off = p.off + (s0 + j) * groups;
    V acc[NV];
    for (int r = 0; r < NV; ++r) acc[r] = intercept[r];
    for (int64_t gi = 0; gi < groups; ++gi) {
      const T* row = wt + off[gi];
      for (int r = 0; r < NV; ++r) acc[r] += load<V>(row + r * W);
    }
    const T lj = static_cast<T>(lab[j]);
    V m = neg_inf, pick = V{};
    for (int r = 0; r < NV; ++r) {
      const V masked = lane[r] < T(p.classes) ? acc[r] : neg_inf;
      m = masked > m ? masked : m;
      pick += lane[r] == lj ? acc[r] : V{};
    }
    const T top = hreduce<T, VB, LaneMax>(m);
    V e[NV], tot = V{};
    for (int r = 0; r < NV; ++r) {  // a select, not a product: a padded lane's exp may be +inf
      const V e_all = exp_floor<T, VB>(acc[r] - top);
      e[r] = lane[r] < T(p.classes) ? e_all : V{};
      tot += e[r];
    }
    const T total = hreduce<T, VB, LaneAdd>(tot), wj = sw[j];
    const T q = wj / total;
    sc.top[j] = top;
    sc.picked[j] = hreduce<T, VB, LaneAdd>(pick);
    sc.total[j] = total;
    sc.w[j] = wj;
    V res[NV];
    for (int r = 0; r < NV; ++r) {
      const V v = e[r] * q;
      res[r] = lane[r] == lj ? v - wj : v;
      icpt[r] += res[r];
    }
    for (int64_t gi = 0; gi < groups; ++gi) {
      T* row = tile + off[gi];
      for (int r = 0; r < NV; ++r) store(row + r * W, load<V>(row + r * W) + res[r]);
    }
  }
  // (2) loss terms over whole vectors of samples
  *loss += onehot_block_loss<false, T, VB>(sc);
  T* tile_intercept = tile + (p.f1 - 1) * cp;  // (0 + x is x: without kDefer the row was flushed to zeros)
  for (int r = 0; r < NV; ++r) store(tile_intercept + r * W, load<V>(tile_intercept + r * W) + icpt[r]);
  // Flush the tile into g: every row when that is cheaper than visiting the block's codes, else only the rows
  // the codes name (a row named twice is flushed once and then adds its zeros).
  const int64_t vectors = cp / W;
  if constexpr (kDefer) {
    if (flush) flush_row<T, VB>(g, tile, p.f1 * vectors);
  } else if (p.f1 <= (groups + 1) * nb) {
    flush_row<T, VB>(g, tile, p.f1 * vectors);
  } else {
    for (int64_t j = 0; j < nb; ++j) {
      const int32_t* off = p.off + (s0 + j) * groups;
      for (int64_t gi = 0; gi < groups; ++gi) flush_row<T, VB>(g + off[gi], tile + off[gi], vectors);
    }
    flush_row<T, VB>(g + (p.f1 - 1) * cp, tile_intercept, vectors);
  }
}

// The chunks of a fit evaluation: each chunk into its own buffer (r.out + c * r.out_size), or with kDefer (the
// paired layout) every chunk into r.out, in order, the tile flushed at each chunk's last block.
template <int VB, bool kDefer, typename T>
LQ_INLINE void fit_chunks(const OneHotFitProblem<T>& p, const ChunkRange& r) {
  constexpr int64_t W = Vec<T, VB>::kWidth;
  OneHotScratch<T> sc(p.groups, p.f1, p.cp);
  const int64_t vectors = p.cp / W;
  for (int64_t c = r.c0; c < r.c1; ++c) {
    double* out = kDefer ? r.out : r.out + c * r.out_size;
    const int64_t last = std::min(r.blocks, (c + 1) * r.per_chunk) - 1;
    for (int64_t b = c * r.per_chunk; b <= last; ++b) {
      const int64_t s0 = b * kBlock;
      const int64_t nb = std::min(kBlock, p.n - s0);
      const bool flush = b == last;
      switch (vectors) {  // OneHotEval takes this path only for 1 to 4 vectors per class row
        case 1:
          onehot_fit_block<1, T, VB, kDefer>(p, s0, nb, sc, out, out + 1, flush);
          break;
        case 2:
          onehot_fit_block<2, T, VB, kDefer>(p, s0, nb, sc, out, out + 1, flush);
          break;
        case 3:
          onehot_fit_block<3, T, VB, kDefer>(p, s0, nb, sc, out, out + 1, flush);
          break;
        default:
          onehot_fit_block<4, T, VB, kDefer>(p, s0, nb, sc, out, out + 1, flush);
          break;
      }
    }
  }
}

template <int VB, typename T>
LQ_INLINE void chunk_body(const OneHotFitProblem<T>& p, const ChunkRange& r) {
  fit_chunks<VB, false>(p, r);
}

// ---- the paired one-hot layout of the fit (float32): two latents' weight rows summed once per evaluation ----
//
// A sample's logits gather one weight row per latent. Two latents g, h of K_g and K_h values can share one
// table of K_g * K_h rows J[a, b] = W[a] + W[b] (built per evaluation: a few thousand vector adds), so the
// sample gathers one row of J instead of two, and scatters its residual once into J's gradient tile, which
// is then summed back onto the two latents' rows (grad W[a] = sum_b dJ[a, b], grad W[b] = sum_a dJ[a, b],
// in double). The same loss and gradient, in another rounding order: one float add of the two weights before
// the logit sum, and a float tile whose rows each receive fewer samples. Measured on the 2-core Zen 4
// (InfoMEC's N = 50,000, 12 latents of 9-14 values, 100 iterations): 12 gathered rows -> 6, a source's fit
// 0.21-0.23 s -> 0.17 s (10 classes), 0.19 -> 0.17 s (15), the 6 sources on 2 workers 0.54 -> 0.48 s. The tile
// (K_g * K_h rows per pair) is flushed once per chunk instead of once per block (kDefer).

template <typename T>
struct JointFitProblem {
  OneHotFitProblem<T> base;  // off: joint row offsets (N, pairs) and wt: the joint table, intercept last
};

// One buffer for all the chunks of a shard, in order (a shard runs on one thread).
template <int VB, typename T>
LQ_INLINE void chunk_body(const JointFitProblem<T>& jp, const ChunkRange& r) {
  fit_chunks<VB, true>(jp.base, r);
}

// Which latents share a table. A latent's one-hot columns are the range [lo, lo + K) its codes span (any codes
// work: columns shared between latents just count twice, as in the op). Pairs: smallest with the largest that
// fits K_g * K_h <= kMaxJointCells (two pointers over the latents by K); used when at least one pair forms, the
// table stays within kMaxJointRows rows (L2-sized) and N * pairs >= 4 * rows (the per-evaluation table build and
// marginalization, ~rows vector ops each, are paid back by the gathers saved); LATENTQUANT_ONEHOT_PAIRS=0 turns
// it off, =1 forces it whenever a pair forms (the tests).
constexpr int64_t kMaxJointCells = 256;
constexpr int64_t kMaxJointRows = 4096;

struct JointLayout {
  struct Part {
    int64_t g, lo, k, h, lo_h, k_h, base;  // h < 0: latent g alone (rows base .. base + k)
  };
  std::vector<Part> parts;
  int64_t rows = 0;             // joint rows, the intercept's not counted
  std::vector<int32_t> row;     // (N, parts) each sample's joint row
  bool empty() const { return parts.empty(); }
};

JointLayout joint_layout(const int64_t* codes, int64_t groups, int64_t n) {
  JointLayout layout;
  const char* mode = std::getenv("LATENTQUANT_ONEHOT_PAIRS");
  const bool off = mode != nullptr && mode[0] == '0', forced = mode != nullptr && mode[0] == '1';
  if (off || groups < 2 || n == 0) return layout;
  std::vector<int64_t> lo(groups), k(groups), order(groups);
  for (int64_t g = 0; g < groups; ++g) {
    const auto [mn, mx] = std::minmax_element(codes + g * n, codes + (g + 1) * n);
    lo[g] = *mn;
    k[g] = *mx - *mn + 1;
    order[g] = g;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return k[a] < k[b]; });
  int64_t i = 0, j = groups - 1, pairs = 0;
  auto add = [&](int64_t g, int64_t h) {
    const int64_t cells = h < 0 ? k[g] : k[g] * k[h];
    layout.parts.push_back({g, lo[g], k[g], h, h < 0 ? 0 : lo[h], h < 0 ? 1 : k[h], layout.rows});
    layout.rows += cells;
  };
  while (i < j) {
    if (k[order[i]] * k[order[j]] <= kMaxJointCells) {
      add(order[i++], order[j--]);
      ++pairs;
    } else {
      add(order[j--], -1);
    }
  }
  if (i == j) add(order[i], -1);
  const bool pays = n * pairs >= 4 * layout.rows;
  if (pairs == 0 || layout.rows > kMaxJointRows || !(pays || forced)) return JointLayout{};
  const int64_t width = static_cast<int64_t>(layout.parts.size());
  layout.row.resize(n * width);
  for (int64_t q = 0; q < width; ++q) {
    const auto& part = layout.parts[q];
    const int64_t* cg = codes + part.g * n;
    const int64_t* ch = part.h < 0 ? nullptr : codes + part.h * n;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t cell = (cg[s] - part.lo) * part.k_h + (ch == nullptr ? 0 : ch[s] - part.lo_h);
      layout.row[s * width + q] = static_cast<int32_t>(part.base + cell);
    }
  }
  return layout;
}

void check_onehot_inputs(const at::Tensor& codes, const at::Tensor& weights, const at::Tensor& labels,
                         const at::Tensor& sample_weight) {
  const char* op = kOpOneHot;
  const auto dtype = check_ranks_and_weight_dtype(op, codes, "codes", weights, labels, sample_weight);
  TORCH_CHECK_VALUE(sample_weight.scalar_type() == dtype, op, ": sample_weight must have weights' dtype ", dtype,
                    ", got ", sample_weight.scalar_type());
  TORCH_CHECK_VALUE(codes.scalar_type() == at::kLong, op, ": codes must be int64, got ", codes.scalar_type());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(weights.size(2) >= 1, op,
                    ": weights must have shape (T, C, F1) with F1 >= 1 (the last column is the intercept), got ",
                    weights.sizes());
  check_targets_and_device(op, codes, "codes", weights, labels, sample_weight);
}

std::tuple<at::Tensor, at::Tensor> logistic_onehot_loss_grad_cpu(const at::Tensor& codes_in,
                                                                 const at::Tensor& weights_in,
                                                                 const at::Tensor& labels_in,
                                                                 const at::Tensor& sample_weight_in) {
  check_onehot_inputs(codes_in, weights_in, labels_in, sample_weight_in);
  const auto codes = codes_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto sample_weight = sample_weight_in.contiguous();
  const int64_t groups = codes.size(0), n = codes.size(1), targets = weights_in.size(0);
  const int64_t classes = weights_in.size(1), f1 = weights_in.size(2);
  const auto dtype = weights_in.scalar_type();

  // Classes padded to whole vectors of the copy that runs.
  const int vb = vector_bytes_for(dtype == at::kDouble);
  const int64_t lanes = vb / static_cast<int64_t>(at::elementSize(dtype));
  const int64_t cp = (classes + lanes - 1) / lanes * lanes;
  auto wt = at::zeros({targets, f1, cp}, weights_in.options());
  wt.narrow(2, 0, classes).copy_(weights_in.transpose(1, 2));
  auto lane = at::arange(cp, weights_in.options());

  const int64_t grad_size = f1 * cp;
  const int64_t out_size = targets * (1 + grad_size);
  at::Tensor sums;
  char flags = 0;
  AT_DISPATCH_FLOATING_TYPES(dtype, kOpOneHot, [&] {
    const OneHotProblem<scalar_t> p{codes.data_ptr<int64_t>(),
                                    wt.data_ptr<scalar_t>(),
                                    lane.data_ptr<scalar_t>(),
                                    labels.data_ptr<int64_t>(),
                                    sample_weight.data_ptr<scalar_t>(),
                                    n,
                                    groups,
                                    f1,
                                    targets,
                                    classes,
                                    cp};
    std::tie(sums, flags) = run_chunked(p, n, out_size, vb);
  });
  TORCH_CHECK_VALUE(!(flags & 2), kOpOneHot, ": codes must lie in [0, F) = [0, ", f1 - 1,
                    "), F = weights.shape[2] - 1 the number of one-hot columns; got a code outside it");
  TORCH_CHECK_VALUE(!(flags & 1), kOpOneHot, ": labels must lie in [0, C) = [0, ", classes,
                    "), C = weights.shape[1] the number of classes; got a label outside it");

  auto loss = sums.slice(0, 0, targets).to(dtype);
  auto grad = sums.slice(0, targets, out_size)
                  .view({targets, f1, cp})
                  .narrow(2, 0, classes)
                  .transpose(1, 2)
                  .to(dtype, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  return {loss, grad};
}

// ---- logistic_fit_lbfgs: the whole batched L-BFGS of latentquant.metrics.logistic in one call ----
//
// The same algorithm as the Python loop of fit_logistic (_fit), target by target: history 10, the two-loop
// recursion, a steepest-descent restart on a non-descent direction, a first step of min(1, 1 / |d|), Armijo
// backtracking (1e-4) with quadratic interpolation clamped to [0.1, 0.5] x the step and at most 50 evaluations,
// a curvature pair kept when s'y > eps(T) y'y, and the stops max |g| <= tol, relative decrease <= 64 eps(double)
// or a failed line search. Each target's iterates depend only on that target (the Python loop batches them
// but every target keeps its own history, steps and stops), so here the targets are fit independently: a pool
// of std::threads takes the targets widest first from an atomic counter, and a thread with no target left
// helps the others (Team: fixed shards of an evaluation, the same results whoever runs them; a waiting thread
// spins at most 4,096 pauses, then yields, so a busy machine costs little more than it takes from them). The
// evaluations are the ops' kernels on one target at a time, its real classes only, with the ops' chunk
// partition and fixed-order chunk sums, so a target's fit does not
// depend on the thread count. As in the Python loop the loss and gradient are rounded to T and the
// bookkeeping is in T (dot products accumulated in double).

constexpr const char* kOpFit = "logistic_fit_lbfgs";
constexpr int64_t kMaxFitVectors = 4;  // OneHotFitProblem's widest class row, in vectors
constexpr int kHistory = 10;
constexpr int kMaxLineSearch = 50;

// Sums the chunk partials (chunk order) into part[0 .. out_size).
inline void sum_chunks(double* part, int64_t chunks, int64_t out_size) {
  for (int64_t c = 1; c < chunks; ++c) {
    const double* src = part + c * out_size;
    for (int64_t i = 0; i < out_size; ++i) part[i] += src[i];
  }
}

// ---- lending a target's evaluation to idle workers ----
//
// The targets are shared out whole, so at the end of a fit one worker can still run its last target while the
// others have none left (InfoMEC's 6 sources on 2 workers: 0.46 s for 0.43 s of work each). A worker with no
// target left joins the Team's helpers; an owner whose evaluation finds a helper waiting publishes it as shards
// (fixed sample ranges, each summed into its own buffer, added in shard order) that the owner and the helpers
// claim. Without idle helpers the owner runs the shards itself, the same buffers in the same order: a target's
// results never depend on who ran which shard, nor on the thread count. Helpers spin briefly (pause), then
// yield, between evaluations; they leave when every target is done.
struct alignas(64) TeamSlot {
  std::atomic<uint64_t> state{0};  // (generation << 8) | shards claimed; an odd generation is open
  std::atomic<int> done{0};
  std::atomic<int> count{0};
  std::atomic<void (*)(void*, int)> fn{nullptr};
  std::atomic<void*> ctx{nullptr};
};

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct Team {
  std::vector<TeamSlot> slots;  // one per worker: the evaluation its current target publishes
  std::atomic<int> idle{0};     // workers helping
  std::atomic<int64_t> finished{0};
  std::atomic<bool> abort{false};
  int64_t targets = 0;

  Team(int64_t workers, int64_t targets_) : slots(std::max<int64_t>(workers, 1)), targets(targets_) {}

  static bool claim(TeamSlot& slot, uint64_t generation, int count, int& shard) {
    uint64_t st = slot.state.load(std::memory_order_acquire);
    while ((st >> 8) == generation && static_cast<int>(st & 255) < count)
      if (slot.state.compare_exchange_weak(st, st + 1, std::memory_order_acq_rel)) {
        shard = static_cast<int>(st & 255);
        return true;
      }
    return false;
  }

  // Runs task(0) .. task(count - 1) for the worker owning `slot`, with helpers when there are any.
  template <typename F>
  void run(int64_t slot_index, int count, F& task) {
    if (count < 2 || idle.load(std::memory_order_relaxed) == 0) {
      for (int s = 0; s < count; ++s) task(s);
      return;
    }
    TeamSlot& slot = slots[slot_index];
    slot.fn.store([](void* c, int shard) { (*static_cast<F*>(c))(shard); }, std::memory_order_relaxed);
    slot.ctx.store(&task, std::memory_order_relaxed);
    slot.count.store(count, std::memory_order_relaxed);
    slot.done.store(0, std::memory_order_relaxed);
    const uint64_t generation = (slot.state.load(std::memory_order_relaxed) >> 8) + 1;  // odd: open
    slot.state.store(generation << 8, std::memory_order_release);
    int shard;
    while (claim(slot, generation, count, shard)) {
      task(shard);
      slot.done.fetch_add(1, std::memory_order_acq_rel);
    }
    for (int spins = 0; slot.done.load(std::memory_order_acquire) < count; ++spins) {
      if (spins < 4096) spin_pause(); else std::this_thread::yield();
    }
    slot.state.store((generation + 1) << 8, std::memory_order_release);  // closed
  }

  // A worker with no target left: take shards of the others' evaluations until every target is done.
  void help() {
    idle.fetch_add(1, std::memory_order_relaxed);
    int quiet = 0;
    while (finished.load(std::memory_order_acquire) < targets && !abort.load(std::memory_order_relaxed)) {
      bool worked = false;
      for (auto& slot : slots) {
        const uint64_t st = slot.state.load(std::memory_order_acquire);
        const uint64_t generation = st >> 8;
        if ((generation & 1) == 0) continue;
        int shard;
        if (!claim(slot, generation, slot.count.load(std::memory_order_relaxed), shard)) continue;
        slot.fn.load(std::memory_order_relaxed)(slot.ctx.load(std::memory_order_relaxed), shard);
        slot.done.fetch_add(1, std::memory_order_acq_rel);
        worked = true;
      }
      if (worked) quiet = 0;
      else if (++quiet < 4096) spin_pause();
      else std::this_thread::yield();
    }
  }
};

// Shard s of 2 of a chunk range: chunks [s * chunks / 2, (s + 1) * chunks / 2). One shard when there is one chunk.
constexpr int kShards = 2;
inline int shard_count(int64_t chunks) { return chunks >= kShards ? kShards : 1; }
inline ChunkRange shard_range(const ChunkRange& r, int shard, int shards) {
  ChunkRange out = r;
  const int64_t chunks = r.c1 - r.c0;
  out.c0 = r.c0 + chunks * shard / shards;
  out.c1 = r.c0 + chunks * (shard + 1) / shards;
  return out;
}

// The chunks of `range` as shards (body(shard's range, shard)) on the team: the shards write disjoint buffers
// (per chunk, or per shard), so the results do not depend on who runs which.
template <typename F>
void run_sharded(Team* team, int64_t slot, const ChunkRange& range, F&& body) {
  if (range.c1 <= range.c0) return;
  const int shards = shard_count(range.c1 - range.c0);
  auto task = [&](int s) { body(shard_range(range, s, shards), s); };
  if (team == nullptr) {
    for (int s = 0; s < shards; ++s) task(s);
  } else {
    team->run(slot, shards, task);
  }
}

// Loss and gradient (C, F1) in double of one target's (C, F1) weights on dense features x1t (F1, N).
template <typename T>
struct DenseEval {
  const T* x;
  const int64_t* labels;
  const T* sw;
  int64_t n, f1, classes;
  ChunkFn<Problem<T>> run;
  ChunkPlan plan;
  int64_t out_size;
  std::vector<double> part;
  std::vector<char> bad;
  Team* team = nullptr;  // with the worker's slot: helpers may run shards of the evaluation
  int64_t slot = 0;

  DenseEval(const T* x_, const int64_t* labels_, const T* sw_, int64_t n_, int64_t f1_, int64_t classes_, int vb)
      : x(x_), labels(labels_), sw(sw_), n(n_), f1(f1_), classes(classes_), run(pick_chunk_fn<Problem<T>>(vb)) {
    out_size = 1 + classes * f1;
    plan = chunk_plan(n, out_size);
    part.resize(std::max<int64_t>(plan.chunks, 1) * out_size);
    bad.resize(std::max<int64_t>(plan.chunks, 1));
  }

  double operator()(const T* w, double* grad) {
    std::fill(part.begin(), part.end(), 0.0);
    const Problem<T> p{x, w, labels, sw, n, f1, 1, classes};
    const ChunkRange range{0, plan.chunks, plan.per_chunk, plan.blocks, out_size, part.data(), bad.data()};
    run_sharded(team, slot, range, [&](const ChunkRange& r, int) { run(p, r); });
    sum_chunks(part.data(), plan.chunks, out_size);
    std::copy(part.begin() + 1, part.begin() + out_size, grad);
    return part[0];
  }
};

// The same on one-hot features given as offset codes (G, N): the weights are transposed to (F1, Cp) first.
// With a paired layout (joint, its offsets joint row * Cp) the evaluation runs on the joint table instead.
template <typename T>
struct OneHotEval {
  const int64_t* codes;
  const int64_t* labels;
  const T* sw;
  int64_t n, groups, f1, classes, cp;
  ChunkFn<OneHotProblem<T>> run;
  ChunkFn<OneHotFitProblem<T>> run_fit;
  ChunkFn<JointFitProblem<T>> run_joint;
  // The fit's row offsets, sample-major: (N, G) code * Cp, or with the paired layout `joint` (N, parts) joint
  // row * Cp; null: the op's path (more than 4 vectors per class row).
  const int32_t* off;
  const JointLayout* joint;  // or null
  ChunkPlan plan;
  int64_t out_size;
  std::vector<double> part, gsum;
  std::vector<char> bad;
  std::vector<T> wt, lane, jt;
  Team* team = nullptr;  // with the worker's slot: helpers may run shards of the evaluation
  int64_t slot = 0;

  OneHotEval(const int64_t* codes_, const int64_t* labels_, const T* sw_, int64_t n_, int64_t groups_, int64_t f1_,
             int64_t classes_, int vb, const std::vector<int32_t>* offsets, const JointLayout* joint_ = nullptr)
      : codes(codes_),
        labels(labels_),
        sw(sw_),
        n(n_),
        groups(groups_),
        f1(f1_),
        classes(classes_),
        run(pick_chunk_fn<OneHotProblem<T>>(vb)),
        run_fit(pick_chunk_fn<OneHotFitProblem<T>>(vb)),
        run_joint(pick_chunk_fn<JointFitProblem<T>>(vb)),
        off(nullptr),
        joint(nullptr) {
    const int64_t lanes = vb / static_cast<int64_t>(sizeof(T));  // as logistic_onehot_loss_grad_cpu
    cp = (classes + lanes - 1) / lanes * lanes;
    const bool fits = cp <= kMaxFitVectors * lanes;
    if (fits && offsets != nullptr && !offsets->empty()) off = offsets->data();
    if (off != nullptr && joint_ != nullptr && !joint_->empty()) {
      joint = joint_;
      jt.assign((joint->rows + 1) * cp, T(0));
      gsum.assign(f1 * cp, 0.0);
    }
    out_size = 1 + (joint != nullptr ? joint->rows + 1 : f1) * cp;
    plan = chunk_plan(n, out_size);
    // The joint path sums each shard's chunks into the shard's buffer (in chunk order), the shards added in
    // order; the others one buffer per chunk.
    part.resize((joint != nullptr ? kShards : std::max<int64_t>(plan.chunks, 1)) * out_size);
    bad.resize(std::max<int64_t>(plan.chunks, 1));
    wt.assign(f1 * cp, T(0));
    lane.resize(cp);
    for (int64_t c = 0; c < cp; ++c) lane[c] = static_cast<T>(c);
  }

  double operator()(const T* w, double* grad) {
    for (int64_t c = 0; c < classes; ++c)
      for (int64_t f = 0; f < f1; ++f) wt[f * cp + c] = w[c * f1 + f];
    std::fill(part.begin(), part.end(), 0.0);
    const ChunkRange range{0, plan.chunks, plan.per_chunk, plan.blocks, out_size, part.data(), bad.data()};
    if (joint != nullptr) return joint_eval(range, grad);
    if (off != nullptr) {
      const OneHotFitProblem<T> p{off, wt.data(), lane.data(), labels, sw, n, groups, f1, classes, cp};
      run_sharded(team, slot, range, [&](const ChunkRange& r, int) { run_fit(p, r); });
    } else {
      const OneHotProblem<T> p{codes, wt.data(), lane.data(), labels, sw, n, groups, f1, 1, classes, cp};
      run_sharded(team, slot, range, [&](const ChunkRange& r, int) { run(p, r); });
    }
    sum_chunks(part.data(), plan.chunks, out_size);
    for (int64_t c = 0; c < classes; ++c)
      for (int64_t f = 0; f < f1; ++f) grad[c * f1 + f] = part[1 + f * cp + c];
    return part[0];
  }

  // The joint table from wt (rows of pair (g, h): W[lo_g + a] + W[lo_h + b], a-major; a single latent's rows
  // copied; the intercept last), the pass over the samples, and the joint gradient summed back onto W's rows.
  double joint_eval(const ChunkRange& range, double* grad) {
    const int64_t rows = joint->rows;
    for (const auto& q : joint->parts) {
      T* dst = jt.data() + q.base * cp;
      for (int64_t a = 0; a < q.k; ++a) {
        const T* wa = wt.data() + (q.lo + a) * cp;
        if (q.h < 0) {
          std::copy(wa, wa + cp, dst + a * cp);
          continue;
        }
        for (int64_t b = 0; b < q.k_h; ++b) {
          const T* wb = wt.data() + (q.lo_h + b) * cp;
          T* row = dst + (a * q.k_h + b) * cp;
          for (int64_t c = 0; c < cp; ++c) row[c] = wa[c] + wb[c];
        }
      }
    }
    std::copy(wt.data() + (f1 - 1) * cp, wt.data() + f1 * cp, jt.data() + rows * cp);
    const JointFitProblem<T> p{{off, jt.data(), lane.data(), labels, sw, n,
                                static_cast<int64_t>(joint->parts.size()), rows + 1, classes, cp}};
    run_sharded(team, slot, range, [&](ChunkRange r, int shard) {
      r.out = part.data() + shard * out_size;
      run_joint(p, r);
    });
    sum_chunks(part.data(), shard_count(plan.chunks), out_size);
    std::fill(gsum.begin(), gsum.end(), 0.0);
    const double* dj = part.data() + 1;
    for (const auto& q : joint->parts) {
      for (int64_t a = 0; a < q.k; ++a) {
        double* ga = gsum.data() + (q.lo + a) * cp;
        for (int64_t b = 0; b < q.k_h; ++b) {
          const double* cell = dj + (q.base + a * q.k_h + b) * cp;
          double* gb = q.h < 0 ? nullptr : gsum.data() + (q.lo_h + b) * cp;
          for (int64_t c = 0; c < classes; ++c) {
            ga[c] += cell[c];
            if (gb != nullptr) gb[c] += cell[c];
          }
        }
      }
    }
    for (int64_t c = 0; c < classes; ++c) gsum[(f1 - 1) * cp + c] = dj[rows * cp + c];
    for (int64_t c = 0; c < classes; ++c)
      for (int64_t f = 0; f < f1; ++f) grad[c * f1 + f] = gsum[f * cp + c];
    return part[0];
  }
};

template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

template <typename T>
T max_abs(const T* a, int64_t n) {
  T m = T(0);
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return a[i];  // NaN propagates, as torch's amax
    m = std::max(m, std::abs(a[i]));
  }
  return m;
}

// L-BFGS of one target from x (C * F1, updated in place); returns the iterations that moved.
template <typename T, typename Eval>
int64_t fit_target(Eval& eval, T* x, int64_t classes, int64_t f1, T l2, int64_t max_iter, double tol_in) {
  const int64_t d_size = classes * f1;
  const T tol = static_cast<T>(tol_in);
  std::vector<double> gd(d_size);
  // The loss and gradient in T, plus the penalty l2 / 2 |coefficients|^2 (the intercept column excluded).
  auto evaluate = [&](const T* w, T* g) -> T {
    T f = static_cast<T>(eval(w, gd.data()));
    for (int64_t i = 0; i < d_size; ++i) g[i] = static_cast<T>(gd[i]);
    if (l2 != T(0)) {
      double squares = 0.0;
      for (int64_t c = 0; c < classes; ++c)
        for (int64_t k = 0; k + 1 < f1; ++k) {
          const T v = w[c * f1 + k];
          squares += static_cast<double>(v) * static_cast<double>(v);
          g[c * f1 + k] += l2 * v;
        }
      f = f + T(0.5) * l2 * static_cast<T>(squares);
    }
    return f;
  };

  std::vector<T> g(d_size), d(d_size), q(d_size), trial(d_size), g_trial(d_size), g_new(d_size);
  std::vector<T> s_hist(kHistory * d_size, T(0)), y_hist(kHistory * d_size, T(0));
  T rho[kHistory] = {};
  T alpha[kHistory] = {};
  int order[kHistory];
  int num_pairs = 0;  // slots in order, newest first
  T f = evaluate(x, g.data());
  bool active = max_abs(g.data(), d_size) > tol;
  int64_t n_iter = 0;
  const T eps = std::numeric_limits<T>::epsilon();
  const T ftol = static_cast<T>(64 * std::numeric_limits<double>::epsilon());

  for (int64_t iteration = 0; iteration < max_iter && active; ++iteration) {
    // Direction: the two-loop recursion over the pairs, newest first (pairs with rho = 0 count for nothing).
    for (int64_t i = 0; i < d_size; ++i) q[i] = g[i];
    int newest_valid = -1;
    for (int k = 0; k < num_pairs; ++k) {
      const int slot = order[k];
      alpha[k] = T(0);
      if (rho[slot] == T(0)) continue;
      if (newest_valid < 0) newest_valid = slot;
      const T* s = s_hist.data() + slot * d_size;
      const T* y = y_hist.data() + slot * d_size;
      alpha[k] = rho[slot] * static_cast<T>(dot(s, q.data(), d_size));
      for (int64_t i = 0; i < d_size; ++i) q[i] -= alpha[k] * y[i];
    }
    if (newest_valid >= 0) {
      const T* y = y_hist.data() + newest_valid * d_size;
      const T scale =
          T(1) / std::max(rho[newest_valid] * static_cast<T>(dot(y, y, d_size)), std::numeric_limits<T>::min());
      for (int64_t i = 0; i < d_size; ++i) q[i] *= scale;
    }
    for (int k = num_pairs - 1; k >= 0; --k) {
      const int slot = order[k];
      if (rho[slot] == T(0)) continue;
      const T* s = s_hist.data() + slot * d_size;
      const T* y = y_hist.data() + slot * d_size;
      const T beta = rho[slot] * static_cast<T>(dot(y, q.data(), d_size));
      for (int64_t i = 0; i < d_size; ++i) q[i] += (alpha[k] - beta) * s[i];
    }
    for (int64_t i = 0; i < d_size; ++i) d[i] = -q[i];
    T slope = static_cast<T>(dot(d.data(), g.data(), d_size));
    if (!(slope < T(0))) {  // a non-descent direction (stale curvature) restarts as steepest descent
      for (int64_t i = 0; i < d_size; ++i) d[i] = -g[i];
      slope = -static_cast<T>(dot(g.data(), g.data(), d_size));
    }
    T step = T(1);
    if (iteration == 0) step = std::min(T(1) / static_cast<T>(std::sqrt(dot(d.data(), d.data(), d_size))), T(1));

    // Armijo backtracking with quadratic interpolation.
    bool moved = false;
    T f_new = f;
    for (int ls = 0; ls < kMaxLineSearch; ++ls) {
      for (int64_t i = 0; i < d_size; ++i) trial[i] = x[i] + step * d[i];
      const T f_trial = evaluate(trial.data(), g_trial.data());
      if (std::isfinite(f_trial) && f_trial <= f + T(1e-4) * step * slope) {
        moved = true;
        f_new = f_trial;
        std::swap(g_new, g_trial);
        break;
      }
      const T curvature = T(2) * (f_trial - f - step * slope);
      T interpolated = curvature > T(0) ? -slope * step * step / curvature : T(0.5) * step;
      if (std::isnan(interpolated)) interpolated = T(0.5);
      step = std::clamp(interpolated, T(0.1) * step, T(0.5) * step);
    }
    if (!moved) break;  // a failed line search stops the target where it is

    // Curvature pair (s, y) into slot iteration % 10, kept when s'y > eps y'y.
    const int slot = static_cast<int>(iteration % kHistory);
    T* s = s_hist.data() + slot * d_size;
    T* y = y_hist.data() + slot * d_size;
    for (int64_t i = 0; i < d_size; ++i) {
      s[i] = trial[i] - x[i];
      y[i] = g_new[i] - g[i];
    }
    const T sy = static_cast<T>(dot(s, y, d_size));
    if (sy > eps * static_cast<T>(dot(y, y, d_size))) {
      rho[slot] = T(1) / sy;
    } else {
      rho[slot] = T(0);
      std::fill(s, s + d_size, T(0));
      std::fill(y, y + d_size, T(0));
    }
    int next_order[kHistory];
    int count = 0;
    next_order[count++] = slot;
    for (int k = 0; k < num_pairs && count < kHistory; ++k)
      if (order[k] != slot) next_order[count++] = order[k];
    std::copy(next_order, next_order + count, order);
    num_pairs = count;

    std::copy(trial.begin(), trial.end(), x);
    const T decrease = f - f_new;
    const T scale = std::max(std::max(std::abs(f), std::abs(f_new)), T(1));
    f = f_new;
    std::swap(g, g_new);
    ++n_iter;
    const bool converged = max_abs(g.data(), d_size) <= tol || decrease <= ftol * scale;
    active = !converged;
  }
  return n_iter;
}

void check_fit_inputs(const at::Tensor& data, const at::Tensor& weights, const at::Tensor& labels,
                      const at::Tensor& sample_weight, const at::Tensor& num_classes, const at::Tensor& l2, bool onehot,
                      int64_t max_iter, double tol, int64_t num_threads) {
  const char* op = kOpFit;
  const char* name = onehot ? "codes" : "x1t";
  const auto dtype = check_ranks_and_weight_dtype(op, data, name, weights, labels, sample_weight);
  check_targets_and_device(op, data, name, weights, labels, sample_weight);
  TORCH_CHECK_VALUE(sample_weight.scalar_type() == dtype, op, ": sample_weight must have weights' dtype ", dtype,
                    ", got ", sample_weight.scalar_type());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ", labels.scalar_type());
  const int64_t targets = weights.size(0), f1 = weights.size(2);
  if (onehot) {
    TORCH_CHECK_VALUE(data.scalar_type() == at::kLong, op, ": codes must be int64, got ", data.scalar_type());
    TORCH_CHECK_VALUE(f1 >= 1, op,
                      ": weights must have shape (T, C, F1) with F1 >= 1 (the last column is the intercept), got ",
                      weights.sizes());
  } else {
    TORCH_CHECK_VALUE(data.scalar_type() == dtype, op, ": x1t must have weights' dtype ", dtype, ", got ",
                      data.scalar_type());
    TORCH_CHECK_VALUE(f1 == data.size(0), op, ": weights must have shape (T, C, F1) with F1 = x1t.shape[0] = ",
                      data.size(0), ", got weights of shape ", weights.sizes());
  }
  check_rank(num_classes, 1, op, "num_classes");
  check_rank(l2, 1, op, "l2");
  TORCH_CHECK_VALUE(num_classes.scalar_type() == at::kLong && num_classes.size(0) == targets, op,
                    ": num_classes must be (T,) = (", targets, ",) int64, got ", num_classes.sizes(), " ",
                    num_classes.scalar_type());
  TORCH_CHECK_VALUE(l2.scalar_type() == dtype && l2.size(0) == targets, op, ": l2 must be (T,) = (", targets,
                    ",) in weights' dtype ", dtype, ", got ", l2.sizes(), " ", l2.scalar_type());
  for (const at::Tensor* t : {&num_classes, &l2})
    TORCH_CHECK_VALUE(t->device() == data.device(), op, ": all arguments must be on one device, ", name, " is on ",
                      data.device(), " but another on ", t->device());
  TORCH_CHECK_VALUE(max_iter >= 0, op, ": max_iter must be >= 0, got ", max_iter);
  TORCH_CHECK_VALUE(tol >= 0, op, ": tol must be >= 0, got ", tol);
  TORCH_CHECK_VALUE(num_threads >= 1, op, ": num_threads must be >= 1, got ", num_threads);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logistic_fit_lbfgs_cpu(const at::Tensor& data_in, const at::Tensor& weights_in,
                                                          const at::Tensor& labels_in,
                                                          const at::Tensor& sample_weight_in,
                                                          const at::Tensor& num_classes_in, const at::Tensor& l2_in,
                                                          bool onehot, int64_t max_iter, double tol,
                                                          int64_t num_threads) {
  check_fit_inputs(data_in, weights_in, labels_in, sample_weight_in, num_classes_in, l2_in, onehot, max_iter, tol,
                   num_threads);
  const auto data = data_in.contiguous();
  const auto labels = labels_in.contiguous();
  const auto sample_weight = sample_weight_in.contiguous();
  const auto num_classes = num_classes_in.contiguous();
  auto weights = weights_in.clone(at::MemoryFormat::Contiguous);
  const int64_t targets = weights.size(0), width = weights.size(1), f1 = weights.size(2), n = data.size(1);
  const int64_t* nc = num_classes.data_ptr<int64_t>();
  const int64_t* lab = labels.data_ptr<int64_t>();
  for (int64_t t = 0; t < targets; ++t) {
    TORCH_CHECK_VALUE(nc[t] >= 1 && nc[t] <= width, kOpFit, ": num_classes must lie in [1, C] = [1, ", width,
                      "], C = weights.shape[1]; got ", nc[t], " for target ", t);
    for (int64_t j = 0; j < n; ++j)
      TORCH_CHECK_VALUE(static_cast<uint64_t>(lab[t * n + j]) < static_cast<uint64_t>(nc[t]), kOpFit,
                        ": labels of target ", t, " must lie in [0, num_classes[t]) = [0, ", nc[t], "), got ",
                        lab[t * n + j]);
  }
  if (onehot) {
    const int64_t* codes = data.data_ptr<int64_t>();
    for (int64_t i = 0; i < data.numel(); ++i)
      TORCH_CHECK_VALUE(static_cast<uint64_t>(codes[i]) < static_cast<uint64_t>(f1 - 1), kOpFit,
                        ": codes must lie in [0, F) = [0, ", f1 - 1,
                        "), F = weights.shape[2] - 1 the number of one-hot columns; got ", codes[i]);
  }
  auto n_iter = at::zeros({targets}, num_classes.options());
  int64_t* iters = n_iter.data_ptr<int64_t>();
  auto cross_entropy = at::zeros({targets}, num_classes.options().dtype(at::kDouble));
  double* ce = cross_entropy.data_ptr<double>();
  // Widest targets first: the costliest start first and the threads finish close together.
  std::vector<int64_t> order(targets);
  for (int64_t t = 0; t < targets; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return nc[a] > nc[b]; });

  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), kOpFit, [&] {
    using T = scalar_t;
    const T* sw = sample_weight.data_ptr<T>();
    const auto l2 = l2_in.to(at::kCPU).contiguous();
    const T* l2p = l2.data_ptr<T>();
    T* w = weights.data_ptr<T>();
    std::atomic<int64_t> next{0};
    const int vb = vector_bytes_for(std::is_same_v<T, double>);
    // One-hot: a target's vectors are those of the widest copy, except AVX2's for at most 32 bytes of classes
    // (C <= 8 floats): as many vectors, half the bytes per gathered row and per scattered store. Its classes
    // are padded to Cp, whole vectors; the row offsets code * Cp, sample-major (N, G) int32, are built once per
    // Cp of 1 to 4 vectors that a target needs, and read by every thread (keyed by Cp in 16-byte units).
    const int64_t unit = 16 / static_cast<int64_t>(sizeof(T));
    auto onehot_vb = [&](int64_t t) { return vb == 64 && nc[t] * static_cast<int64_t>(sizeof(T)) <= 32 ? 32 : vb; };
    auto padded = [&](int64_t t) {
      const int64_t lanes = onehot_vb(t) / static_cast<int64_t>(sizeof(T));
      return (nc[t] + lanes - 1) / lanes * lanes;
    };
    auto fits = [&](int64_t t) { return padded(t) <= kMaxFitVectors * (onehot_vb(t) / static_cast<int64_t>(sizeof(T))); };
    // float32 (InfoE) evaluates on the paired layout where it pays (JointLayout); float64, the reference-precision
    // path the tests compare, keeps the rounding order of the op. The offsets are built for one or the other.
    JointLayout joint;
    if (onehot && std::is_same_v<T, float>) joint = joint_layout(data.data_ptr<int64_t>(), data.size(0), n);
    std::vector<std::vector<int32_t>> row_offsets(kMaxFitVectors * 64 / 16 + 1);
    const int64_t gathered_rows = joint.empty() ? f1 - 1 : joint.rows;  // joint.rows <= kMaxJointRows
    if (onehot && gathered_rows * kMaxFitVectors * (64 / static_cast<int64_t>(sizeof(T))) < (int64_t(1) << 31)) {
      const int64_t groups = data.size(0);
      const int64_t* codes = data.data_ptr<int64_t>();
      const int64_t per_sample = joint.empty() ? groups : static_cast<int64_t>(joint.parts.size());
      for (int64_t t = 0; t < targets; ++t) {
        const int64_t cp = padded(t);
        if (!fits(t) || !row_offsets[cp / unit].empty()) continue;
        auto& offs = row_offsets[cp / unit];
        offs.resize(n * per_sample);
        if (joint.empty()) {
          for (int64_t gi = 0; gi < groups; ++gi)
            for (int64_t j = 0; j < n; ++j) offs[j * groups + gi] = static_cast<int32_t>(codes[gi * n + j] * cp);
        } else {
          for (int64_t i = 0; i < n * per_sample; ++i) offs[i] = joint.row[i] * static_cast<int32_t>(cp);
        }
      }
    }
    // The fit's cross-entropy: the loss with uniform sample weights 1 / N (what fit_logistic's Python loop
    // evaluates after its fit), on the worker that fit the target.
    const std::vector<T> uniform(n, T(1) / static_cast<T>(std::max<int64_t>(n, 1)));
    // Workers: up to one per shard of every target (a single target's fit is shared by two); a worker without a
    // target left helps the others' evaluations (Team).
    const int64_t workers = std::min<int64_t>(num_threads, targets * kShards);
    Team team(workers, targets);
    // Fit target t from x with `eval` (its shards lent to the team), then score it: the same evaluation with
    // uniform sample weights.
    auto fit_and_score = [&](auto& eval, int64_t t, T* x, int64_t id) {
      eval.team = &team;
      eval.slot = id;
      iters[t] = fit_target<T>(eval, x, nc[t], f1, l2p[t], max_iter, tol);
      eval.sw = uniform.data();
      std::vector<double> unused(nc[t] * f1);
      ce[t] = eval(x, unused.data());
    };
    auto worker = [&](int64_t id) {
      for (int64_t i = next.fetch_add(1); i < targets; i = next.fetch_add(1)) {
        const int64_t t = order[i];
        T* x = w + t * width * f1;  // the target's real classes: its first nc[t] rows
        if (onehot) {
          const std::vector<int32_t>* offsets = fits(t) ? &row_offsets[padded(t) / unit] : nullptr;
          OneHotEval<T> eval(data.data_ptr<int64_t>(), lab + t * n, sw + t * n, n, data.size(0), f1, nc[t],
                             onehot_vb(t), offsets, &joint);
          fit_and_score(eval, t, x, id);
        } else {
          DenseEval<T> eval(data.data_ptr<T>(), lab + t * n, sw + t * n, n, f1, nc[t], vb);
          fit_and_score(eval, t, x, id);
        }
        team.finished.fetch_add(1, std::memory_order_release);
      }
      if (workers > 1) team.help();
    };
    std::vector<std::thread> pool;
    std::exception_ptr error;
    std::mutex error_lock;
    auto guarded = [&](int64_t id) {
      try {
        worker(id);
      } catch (...) {
        std::lock_guard<std::mutex> hold(error_lock);
        if (!error) error = std::current_exception();
        next.store(targets);
        team.abort.store(true);
      }
    };
    for (int64_t i = 1; i < workers; ++i) pool.emplace_back(guarded, i);
    guarded(0);
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
  });
  return {weights, n_iter, cross_entropy};
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CPU, m) {
  m.impl("logistic_loss_grad", &logistic_loss_grad_cpu);
  m.impl("logistic_onehot_loss_grad", &logistic_onehot_loss_grad_cpu);
  m.impl("logistic_fit_lbfgs", &logistic_fit_lbfgs_cpu);
}

}  // namespace latentquant
