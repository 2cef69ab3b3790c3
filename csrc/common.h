// Helpers shared by the CPU kernels: argument checks with the messages users see, and
// the accumulation type used for each input dtype (float32 or better, per DESIGN §3).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace latentquant {

// float16 / bfloat16 / float32 compute in float; float64 in double.
template <typename T>
struct acc {
  using type = float;
};
template <>
struct acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename acc<T>::type;

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                    " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                    t.scalar_type());
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == rank, op, ": ", name, " must have ", rank, " dimensions, got shape ",
                    t.sizes());
}

inline void check_indices(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kLong, op, ": indices must be int64, got ", t.scalar_type());
}

// Rows per chunk for deterministic reductions: partial sums are formed per fixed-size chunk of
// rows and added in chunk order, so results do not depend on the number of threads.
constexpr int64_t kReduceChunk = 2048;

}  // namespace latentquant

namespace latentquant {

// Number of row chunks for a deterministic scatter-reduction into an output of `out_size`
// accumulators: chunks of kReduceChunk rows, but no more than keep the partial buffers under
// ~32 MiB of doubles. Depends only on the shapes, never on the thread count.
inline int64_t reduce_chunks(int64_t rows, int64_t out_size) {
  const int64_t by_rows = (rows + kReduceChunk - 1) / kReduceChunk;
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, out_size));
  return std::max<int64_t>(1, std::min(by_rows, by_memory));
}

// Deterministic parallel reduction over rows: `fill(begin, end, partial)` adds the contributions of
// rows [begin, end) into a zeroed buffer of `out_size` doubles; buffers are summed in chunk order.
// Returns a float64 tensor of `out_size` elements.
template <typename Fill>
at::Tensor chunked_row_reduce(int64_t rows, int64_t out_size, const Fill& fill) {
  const int64_t chunks = reduce_chunks(rows, out_size);
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  auto partial = at::zeros({chunks, out_size}, at::TensorOptions().dtype(at::kDouble));
  double* p = partial.data_ptr<double>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * per_chunk;
      const int64_t end = std::min(rows, begin + per_chunk);
      if (begin < end) fill(begin, end, p + c * out_size);
    }
  });
  if (chunks == 1) return partial.view({out_size});
  auto out = at::empty({out_size}, partial.options());
  double* o = out.data_ptr<double>();
  at::parallel_for(0, out_size, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double s = 0.0;
      for (int64_t c = 0; c < chunks; ++c) s += p[c * out_size + j];
      o[j] = s;
    }
  });
  return out;
}

// The compute dtype for a pair of inputs: float64 if either is float64, else float32.
inline at::ScalarType compute_dtype(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

// Checks shared by the scalar-codebook ops: z (N, D) float, values (D, K) float with K >= 1, finite.
inline void check_scalar_codebook(const at::Tensor& z, const at::Tensor& values, const char* op) {
  check_float(z, op, "z");
  check_float(values, op, "values");
  check_rank(z, 2, op, "z");
  check_rank(values, 2, op, "values");
  TORCH_CHECK_VALUE(values.size(0) == z.size(1), op, ": values must have shape (D, K) with D = z.shape[-1] = ",
                    z.size(1), ", got values of shape ", values.sizes());
  TORCH_CHECK_VALUE(values.size(1) >= 1, op, ": values needs at least one value per dimension, got shape ",
                    values.sizes());
  TORCH_CHECK_VALUE(z.device() == values.device(), op, ": z is on ", z.device(), " but values is on ",
                    values.device());
}

}  // namespace latentquant

namespace latentquant {

// Index of the value nearest to x among v[0..K), ties to the lowest index.
template <typename acc_t>
inline int64_t nearest_scalar(acc_t x, const acc_t* v, int64_t K) {
  int64_t best = 0;
  acc_t best_d = std::abs(x - v[0]);
  for (int64_t k = 1; k < K; ++k) {
    const acc_t d = std::abs(x - v[k]);
    if (d < best_d) {
      best_d = d;
      best = k;
    }
  }
  return best;
}

inline void check_values_finite(const at::Tensor& values, const char* op, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(values).all().item<bool>(), op, ": ", name, " contains NaN or Inf");
}

inline void raise_not_finite(const char* op) {
  TORCH_CHECK_VALUE(false, op,
                    ": z contains NaN or Inf; fix the input (or pass check_finite=False to skip this check)");
}

}  // namespace latentquant
