// CPU kernel of latentquant::label_encode: each column of x (N, C) label-encoded, codes[n, c] = the rank of
// x[n, c] among its column's distinct values (ascending), and counts[c] = that column's number of distinct
// values: torch.unique(x[:, c], return_inverse=True)'s inverse and length (the oracle,
// src/latentquant/reference/label_encode.py), for every metric's sources and discrete latents.
//
// Why a kernel: torch.unique sorts the column, O(N log N); the metrics encode each of ~18-50 columns of 50,000
// samples once or twice per InfoMEC call, ~2.5 ms each, 60-90 ms in all beside a 0.5 s metric. Here all the
// columns go through one row-major pass, each with a hash table of its distinct values (open addressing,
// linear probing, Fibonacci hashing of the value's bits; grown at half load), then a sort of the K distinct
// values only and a pass writing ranks: O(N + K log K). Integer columns whose range is small (max - min <=
// 4 N + 1024: factor indices, codes) skip the hash: a table indexed by value - min. Measured on the 2-core
// Zen 4 (N = 50,000, one thread, benchmarks/bench_label_encode.py): InfoMEC's 12 discrete latents (9-14 values)
// 2.3 ms (torch.unique per column 21 ms), 6 sources 0.77 ms (5.1 ms), 12 columns of ~80 values 1.8 ms (28.5 ms).
//
// Inputs: float64 or int64 (the Python wrapper converts other dtypes exactly: float16/bfloat16/float32 to
// float64, smaller integers and bool to int64). -0.0 and 0.0 are one value (as torch.unique: they compare
// equal). NaN is an error naming the column (torch.unique would count each NaN apart: never what a label
// means). Columns are independent; at::parallel_for shares them out (results do not depend on the threads).
#include "../common.h"

#include <torch/library.h>

#include <cstring>
#include <type_traits>
#include <vector>

namespace latentquant {
namespace {

constexpr const char* kOp = "label_encode";

// Fibonacci hashing: the key times 2^64 / golden ratio, top bits. The keys of one column are few and
// structured (neighbouring doubles, small integers), which the multiplication spreads over the high bits.
inline uint64_t hash_of(uint64_t k, int shift) { return (k * 0x9E3779B97F4A7C15ULL) >> shift; }

// The bits a value is hashed and compared by: -0.0 folded onto 0.0 without a branch (-0.0 + 0.0 is +0.0 in
// round-to-nearest; a branch on v == 0 mispredicts on columns where 0 is common: 1.6x slower measured).
inline uint64_t key_of(double v) {
  v += 0.0;
  uint64_t k;
  std::memcpy(&k, &v, sizeof k);
  return k;
}
inline uint64_t key_of(int64_t v) { return static_cast<uint64_t>(v); }

inline double value_of(uint64_t k, double) {
  double v;
  std::memcpy(&v, &k, sizeof v);
  return v;
}
inline int64_t value_of(uint64_t k, int64_t) { return static_cast<int64_t>(k); }

// Distinct keys in first-seen order; each sample's id (its key's index) in ids.
struct DistinctSet {
  std::vector<uint64_t> slot_key;
  std::vector<int32_t> slot_id;  // -1: empty
  std::vector<uint64_t> keys;
  uint64_t mask = 0;
  int shift = 0;

  explicit DistinctSet(int bits) { reset(bits); }

  void reset(int bits) {
    slot_key.assign(size_t(1) << bits, 0);
    slot_id.assign(size_t(1) << bits, -1);
    mask = (uint64_t(1) << bits) - 1;
    shift = 64 - bits;
  }

  int32_t insert(uint64_t key) {
    uint64_t i = hash_of(key, shift);
    while (true) {
      const int32_t id = slot_id[i];
      if (id < 0) break;
      if (slot_key[i] == key) return id;
      i = (i + 1) & mask;
    }
    const auto id = static_cast<int32_t>(keys.size());
    slot_key[i] = key;
    slot_id[i] = id;
    keys.push_back(key);
    if (2 * keys.size() > slot_id.size()) grow();
    return id;
  }

  void grow() {
    reset(64 - shift + 1);
    for (size_t id = 0; id < keys.size(); ++id) {
      uint64_t i = hash_of(keys[id], shift);
      while (slot_id[i] >= 0) i = (i + 1) & mask;
      slot_key[i] = keys[id];
      slot_id[i] = static_cast<int32_t>(id);
    }
  }
};

// Columns [c0, c1) of x (N, C) row-major, in one row-major pass (a pass per column would stream the whole
// array once per column). Integer columns whose range is small use a table over [min, max]; the others a
// DistinctSet, whose first-seen ids are then replaced by the sorted ranks.
template <typename T>
void encode_columns(const T* x, int64_t n, int64_t columns, int64_t c0, int64_t c1, int64_t* codes,
                    int64_t* count) {
  const int64_t width = c1 - c0;
  std::vector<int64_t> low(width, 0);
  std::vector<char> tabled(width, 0);
  std::vector<std::vector<int64_t>> rank(width);
  if constexpr (std::is_same_v<T, int64_t>) {
    if (n > 0) {
      std::vector<int64_t> high(width);
      for (int64_t c = 0; c < width; ++c) low[c] = high[c] = x[c0 + c];
      for (int64_t i = 1; i < n; ++i)
        for (int64_t c = 0; c < width; ++c) {
          const int64_t v = x[i * columns + c0 + c];
          low[c] = std::min(low[c], v);
          high[c] = std::max(high[c], v);
        }
      for (int64_t c = 0; c < width; ++c) {
        // The span in unsigned arithmetic (max - min overflows int64 for values of both signs near the limits).
        const uint64_t span = static_cast<uint64_t>(high[c]) - static_cast<uint64_t>(low[c]) + 1;
        if (span != 0 && span <= static_cast<uint64_t>(4 * n + 1024)) {
          tabled[c] = 1;
          rank[c].assign(span, 0);
        }
      }
    }
  }
  std::vector<DistinctSet> sets;
  sets.reserve(width);
  for (int64_t c = 0; c < width; ++c) sets.emplace_back(tabled[c] ? 1 : 10);  // 1,024 slots, doubled at half load
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * columns + c0;
    int64_t* out = codes + i * columns + c0;
    for (int64_t c = 0; c < width; ++c) {
      if (tabled[c])
        rank[c][static_cast<int64_t>(row[c]) - low[c]] = 1;
      else
        out[c] = sets[c].insert(key_of(row[c]));
    }
  }
  for (int64_t c = 0; c < width; ++c) {
    auto& r = rank[c];
    if (tabled[c]) {  // presence flags -> ranks
      int64_t distinct = 0;
      for (auto& v : r) {
        const int64_t present = v;
        v = distinct;
        distinct += present;
      }
      count[c0 + c] = distinct;
      continue;
    }
    const auto& keys = sets[c].keys;
    const auto k = static_cast<int64_t>(keys.size());
    std::vector<int32_t> order(k);
    for (int64_t id = 0; id < k; ++id) order[id] = static_cast<int32_t>(id);
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return value_of(keys[a], T{}) < value_of(keys[b], T{}); });
    r.resize(k);
    for (int64_t q = 0; q < k; ++q) r[order[q]] = q;
    count[c0 + c] = k;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * columns + c0;
    int64_t* out = codes + i * columns + c0;
    for (int64_t c = 0; c < width; ++c)
      out[c] = tabled[c] ? rank[c][static_cast<int64_t>(row[c]) - low[c]] : rank[c][out[c]];
  }
}

std::tuple<at::Tensor, at::Tensor> label_encode_cpu(const at::Tensor& x_in) {
  check_rank(x_in, 2, kOp, "x");
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kDouble || x_in.scalar_type() == at::kLong, kOp,
                    ": x must be float64 or int64 (the wrapper converts other dtypes), got ", x_in.scalar_type());
  const auto x = x_in.contiguous();
  const int64_t n = x.size(0), columns = x.size(1);
  auto codes = at::empty({n, columns}, x.options().dtype(at::kLong));
  auto counts = at::zeros({columns}, x.options().dtype(at::kLong));
  if (x.scalar_type() == at::kDouble) {
    const double* p = x.const_data_ptr<double>();
    std::vector<char> has_nan(columns, 0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < columns; ++c) has_nan[c] |= std::isnan(p[i * columns + c]);
    std::vector<int64_t> nan_columns;
    for (int64_t c = 0; c < columns; ++c)
      if (has_nan[c]) nan_columns.push_back(c);
    TORCH_CHECK_VALUE(nan_columns.empty(), kOp, ": x contains NaN (columns ", c10::IntArrayRef(nan_columns),
                      "): a NaN is not a label; drop those samples or give missing values a label of their own");
  }
  TORCH_CHECK_VALUE(n < (int64_t(1) << 31), kOp, ": at most 2^31 - 1 samples per column, got ", n);
  int64_t* out = codes.mutable_data_ptr<int64_t>();
  int64_t* count = counts.mutable_data_ptr<int64_t>();
  at::parallel_for(0, columns, 1, [&](int64_t c0, int64_t c1) {
    if (x.scalar_type() == at::kDouble)
      encode_columns(x.const_data_ptr<double>(), n, columns, c0, c1, out, count);
    else
      encode_columns(x.const_data_ptr<int64_t>(), n, columns, c0, c1, out, count);
  });
  return {codes, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CPU, m) { m.impl("label_encode", &label_encode_cpu); }

}  // namespace latentquant
