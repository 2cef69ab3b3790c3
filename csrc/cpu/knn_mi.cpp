// CPU kernels of latentquant::knn_mi_cd (Ross 2014) and latentquant::knn_mi_cc (KSG 1, max-norm):
// k-NN mutual information of every (latent, source) pair, on preprocessed float64 data.
//
// Distances are computed exactly as scikit-learn's searches compute them (see
// src/latentquant/reference/knn_mi.py), so with the same input the estimates agree to rounding of the
// final means. Scalar latents (D == 1) use their sort order: each latent is argsorted once (radix sort)
// and the order is reused for every source, so a pair costs O(N k) plus a short search per point -- the k
// same-label neighbours of a point form a window of its label's sorted run (min over k + 1 windows,
// vectorized over points), and the count "within r" is bracketed by same-label entries, so its search
// spans the gap between two of them (~N / count positions), not the whole neighbourhood (mi_cd_scalar).
// On CPUs with AVX-512 (chosen at run time; LATENTQUANT_MI_NO_AVX512=1 forces the baseline) the window
// keeps its squared gaps in registers and the count is a two-level search over blocks of 8 positions
// (window_block_avx512, count_block_avx512); both paths give the same bits. Scalar latents are handed to
// the threads one at a time (a shared counter): a thread sorts its latent and computes its pairs with
// every source, which share the sorted values.
// KSG (knn_mi_cc) on two scalar columns finds the joint max-norm neighbours with a 2-D k-d tree
// (KdTree2) and the marginal counts in the sorted columns. Vector-valued latents (D > 1) use blocked brute
// force, O(N^2 D) per pair. Pairs run in parallel (at::parallel_for); each pair is computed by one thread
// in a fixed order, so results do not depend on the thread count.
//
// Digamma: computed here in double (recurrence to x >= 10, then the asymptotic series to x^-12, error
// below 1e-15), tabulated once per call for the integers 0..N.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <limits>
#include <numeric>
#include <cstdlib>
#include <vector>

#include <torch/library.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LATENTQUANT_MI_AVX512 1
#endif

#include "../common.h"

namespace latentquant {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Largest k served by the windowed k-th neighbour search of scalar latents, which keeps k + 1 rows of
// squared gaps per block of points; larger k fall back to the sequential merge.
constexpr int64_t kMaxWindow = 64;

// Nearly always the bracket spans only the gap between two same-label points (~N / count positions), and
// then counting the inside positions of a fixed W-wide stretch (masked to the bracket) beats the binary
// search: W independent compares that vectorize, no chain of dependent loads, no branch. They may read
// W positions on either side of `in` (v is padded with kSearchWidth entries at both ends). W is a multiple
// of 4, so the lanes fill whole AVX2 vectors.
constexpr int64_t kSearchWidth = 64;

// Points per block of the scalar path (mi_cd_scalar): the squared gaps of a block, (k + 1) x (kBlock + k + 1),
// stay in L1. A multiple of 8 (the AVX-512 functions write whole vectors).
constexpr int64_t kBlock = 128;

double digamma_pos(double x) {
  double r = 0.0;
  while (x < 10.0) {
    r -= 1.0 / x;
    x += 1.0;
  }
  const double f = 1.0 / (x * x);
  const double series =
      f * (-1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132 + f * (691.0 / 32760))))));
  return r + std::log(x) - 0.5 / x + series;
}

// psi(n) for n = 0..n_max (entry 0 unused).
std::vector<double> digamma_table(int64_t n_max) {
  std::vector<double> t(n_max + 1, 0.0);
  at::parallel_for(1, n_max + 1, 4096, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) t[n] = digamma_pos(static_cast<double>(n));
  });
  return t;
}

inline double sq(double d) { return d * d; }

// Neumaier-compensated sum: the mean of N digamma values keeps ~1e-16 relative error at any N.
struct CompensatedSum {
  double sum = 0.0, comp = 0.0;
  void add(double v) {
    const double t = sum + v;
    comp += std::fabs(sum) >= std::fabs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  }
  double value() const { return sum + comp; }
};

// Galloping search around position g of a sorted array: the number of positions p (g included) for
// which within(p) holds, where within is true on a contiguous run containing g and false outside it.
template <typename Within>
int64_t count_run(int64_t g, int64_t n, const Within& within) {
  int64_t in = g, out = -1, step = 1;
  while (true) {
    const int64_t p = g - step;
    if (p < 0) break;
    if (!within(p)) {
      out = p;
      break;
    }
    in = p;
    step <<= 1;
  }
  while (in - out > 1) {
    const int64_t mid = out + (in - out) / 2;
    (within(mid) ? in : out) = mid;
  }
  const int64_t left = in;
  in = g, out = n, step = 1;
  while (true) {
    const int64_t p = g + step;
    if (p >= n) break;
    if (!within(p)) {
      out = p;
      break;
    }
    in = p;
    step <<= 1;
  }
  while (out - in > 1) {
    const int64_t mid = in + (out - in) / 2;
    (within(mid) ? in : out) = mid;
  }
  return in - left + 1;
}

// Labels of one source encoded as 0..C-1 (in label order), with the size of each class.
struct Codes {
  std::vector<int32_t> code;  // int32: the per-pair pass gathers it in random order, so keep it small
  std::vector<int64_t> count;
  bool has_singletons() const {
    return std::any_of(count.begin(), count.end(), [](int64_t c) { return c < 2; });
  }
};

Codes encode(const int64_t* y, int64_t n, int64_t stride) {
  Codes c;
  c.code.resize(n);
  if (n == 0) return c;
  int64_t lo = y[0], hi = y[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, y[i * stride]);
    hi = std::max(hi, y[i * stride]);
  }
  // Labels in a range of at most a few N values (the usual 0..C-1 codes): a counting table, O(N + range).
  // The difference is taken in unsigned arithmetic, so extreme int64 labels cannot overflow it.
  const uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  if (range < static_cast<uint64_t>(4 * n + 1024)) {
    std::vector<int64_t> table(range + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++table[static_cast<uint64_t>(y[i * stride]) - static_cast<uint64_t>(lo)];
    for (int64_t& t : table) {
      if (t == 0) continue;
      c.count.push_back(t);
      t = static_cast<int64_t>(c.count.size()) - 1;
    }
    for (int64_t i = 0; i < n; ++i)
      c.code[i] = static_cast<int32_t>(table[static_cast<uint64_t>(y[i * stride]) - static_cast<uint64_t>(lo)]);
    return c;
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return y[a * stride] < y[b * stride]; });
  for (int64_t p = 0; p < n; ++p) {
    if (p == 0 || y[order[p] * stride] != y[order[p - 1] * stride]) c.count.push_back(0);
    c.code[order[p]] = static_cast<int32_t>(c.count.size()) - 1;
    ++c.count.back();
  }
  return c;
}

// Order-preserving map of a (non-NaN) double to an unsigned key and back.
inline uint64_t sort_key(double v) {
  const uint64_t b = std::bit_cast<uint64_t>(v);
  return (b >> 63) ? ~b : b | (uint64_t(1) << 63);
}
inline double from_sort_key(uint64_t k) {
  return std::bit_cast<double>((k >> 63) ? k & ~(uint64_t(1) << 63) : ~k);
}

// Buffers of radix_argsort, reused across the columns a thread sorts.
struct RadixScratch {
  std::vector<uint64_t> key, key_tmp;
  std::vector<int32_t> idx_tmp;
  std::vector<std::pair<uint64_t, int32_t>> run;
};

// Argsort of n doubles v[0], v[stride], ...: `sorted` receives the values in ascending order and `perm` the sample of each, ties
// in input order (the estimators do not depend on the order of equal values, but the order is fixed).
// LSD radix sort on the top 44 bits of the order-preserving keys (4 passes of 11 bits, a pass skipped when
// every key shares its digit), then the rare runs of keys equal in those bits (values within ~2^-32 of
// each other relative to their size, exact ties aside) sorted by (full key, sample). ~7x faster than
// std::sort of an index array at N = 50,000, and 1.5x faster than 6 passes over the full keys.
void radix_argsort(const double* v, int64_t stride, int64_t n, double* sorted, int32_t* perm, RadixScratch& rs) {
  constexpr int kBits = 11, kPasses = 4, kBuckets = 1 << kBits, kLow = 64 - kPasses * kBits;
  rs.key.resize(n);
  rs.key_tmp.resize(n);
  rs.idx_tmp.resize(n);
  uint64_t* key = rs.key.data();
  uint64_t* key_tmp = rs.key_tmp.data();
  int32_t* idx = perm;
  int32_t* idx_tmp = rs.idx_tmp.data();
  int32_t hist[kPasses][kBuckets] = {};
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = sort_key(v[i * stride]);
    key[i] = k;
    idx[i] = static_cast<int32_t>(i);
    for (int p = 0; p < kPasses; ++p) ++hist[p][(k >> (kLow + p * kBits)) & (kBuckets - 1)];
  }
  for (int p = 0; p < kPasses; ++p) {
    int32_t* h = hist[p];
    const int shift = kLow + p * kBits;
    if (n == 0 || h[(key[0] >> shift) & (kBuckets - 1)] == n) continue;
    int32_t sum = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const int32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int32_t q = h[(key[i] >> shift) & (kBuckets - 1)]++;
      key_tmp[q] = key[i];
      idx_tmp[q] = idx[i];
    }
    std::swap(key, key_tmp);
    std::swap(idx, idx_tmp);
  }
  if (idx != perm) std::copy_n(idx, n, perm);
  // Runs equal in the top bits: sort by the full key, then the sample (the order LSD on every bit gives).
  for (int64_t i = 1; i < n;) {
    if ((key[i] >> kLow) != (key[i - 1] >> kLow)) {
      ++i;
      continue;
    }
    const int64_t begin = i - 1;
    int64_t end = i + 1;
    while (end < n && (key[end] >> kLow) == (key[begin] >> kLow)) ++end;
    bool ordered = true;
    for (int64_t j = begin + 1; j < end; ++j) ordered &= key[j - 1] <= key[j];  // exact ties: in order already
    if (!ordered) {
      rs.run.clear();
      for (int64_t j = begin; j < end; ++j) rs.run.emplace_back(key[j], perm[j]);
      std::sort(rs.run.begin(), rs.run.end());
      for (int64_t j = begin; j < end; ++j) {
        key[j] = rs.run[j - begin].first;
        perm[j] = rs.run[j - begin].second;
      }
    }
    i = end;
  }
  for (int64_t i = 0; i < n; ++i) sorted[i] = from_sort_key(key[i]);
}

void radix_argsort(const double* v, int64_t n, std::vector<double>& sorted, std::vector<int32_t>& perm) {
  RadixScratch rs;
  sorted.resize(n);
  perm.resize(n);
  radix_argsort(v, 1, n, sorted.data(), perm.data(), rs);
}

// One latent column, gathered contiguous as (N, D), and for D == 1 its sort order. int32 indices (the
// ops accept N < 2^31) halve the memory and the bandwidth of the per-pair passes.
struct Column {
  std::vector<double> v;       // (N, D); for D == 1 kept only when `lookup` was asked for
  std::vector<int32_t> perm;   // sorted position -> sample (D == 1)
  std::vector<double> sorted;  // values in sorted order (D == 1)
  std::vector<int32_t> pos;    // sample -> sorted position (D == 1 with `lookup`)
};

std::vector<Column> gather_columns(const at::Tensor& x, bool sort, bool lookup) {
  const int64_t n = x.size(0), cols = x.size(1), dim = x.size(2);
  const double* xp = x.data_ptr<double>();
  std::vector<Column> out(cols);
  at::parallel_for(0, cols, 1, [&](int64_t b, int64_t e) {
    for (int64_t l = b; l < e; ++l) {
      Column& c = out[l];
      c.v.resize(n * dim);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t d = 0; d < dim; ++d) c.v[i * dim + d] = xp[(i * cols + l) * dim + d];
      if (!sort) continue;
      radix_argsort(c.v.data(), n, c.sorted, c.perm);
      if (!lookup) {
        std::vector<double>().swap(c.v);
        continue;
      }
      c.pos.resize(n);
      for (int64_t p = 0; p < n; ++p) c.pos[c.perm[p]] = static_cast<int32_t>(p);
    }
  });
  return out;
}

// k-th smallest squared distance from run[t] to the other members of a sorted run of `cnt` scalars:
// the candidates on each side are already in increasing order, so merge k of them (branch-free). Serves
// k > kMaxWindow.
double kth_sorted_run(const double* run, int64_t t, int64_t cnt, int64_t k) {
  int64_t a = t - 1, b = t + 1;
  double d = 0.0;
  const double v = run[t];
  for (int64_t i = 0; i < k; ++i) {
    const double dl = a >= 0 ? sq(v - run[a < 0 ? 0 : a]) : kInf;
    const double dr = b < cnt ? sq(v - run[b < cnt ? b : cnt - 1]) : kInf;
    const bool take_left = dl <= dr;
    d = take_left ? dl : dr;
    a -= take_left;
    b += !take_left;
  }
  return d;
}

// scikit-learn searches a label class by brute force when k >= count // 2 and then ranks scalars by
// (x_i^2 + (-2 x_i x_j)) + x_j^2 (clipped at 0), whose rounding differs from (x_i - x_j)^2.
double kth_brute_expansion(const double* run, int64_t t, int64_t cnt, int64_t k, std::vector<double>& buf) {
  buf.clear();
  const double xi = run[t], sqi = xi * xi;
  for (int64_t j = 0; j < cnt; ++j) {
    if (j == t) continue;
    const double xj = run[j];
    const double mid = -2.0 * (xi * xj);
    buf.push_back(std::max((sqi + mid) + xj * xj, 0.0));
  }
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end());
  return buf[k - 1];
}

inline double sq_dist(const double* a, const double* b, int64_t dim) {
  double s = 0.0;
  for (int64_t d = 0; d < dim; ++d) s += sq(a[d] - b[d]);
  return s;
}

inline double cheb_dist(const double* a, const double* b, int64_t dim) {
  double s = 0.0;
  for (int64_t d = 0; d < dim; ++d) s = std::fmax(s, std::fabs(a[d] - b[d]));
  return s;
}

// ---------------------------------------------------------------- continuous-discrete

// The sorted non-singleton values as count_block* and count_within read them: kSearchWidth entries of -inf,
// the n values, +inf after (kSearchWidth + 24: the last block samples); with `samples`, the block samples of
// count_block_avx512 (first8[b] / last8[b] = first / last entry of block b of the padded array).
struct PaddedSorted {
  std::vector<double> kp, first8, last8;
  const double* values() const { return kp.data() + kSearchWidth; }
  double* values() { return kp.data() + kSearchWidth; }
  void resize(int64_t n) { kp.resize(n + 2 * kSearchWidth + 24); }
  // Fill the padding (and the samples) around the n values already in values().
  void finish(int64_t n, bool samples) {
    std::fill(kp.begin(), kp.begin() + kSearchWidth, -kInf);
    std::fill(kp.begin() + kSearchWidth + n, kp.end(), kInf);
    if (!samples) return;
    const int64_t blocks = (n + 2 * kSearchWidth) / 8 + 2;
    first8.assign(blocks + 8, kInf);
    last8.assign(blocks + 8, kInf);
    for (int64_t b = 0; b < blocks; ++b) {
      first8[b] = kp[8 * b];
      last8[b] = kp[8 * b + 7];
    }
  }
};

// Per-pair scratch, reused across the pairs a thread handles.
struct CdScratch {
  std::vector<int64_t> offset, fill;
  std::vector<double> run;        // values grouped by class (sorted within class when D == 1)
  std::vector<int32_t> run_g;     // D == 1: position in `kept` of each run entry
  std::vector<int64_t> run_idx;   // D > 1: sample of each run entry
  std::vector<double> kept;       // D > 1: non-singleton values, (n_kept, D) rows
  PaddedSorted sorted_kept;       // D == 1 with singletons: the non-singleton values in sorted order
  std::vector<double> radius2;    // D > 1: per kept point
  std::vector<double> buf;
  std::vector<double> gaps;       // D == 1: squared gaps of a block (window_block)
  std::vector<int32_t> hist;      // D == 1: how many points have each count m (zero between pairs)
};

// Counts m of one pair as a histogram, summed as sum_m hist[m] psi(m) at the end: one increment per point
// instead of a compensated addition, and the sum has as many terms as distinct counts.
struct CountHistogram {
  std::vector<int32_t>& hist;
  int64_t max_m = 0;
  CountHistogram(std::vector<int32_t>& h, int64_t n) : hist(h) {
    if (static_cast<int64_t>(hist.size()) < n + 1) hist.assign(n + 1, 0);
  }
  void add(int64_t m) {
    ++hist[m];
    max_m = std::max(max_m, m);
  }
  // sum of psi(m) over the points added; leaves the histogram zeroed for the next pair.
  double sum_and_clear(const std::vector<double>& psi) {
    CompensatedSum s;
    for (int64_t m = 1; m <= max_m; ++m) {
      if (hist[m] == 0) continue;
      s.add(psi[m] * hist[m]);
      hist[m] = 0;
    }
    return s.value();
  }
};

// Class offsets of a source in `s.offset` (and a copy in `s.fill` to scatter with); class c's run starts
// at offset[c] + (2c + 1) * pad, between `pad` entries on either side.
void class_offsets(const Codes& lab, CdScratch& s, int64_t pad = 0) {
  const int64_t classes = static_cast<int64_t>(lab.count.size());
  s.offset.assign(classes + 1, 0);
  for (int64_t c = 0; c < classes; ++c) s.offset[c + 1] = s.offset[c] + lab.count[c] + 2 * pad;
  s.fill.resize(classes);
  for (int64_t c = 0; c < classes; ++c) s.fill[c] = s.offset[c] + pad;
}

// psi(N) + <psi(k)> - <psi(N_label)> - <psi(m)>, clipped at 0; sum_m is the sum of psi(m).
double finish_cd(const Codes& lab, int64_t n_kept, int64_t n_neighbors, const std::vector<double>& psi,
                 double sum_m) {
  if (n_kept == 0) return 0.0;
  double sum_k = 0.0, sum_count = 0.0;
  for (const int64_t cnt : lab.count) {
    if (cnt < 2) continue;
    sum_k += cnt * psi[std::min(n_neighbors, cnt - 1)];
    sum_count += cnt * psi[cnt];
  }
  return std::max(0.0, psi[n_kept] + (sum_k - sum_count - sum_m) / static_cast<double>(n_kept));
}

// The largest double below d, for d > 0 (std::nextafter(d, 0.0) without the library call, and without a
// branch, so loops over it vectorize); 0 stays 0.
inline double below(double d) { return std::bit_cast<double>(std::bit_cast<uint64_t>(d) - (d != 0.0)); }

// Edge of the run of positions p of the sorted array v with sq(x - v[p]) <= r2 (a contiguous run:
// distances grow away from x): given `in` inside the run and `out` outside it (or -1 / n), on either side
// of `in`, the position next to the boundary on the inside. The bracket comes from the same-label entries.
inline int64_t edge_within(const double* v, int64_t in, int64_t out, double x, double r2) {
  while (in - out > 1 || out - in > 1) {
    const int64_t mid = out + (in - out) / 2;
    const bool w = sq(x - v[mid]) <= r2;
    in = w ? mid : in;
    out = w ? out : mid;
  }
  return in;
}

// Number of positions of the sorted array v (length n) within squared distance r2 of v[g], g included:
// the general search over the whole array, for the points the bracketed count cannot serve.
inline int64_t count_within(const double* v, int64_t n, int64_t g, double r2) {
  return edge_within(v, g, n, v[g], r2) - edge_within(v, g, -1, v[g], r2) + 1;
}


// m = last - first + 1 for brackets (lo_out, lo_in] and [hi_in, hi_out), or -1 if one is wider than W.
// No mask is needed: positions past `out` are farther from x than `out`, which is outside, so they are
// outside too; the count over the W positions next to `in` is the count over the bracket.
template <int W>
inline int64_t count_bracketed(const double* v, int64_t lo_out, int64_t lo_in, int64_t hi_in, int64_t hi_out,
                               double x, double r2) {
  if (lo_in - lo_out > W || hi_out - hi_in > W) return -1;
  const double* lo = v + lo_in - W;
  const double* hi = v + hi_in + 1;
  int64_t c = 0;
  for (int64_t j = 0; j < W; ++j) {  // W lanes (a multiple of 4: whole AVX2 vectors)
    c += sq(x - lo[j]) <= r2;
    c += sq(x - hi[j]) <= r2;
  }
  return hi_in - lo_in + 1 + c;
}

// The smallest of the widths count_block is compiled for (4, 8, 12, 16, 24, 32, 48, 64) that is >= want,
// or 64.
inline int64_t counting_width(int64_t want) {
  for (const int64_t w : {4, 8, 12, 16, 24, 32, 48})
    if (want <= w) return w;
  return kSearchWidth;
}

// Counts m (or -1: needs the general search) of the points of one block, see mi_cd_scalar.
__attribute__((target_clones("avx2", "default"))) void count_block(
    const double* kept, const double* run, const int32_t* run_g, int64_t len, int64_t k, int64_t width,
    const double* r2, const int32_t* i0, const int32_t* i1, int32_t* m) {
  for (int64_t t = 0; t < len; ++t) {
    const int64_t a = i0[t], b = i1[t];
    if (a > k || b > k) {
      m[t] = -1;  // exact ties beyond the window
      continue;
    }
    // run_g of a sentinel is -1 (left) / n_kept (right): "outside" bounds.
    const int64_t lo_out = run_g[t - a - 1], lo_in = run_g[t - a];
    const int64_t hi_in = run_g[t + b], hi_out = run_g[t + b + 1];
    const double x = run[t];
    int64_t c;
    switch (width) {
      case 4: c = count_bracketed<4>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      case 8: c = count_bracketed<8>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      case 12: c = count_bracketed<12>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      case 16: c = count_bracketed<16>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      case 24: c = count_bracketed<24>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      case 32: c = count_bracketed<32>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      case 48: c = count_bracketed<48>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
      default: c = count_bracketed<kSearchWidth>(kept, lo_out, lo_in, hi_in, hi_out, x, r2[t]); break;
    }
    if (c < 0)
      c = edge_within(kept, hi_in, hi_out, x, r2[t]) - edge_within(kept, lo_in, lo_out, x, r2[t]) + 1;
    m[t] = static_cast<int32_t>(c);
  }
}

// The windowed k-th neighbour search and the same-label counts for positions t0 .. t0 + len - 1 of a
// sorted run with at least k + 1 sentinels on either side (see mi_cd_scalar), vectorized over positions:
// r2[i] = (the largest double below sqrt(kth))^2 and i0[i] / i1[i] = how many of the k + 1 nearest run
// entries on the left / right are within it. Each squared gap is computed once, D_j[i] =
// (run[i] - run[i + j])^2 for j = 1 .. k + 1 and i = -j .. len - 1 (row j of `gaps`, offset by j), and
// serves as the right distance of i and the left distance of i + j ((a - b)^2 == (b - a)^2 exactly).
// IEEE sub/mul/min/max/sqrt round the same in every vector width, so the AVX2 clone and the baseline
// return identical bits (no FMA: contraction is off).
__attribute__((target_clones("avx2", "default"))) void window_block(const double* run, int64_t len, int64_t k,
                                                                    double* r2, int32_t* i0, int32_t* i1,
                                                                    double* gaps) {
  const int64_t stride = len + k + 1;
  for (int64_t j = 1; j <= k + 1; ++j) {
    double* row = gaps + (j - 1) * stride;  // row[j + i] = D_j[i]
    const double* lo = run - j;
    const double* hi = run;
    for (int64_t i = 0; i < len + j; ++i) row[i] = sq(lo[i] - hi[i]);
  }
  auto right = [&](int64_t j) { return gaps + (j - 1) * stride + j; };  // right(j)[i] = D_j[i]
  auto left = [&](int64_t j) { return gaps + (j - 1) * stride; };       // left(j)[i] = D_j[i - j]
  const double* dk = right(k);
  for (int64_t i = 0; i < len; ++i) r2[i] = dk[i];  // j = 0: all k on the right
  for (int64_t j = 1; j <= k; ++j) {
    const double* l = left(j);
    const double* r = j < k ? right(k - j) : nullptr;
    if (r == nullptr) {  // j = k: all k on the left
      for (int64_t i = 0; i < len; ++i) r2[i] = l[i] < r2[i] ? l[i] : r2[i];
      continue;
    }
    for (int64_t i = 0; i < len; ++i) {
      const double d = std::max(l[i], r[i]);
      r2[i] = d < r2[i] ? d : r2[i];
    }
  }
  for (int64_t i = 0; i < len; ++i) {
    const double r = below(std::sqrt(r2[i]));
    r2[i] = r * r;
  }
  for (int64_t i = 0; i < len; ++i) i0[i] = i1[i] = 0;
  for (int64_t j = 1; j <= k + 1; ++j) {
    const double* l = left(j);
    const double* r = right(j);
    for (int64_t i = 0; i < len; ++i) {
      i0[i] += l[i] <= r2[i];
      i1[i] += r[i] <= r2[i];
    }
  }
}

#ifdef LATENTQUANT_MI_AVX512
// AVX-512 versions of window_block + count_block, chosen at run time (avx512_usable). Same values bit for
// bit: the same IEEE sub/mul/min/max/sqrt on the same doubles, and integer counts.
//
// window_block_avx512: 8 points per vector, every squared gap of the window in registers (no table in
// memory): D = (run[i] - run[i -/+ j])^2 equals the baseline's (run[i -/+ j] - run[i])^2 exactly. Reads
// up to 7 entries past the block's end (the run buffer keeps 8 spare entries after its last class).
// K > 0: k = K known at compile time (the squared gaps stay in registers); K = 0: any k <= kMaxWindow.
template <int K>
__attribute__((target("avx512f,avx512dq"), always_inline)) inline void window_block_avx512_k(
    const double* run, int64_t len, int64_t k_rt, double* r2, int32_t* i0, int32_t* i1) {
  const int64_t k = K > 0 ? K : k_rt;
  __m512d dl[(K > 0 ? K : kMaxWindow) + 2], dr[(K > 0 ? K : kMaxWindow) + 2];
  const __m512i one = _mm512_set1_epi64(1);
  for (int64_t i = 0; i < len; i += 8) {
    const __m512d v = _mm512_loadu_pd(run + i);
    for (int64_t j = 1; j <= k + 1; ++j) {
      const __m512d a = _mm512_sub_pd(v, _mm512_loadu_pd(run + i - j));
      const __m512d b = _mm512_sub_pd(_mm512_loadu_pd(run + i + j), v);
      dl[j] = _mm512_mul_pd(a, a);
      dr[j] = _mm512_mul_pd(b, b);
    }
    __m512d m = _mm512_min_pd(dr[k], dl[k]);  // all k on one side
    for (int64_t j = 1; j < k; ++j) m = _mm512_min_pd(m, _mm512_max_pd(dl[j], dr[k - j]));
    // below(sqrt(m)), squared
    const __m512d root = _mm512_sqrt_pd(m);
    const __mmask8 nonzero = _mm512_cmp_pd_mask(root, _mm512_setzero_pd(), _CMP_NEQ_UQ);
    const __m512d r =
        _mm512_castsi512_pd(_mm512_mask_sub_epi64(_mm512_castpd_si512(root), nonzero, _mm512_castpd_si512(root), one));
    const __m512d rr = _mm512_mul_pd(r, r);
    __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512();
    for (int64_t j = 1; j <= k + 1; ++j) {
      c0 = _mm512_mask_add_epi64(c0, _mm512_cmp_pd_mask(dl[j], rr, _CMP_LE_OQ), c0, one);
      c1 = _mm512_mask_add_epi64(c1, _mm512_cmp_pd_mask(dr[j], rr, _CMP_LE_OQ), c1, one);
    }
    _mm512_storeu_pd(r2 + i, rr);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(i0 + i), _mm512_cvtepi64_epi32(c0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(i1 + i), _mm512_cvtepi64_epi32(c1));
  }
}

// k = 3 (scikit-learn's default) and k = 10 (InfoMEC's) compiled for their k.
__attribute__((target("avx512f,avx512dq"))) void window_block_avx512(const double* run, int64_t len, int64_t k,
                                                                     double* r2, int32_t* i0, int32_t* i1) {
  switch (k) {
    case 3: return window_block_avx512_k<3>(run, len, k, r2, i0, i1);
    case 10: return window_block_avx512_k<10>(run, len, k, r2, i0, i1);
    default: return window_block_avx512_k<0>(run, len, k, r2, i0, i1);
  }
}

// count_block_avx512: the count within r, bracketed as in count_block, without a fixed-width scan: a
// two-level search over aligned blocks of 8 positions of the padded sorted array kp. last8[b] / first8[b]
// hold kp[8b + 7] / kp[8b] (the last / first entry of block b); on the left of the inside same-label entry
// `in` (block B), the inside entries among last8[B - 8 .. B - 1] (contiguous next to B) say which block T
// holds the boundary, and the inside entries among the 8 positions ending at min(8 T + 7, in) say where in
// it. The right side likewise with first8. Two vector compares per side, no branch, for a boundary up
// to 64 positions from `in`; beyond that (rare) the binary search over the rest of the bracket.
// Positions are in kp's coordinates (kept's + kSearchWidth), so B - 8 >= 0; the arrays are padded with
// +inf past the end.
__attribute__((target("avx512f,avx512dq"))) inline int64_t inside_count(const double* at, __m512d x, __m512d r2) {
  const __m512d d = _mm512_sub_pd(x, _mm512_loadu_pd(at));
  return __builtin_popcountll(_cvtmask8_u32(_mm512_cmp_pd_mask(_mm512_mul_pd(d, d), r2, _CMP_LE_OQ)));
}

__attribute__((target("avx512f,avx512dq"))) void count_block_avx512(const double* kp, const double* last8,
                                                           const double* first8, const double* run,
                                                           const int32_t* run_g, int64_t len, int64_t k,
                                                           const double* r2, const int32_t* i0,
                                                           const int32_t* i1, int32_t* m) {
  constexpr int64_t off = kSearchWidth;
  for (int64_t t = 0; t < len; ++t) {
    const int64_t a = i0[t], b = i1[t];
    if (a > k || b > k) [[unlikely]] {
      m[t] = -1;  // exact ties beyond the window
      continue;
    }
    const int64_t lo_in = run_g[t - a] + off, hi_in = run_g[t + b] + off;
    const __m512d x = _mm512_set1_pd(run[t]), rr = _mm512_set1_pd(r2[t]);
    // left: the inside entries among last8[B - 8 .. B - 1] say the boundary is in block T = B - count;
    // the 8 positions ending at min(8 T + 7, in) hold it (those below it are outside, those above inside)
    const int64_t bl = lo_in >> 3;
    const int64_t cl = inside_count(last8 + bl - 8, x, rr);
    const int64_t end_l = std::min(8 * (bl - cl) + 7, lo_in);
    int64_t lo = end_l + 1 - inside_count(kp + end_l - 7, x, rr);
    // right: likewise with first8[B + 1 .. B + 8], the 8 positions from max(8 T, in)
    const int64_t br = hi_in >> 3;
    const int64_t cr = inside_count(first8 + br + 1, x, rr);
    const int64_t start_r = std::max(8 * (br + cr), hi_in);
    int64_t hi = start_r - 1 + inside_count(kp + start_r, x, rr);
    if (cl == 8) [[unlikely]]  // the boundary is more than 64 positions away: binary search the rest
      lo = edge_within(kp, 8 * (bl - 8) + 7, run_g[t - a - 1] + off, run[t], r2[t]);
    if (cr == 8) [[unlikely]]
      hi = edge_within(kp, 8 * (br + 8), run_g[t + b + 1] + off, run[t], r2[t]);
    m[t] = static_cast<int32_t>(hi - lo + 1);
  }
}

// Whether the AVX-512 versions run: the CPU has AVX-512 F + DQ, and LATENTQUANT_MI_NO_AVX512 is unset or
// 0 (the switch lets the tests run the baseline path too).
bool avx512_usable() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  const char* off = std::getenv("LATENTQUANT_MI_NO_AVX512");
  return cpu && !(off != nullptr && off[0] != '\0' && std::strcmp(off, "0") != 0);
}
#else
bool avx512_usable() { return false; }
#endif

// Scalar latent. One pass in sorted order groups the values by label (each run sorted, with k + 1 sentinel
// entries of -inf before and +inf after it) and collects the non-singleton values in sorted order (`kept`).
// Per point t of a run (k = min(n_neighbors, count - 1)):
//  - the k same-label neighbours form a window of the run around t, so with dl[j] / dr[j] the squared
//    distances to the j-th run entry on the left / right (dl[0] = dr[0] = 0), the k-th neighbour distance
//    is min over j of max(dl[j], dr[k - j]): k + 1 independent terms instead of a k-step merge whose every
//    step waits on the previous one (that merge was 60% of the time);
//  - the count within r: distances grow along the run on each side, so the number of same-label entries
//    within r on the left (i0 <= k + 1) comes from dl[1..k+1], and the boundary in `kept` lies between the
//    kept positions of run entries t - i0 (inside) and t - i0 - 1 (outside): a search over the gap between
//    two same-label points (~N / count positions), not over the whole neighbourhood. Likewise on the right.
//    Only when all k + 1 entries are inside (exact ties, e.g. duplicated values) does it gallop further.
// Every distance is sq(x - v) of the same doubles scikit-learn compares, so the counts are identical.
double mi_cd_scalar(const int32_t* perm, const PaddedSorted& sorted, const Codes& lab, int64_t n,
                    int64_t n_neighbors, const std::vector<double>& psi, CdScratch& s, bool avx512) {
  const int64_t pad = n_neighbors + 1;
  const int64_t classes = static_cast<int64_t>(lab.count.size());
  class_offsets(lab, s, pad);
  const int64_t total = s.offset[classes];
  s.run.resize(total + 8);  // 8 spare entries: read (ignored) by window_block_avx512
  std::fill(s.run.begin() + total, s.run.end(), kInf);
  s.run_g.resize(total);
  const int32_t* code = lab.code.data();
  const int64_t* count = lab.count.data();
  int64_t* fill = s.fill.data();
  double* run_all = s.run.data();
  int32_t* run_g_all = s.run_g.data();
  const double* values = sorted.values();
  // Without singletons every value is kept: `kept` is the latent's sorted array (shared by its sources).
  const bool singletons = lab.has_singletons();
  int32_t n_kept = 0;
  if (!singletons) {
    for (int64_t p = 0; p < n; ++p) {
      const int64_t q = fill[code[perm[p]]]++;
      run_all[q] = values[p];
      run_g_all[q] = static_cast<int32_t>(p);
    }
    n_kept = static_cast<int32_t>(n);
  } else {
    s.sorted_kept.resize(n);
    double* kept_w = s.sorted_kept.values();
    for (int64_t p = 0; p < n; ++p) {
      const int32_t c = code[perm[p]];
      const int64_t q = fill[c]++;
      const double v = values[p];
      run_all[q] = v;
      run_g_all[q] = n_kept;
      kept_w[n_kept] = v;
      n_kept += count[c] > 1;
    }
    s.sorted_kept.finish(n_kept, avx512);
  }
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t begin = s.offset[c] + pad, end = begin + count[c];
    for (int64_t q = s.offset[c]; q < begin; ++q) {
      run_all[q] = -kInf;
      run_g_all[q] = -1;
    }
    for (int64_t q = end; q < s.offset[c + 1]; ++q) {
      run_all[q] = kInf;
      run_g_all[q] = n_kept;
    }
  }
  const PaddedSorted& kept_all = singletons ? s.sorted_kept : sorted;
  CountHistogram sum_m(s.hist, n);
  const double* kept = kept_all.values();
  const int64_t max_window = std::min(n_neighbors, kMaxWindow);
  s.gaps.resize((max_window + 1) * (kBlock + max_window + 1));
  double r2b[kBlock];
  int32_t i0b[kBlock], i1b[kBlock], mb[kBlock];
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t cnt = count[c];
    if (cnt < 2) continue;
    const int64_t k = std::min(n_neighbors, cnt - 1);
    const double* run = run_all + s.offset[c] + pad;
    const int32_t* run_g = run_g_all + s.offset[c] + pad;
    if (k >= cnt / 2) {
      // scikit-learn's brute-force ranking (small classes).
      for (int64_t t = 0; t < cnt; ++t) {
        const double r = below(std::sqrt(kth_brute_expansion(run, t, cnt, k, s.buf)));
        sum_m.add(count_within(kept, n_kept, run_g[t], r * r));
      }
      continue;
    }
    if (k > kMaxWindow) {
      for (int64_t t = 0; t < cnt; ++t) {
        const double r = below(std::sqrt(kth_sorted_run(run, t, cnt, k)));
        sum_m.add(count_within(kept, n_kept, run_g[t], r * r));
      }
      continue;
    }
    // Counting width for this label: the gap between two of its points averages n_kept / cnt positions
    // (roughly geometric), so 3x that leaves a few percent of brackets to the binary search.
    const int64_t width = counting_width(3 * n_kept / cnt);
    for (int64_t t0 = 0; t0 < cnt; t0 += kBlock) {
      const int64_t len = std::min(kBlock, cnt - t0);
#ifdef LATENTQUANT_MI_AVX512
      if (avx512) {
        window_block_avx512(run + t0, len, k, r2b, i0b, i1b);
        count_block_avx512(kept_all.kp.data(), kept_all.last8.data(), kept_all.first8.data(), run + t0,
                           run_g + t0, len, k, r2b, i0b, i1b, mb);
      } else
#endif
      {
        window_block(run + t0, len, k, r2b, i0b, i1b, s.gaps.data());
        count_block(kept, run + t0, run_g + t0, len, k, width, r2b, i0b, i1b, mb);
      }
      for (int64_t i = 0; i < len; ++i)
        sum_m.add(mb[i] >= 0 ? mb[i] : count_within(kept, n_kept, run_g[t0 + i], r2b[i]));
    }
  }
  return finish_cd(lab, n_kept, n_neighbors, psi, sum_m.sum_and_clear(psi));
}

// Vector-valued latent (D > 1): exact Euclidean k-th neighbour per class, then a blocked brute-force
// count over all non-singleton points.
double mi_cd_vector(const Column& col, const Codes& lab, int64_t n, int64_t dim, int64_t n_neighbors,
                    const std::vector<double>& psi, CdScratch& s) {
  class_offsets(lab, s);
  s.run.resize(n * dim);
  s.run_idx.resize(n);
  s.kept.clear();
  std::vector<int64_t> kept_pos(n, -1);
  int64_t n_kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = lab.code[i];
    const int64_t q = s.fill[c]++;
    std::copy_n(col.v.data() + i * dim, dim, s.run.data() + q * dim);
    s.run_idx[q] = i;
    if (lab.count[c] > 1) {
      kept_pos[i] = n_kept++;
      s.kept.insert(s.kept.end(), col.v.begin() + i * dim, col.v.begin() + (i + 1) * dim);
    }
  }
  if (n_kept == 0) return 0.0;
  s.radius2.resize(n_kept);
  for (int64_t c = 0; c < static_cast<int64_t>(lab.count.size()); ++c) {
    const int64_t cnt = lab.count[c];
    if (cnt < 2) continue;
    const int64_t k = std::min(n_neighbors, cnt - 1);
    const double* run = s.run.data() + s.offset[c] * dim;
    for (int64_t t = 0; t < cnt; ++t) {
      s.buf.clear();
      for (int64_t j = 0; j < cnt; ++j)
        if (j != t) s.buf.push_back(sq_dist(run + t * dim, run + j * dim, dim));
      std::nth_element(s.buf.begin(), s.buf.begin() + (k - 1), s.buf.end());
      const double r = below(std::sqrt(s.buf[k - 1]));
      s.radius2[kept_pos[s.run_idx[s.offset[c] + t]]] = r * r;
    }
  }
  // Blocked brute force: a block of queries sweeps a block of points that stays in cache.
  constexpr int64_t kQ = 64, kP = 2048;
  const double* kept = s.kept.data();
  std::vector<int64_t> m(n_kept, 0);
  for (int64_t p0 = 0; p0 < n_kept; p0 += kP) {
    const int64_t p1 = std::min(n_kept, p0 + kP);
    for (int64_t q0 = 0; q0 < n_kept; q0 += kQ) {
      const int64_t q1 = std::min(n_kept, q0 + kQ);
      for (int64_t q = q0; q < q1; ++q) {
        int64_t cnt = 0;
        for (int64_t p = p0; p < p1; ++p) cnt += sq_dist(kept + q * dim, kept + p * dim, dim) <= s.radius2[q];
        m[q] += cnt;
      }
    }
  }
  CompensatedSum sum_m;
  for (int64_t q = 0; q < n_kept; ++q) sum_m.add(psi[m[q]]);
  return finish_cd(lab, n_kept, n_neighbors, psi, sum_m.value());
}

// Whether every entry of a float64 tensor is finite: one vectorized pass (at::isfinite(t).all() writes a
// bool tensor first, ~10x slower).
bool all_finite(const at::Tensor& t_in) {
  const at::Tensor t = t_in.contiguous();
  const double* p = t.data_ptr<double>();
  std::atomic<bool> ok{true};
  at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    uint32_t bad = 0;
    for (int64_t i = b; i < e; ++i) bad |= !(std::fabs(p[i]) <= std::numeric_limits<double>::max());
    if (bad) ok = false;
  });
  return ok;
}

// x (N, L, Dx) float64 and y of rank y_rank with N rows, finite x, 1 <= k <= N - 1, one device.
void check_inputs(const at::Tensor& x, const at::Tensor& y, int64_t y_rank, int64_t n_neighbors, const char* op) {
  check_rank(x, 3, op, "x");
  check_rank(y, y_rank, op, "y");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kDouble, op, ": x must be float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(y.size(0) == x.size(0), op, ": x and y must have the same number of samples, got ",
                    x.size(0), " and ", y.size(0));
  TORCH_CHECK_VALUE(x.size(0) < (int64_t(1) << 31), op, ": at most 2^31 - 1 samples, got ", x.size(0));
  TORCH_CHECK_VALUE(n_neighbors >= 1 && n_neighbors < x.size(0), op,
                    ": n_neighbors must be in [1, N - 1] for N = ", x.size(0), " samples, got ", n_neighbors);
  TORCH_CHECK_VALUE(x.device() == y.device(), op, ": x is on ", x.device(), " but y is on ", y.device());
  TORCH_CHECK_VALUE(all_finite(x), op, ": x contains NaN or Inf");
}

at::Tensor knn_mi_cd_cpu(const at::Tensor& x_in, const at::Tensor& y_in, int64_t n_neighbors) {
  const char* op = "knn_mi_cd";
  check_inputs(x_in, y_in, 2, n_neighbors, op);
  TORCH_CHECK_VALUE(y_in.scalar_type() == at::kLong, op, ": y must be int64 labels, got ", y_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t n = x.size(0), lat = x.size(1), dim = x.size(2), src = y.size(1);
  auto out = at::empty({lat, src}, x.options());
  if (lat == 0 || src == 0) return out;
  const std::vector<double> psi = digamma_table(n);
  std::vector<Codes> codes(src);
  const int64_t* yp = y.data_ptr<int64_t>();
  at::parallel_for(0, src, 1, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) codes[j] = encode(yp + j, n, src);
  });
  const bool avx512 = avx512_usable();
  double* o = out.data_ptr<double>();
  if (dim == 1) {
    // One latent at a time per thread, taken from a shared counter (dynamic balance): sort it, then its
    // pairs with every source, which share the sort order and the padded sorted values.
    const double* xp = x.data_ptr<double>();
    std::atomic<int64_t> next{0};
    const int64_t workers = std::min<int64_t>(lat, at::get_num_threads());
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      CdScratch scratch;
      RadixScratch radix;
      PaddedSorted sorted;
      std::vector<int32_t> perm(n);
      for (int64_t l = next++; l < lat; l = next++) {
        sorted.resize(n);
        radix_argsort(xp + l, lat, n, sorted.values(), perm.data(), radix);
        sorted.finish(n, avx512);
        for (int64_t j = 0; j < src; ++j)
          o[l * src + j] = mi_cd_scalar(perm.data(), sorted, codes[j], n, n_neighbors, psi, scratch, avx512);
      }
    });
    return out;
  }
  const std::vector<Column> cols = gather_columns(x, false, false);
  at::parallel_for(0, lat * src, 1, [&](int64_t b, int64_t e) {
    CdScratch scratch;
    for (int64_t pair = b; pair < e; ++pair)
      o[pair] = mi_cd_vector(cols[pair / src], codes[pair % src], n, dim, n_neighbors, psi, scratch);
  });
  return out;
}

// ---------------------------------------------------------------- continuous-continuous

// Insert d into the ascending array best[0..k) when smaller than its last element.
inline void push_best(std::vector<double>& best, double d) {
  int64_t i = static_cast<int64_t>(best.size()) - 1;
  if (!(d < best[i])) return;
  while (i > 0 && best[i - 1] > d) {
    best[i] = best[i - 1];
    --i;
  }
  best[i] = d;
}

// 2-D k-d tree for the max-norm k nearest neighbours of the points of one scalar pair. Leaves of at most
// kLeaf points, stored contiguously in tree order; each node keeps its bounding box. A query visits nodes
// nearer first and skips a node whose box is at least the current k-th distance away (the box bound is
// computed from the same rounded differences as the point distances, so it never exceeds them). Expected
// O(log N + k) node visits per query whatever the dependence between the two variables, where sweeping
// one sorted marginal visits ~sqrt(k N) points for independent ones.
struct KdTree2 {
  static constexpr int32_t kLeaf = 8;
  struct Node {
    double xlo, xhi, ylo, yhi;
    int32_t begin, end, left, right;  // left = -1: a leaf
  };
  std::vector<Node> nodes;
  std::vector<double> px, py;
  std::vector<int32_t> id;  // the query index of each stored point (to skip the query itself)
  std::vector<std::pair<int32_t, double>> stack;

  void build(const double* x, const double* y, int64_t n) {
    id.resize(n);
    std::iota(id.begin(), id.end(), 0);
    nodes.clear();
    nodes.reserve(2 * (n / kLeaf + 1));
    build_node(x, y, 0, static_cast<int32_t>(n));
    px.resize(n);
    py.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      px[i] = x[id[i]];
      py[i] = y[id[i]];
    }
  }

  int32_t build_node(const double* x, const double* y, int32_t begin, int32_t end) {
    Node nd{kInf, -kInf, kInf, -kInf, begin, end, -1, -1};
    for (int32_t i = begin; i < end; ++i) {
      nd.xlo = std::min(nd.xlo, x[id[i]]);
      nd.xhi = std::max(nd.xhi, x[id[i]]);
      nd.ylo = std::min(nd.ylo, y[id[i]]);
      nd.yhi = std::max(nd.yhi, y[id[i]]);
    }
    const int32_t self = static_cast<int32_t>(nodes.size());
    nodes.push_back(nd);
    if (end - begin <= kLeaf) return self;
    const double* axis = (nd.xhi - nd.xlo >= nd.yhi - nd.ylo) ? x : y;
    const int32_t mid = begin + (end - begin) / 2;
    std::nth_element(id.begin() + begin, id.begin() + mid, id.begin() + end,
                     [&](int32_t a, int32_t b) { return axis[a] < axis[b]; });
    const int32_t left = build_node(x, y, begin, mid);
    const int32_t right = build_node(x, y, mid, end);
    nodes[self].left = left;
    nodes[self].right = right;
    return self;
  }

  static double box_distance(const Node& nd, double qx, double qy) {
    const double dx = std::max({nd.xlo - qx, qx - nd.xhi, 0.0});
    const double dy = std::max({nd.ylo - qy, qy - nd.yhi, 0.0});
    return std::max(dx, dy);
  }

  // best[0..k) receives the k smallest max-norm distances from point `self` to the others, ascending.
  void query(int32_t self, double qx, double qy, std::vector<double>& best) {
    stack.clear();
    stack.emplace_back(0, 0.0);
    while (!stack.empty()) {
      const auto [ni, bound] = stack.back();
      stack.pop_back();
      if (bound >= best.back()) continue;
      const Node& nd = nodes[ni];
      if (nd.left < 0) {
        for (int32_t i = nd.begin; i < nd.end; ++i) {
          if (id[i] == self) continue;
          push_best(best, std::fmax(std::fabs(qx - px[i]), std::fabs(qy - py[i])));
        }
        continue;
      }
      const double dl = box_distance(nodes[nd.left], qx, qy), dr = box_distance(nodes[nd.right], qx, qy);
      if (dl <= dr) {  // the nearer child on top of the stack
        stack.emplace_back(nd.right, dr);
        stack.emplace_back(nd.left, dl);
      } else {
        stack.emplace_back(nd.left, dl);
        stack.emplace_back(nd.right, dr);
      }
    }
  }
};

struct CcScratch {
  std::vector<double> ya;    // y values in a's sorted order
  std::vector<int64_t> ypos; // sorted position (in b) of the sample at each sorted position of a
  std::vector<double> best;  // k smallest joint distances so far, ascending
  std::vector<double> da, db, joint;
  KdTree2 tree;             // D == 1 pairs: the joint k-NN search
};


double mi_cc_scalar(const Column& a, const Column& b, int64_t n, int64_t k, const std::vector<double>& psi,
                    CcScratch& s) {
  s.ya.resize(n);
  s.ypos.resize(n);
  for (int64_t p = 0; p < n; ++p) {
    s.ya[p] = b.v[a.perm[p]];
    s.ypos[p] = b.pos[a.perm[p]];
  }
  const double* xs = a.sorted.data();
  const double* ys = b.sorted.data();
  s.tree.build(xs, s.ya.data(), n);  // points indexed by their position in x's sorted order
  CompensatedSum sum_nx, sum_ny;
  for (int64_t p = 0; p < n; ++p) {
    const double xq = xs[p], yq = s.ya[p];
    s.best.assign(k, kInf);
    s.tree.query(static_cast<int32_t>(p), xq, yq, s.best);
    const double r = below(s.best[k - 1]);
    sum_nx.add(psi[count_run(p, n, [&](int64_t q) { return std::fabs(xq - xs[q]) <= r; })]);
    sum_ny.add(psi[count_run(s.ypos[p], n, [&](int64_t q) { return std::fabs(yq - ys[q]) <= r; })]);
  }
  return psi[n] + psi[k] - (sum_nx.value() + sum_ny.value()) / static_cast<double>(n);
}

double mi_cc_brute(const Column& a, int64_t da_dim, const Column& b, int64_t db_dim, int64_t n, int64_t k,
                   const std::vector<double>& psi, CcScratch& s) {
  s.da.resize(n);
  s.db.resize(n);
  s.joint.resize(n - 1);
  CompensatedSum sum_nx, sum_ny;
  for (int64_t i = 0; i < n; ++i) {
    int64_t t = 0;
    for (int64_t j = 0; j < n; ++j) {
      s.da[j] = cheb_dist(a.v.data() + i * da_dim, a.v.data() + j * da_dim, da_dim);
      s.db[j] = cheb_dist(b.v.data() + i * db_dim, b.v.data() + j * db_dim, db_dim);
      if (j != i) s.joint[t++] = std::fmax(s.da[j], s.db[j]);
    }
    std::nth_element(s.joint.begin(), s.joint.begin() + (k - 1), s.joint.end());
    const double r = below(s.joint[k - 1]);
    int64_t nx = 0, ny = 0;
    for (int64_t j = 0; j < n; ++j) {
      nx += s.da[j] <= r;
      ny += s.db[j] <= r;
    }
    sum_nx.add(psi[nx]);
    sum_ny.add(psi[ny]);
  }
  return psi[n] + psi[k] - (sum_nx.value() + sum_ny.value()) / static_cast<double>(n);
}

at::Tensor knn_mi_cc_cpu(const at::Tensor& x_in, const at::Tensor& y_in, int64_t n_neighbors) {
  const char* op = "knn_mi_cc";
  check_inputs(x_in, y_in, 3, n_neighbors, op);
  TORCH_CHECK_VALUE(y_in.scalar_type() == at::kDouble, op, ": y must be float64, got ", y_in.scalar_type());
  TORCH_CHECK_VALUE(all_finite(y_in), op, ": y contains NaN or Inf");
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t n = x.size(0), lat = x.size(1), src = y.size(1), dx = x.size(2), dy = y.size(2);
  auto out = at::empty({lat, src}, x.options());
  if (lat == 0 || src == 0) return out;
  const std::vector<double> psi = digamma_table(n);
  const bool scalar = dx == 1 && dy == 1;
  const std::vector<Column> xc = gather_columns(x, scalar, true);
  const std::vector<Column> yc = gather_columns(y, scalar, true);
  double* o = out.data_ptr<double>();
  at::parallel_for(0, lat * src, 1, [&](int64_t b, int64_t e) {
    CcScratch scratch;
    for (int64_t pair = b; pair < e; ++pair) {
      const Column& a = xc[pair / src];
      const Column& c = yc[pair % src];
      const double mi = scalar ? mi_cc_scalar(a, c, n, n_neighbors, psi, scratch)
                               : mi_cc_brute(a, dx, c, dy, n, n_neighbors, psi, scratch);
      o[pair] = std::max(0.0, mi);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CPU, m) {
  m.impl("knn_mi_cd", &knn_mi_cd_cpu);
  m.impl("knn_mi_cc", &knn_mi_cc_cpu);
}

}  // namespace latentquant
