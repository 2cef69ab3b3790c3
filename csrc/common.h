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
#include <limits>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

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

// Physical memory of the machine in bytes (0 when unknown).
inline int64_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return static_cast<int64_t>(pages) * page;
#endif
  return 0;
}

// A working buffer of `count` elements of `elem_bytes` that could never fit in this machine's memory is a
// ValueError naming the op and the sizes, raised before anything is allocated (instead of an allocation
// that fails later or wakes the OOM killer).
inline void check_fits(int64_t count, int64_t elem_bytes, const char* op, const char* what) {
  const int64_t limit = physical_memory_bytes();
  const bool overflow = count > 0 && elem_bytes > std::numeric_limits<int64_t>::max() / count;
  TORCH_CHECK_VALUE(!overflow && (limit == 0 || count * elem_bytes <= limit), op, ": ", what, " needs ", count,
                    " elements of ", elem_bytes, " bytes, more than this machine's memory (", limit, " bytes)");
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

// Nearest scalar codebook values for the rows [n0, n1) of z (N, D), ties to the lowest index.
//
// The rows are walked in blocks of R whole rows (the same R for every block), so element j of a block
// belongs to dimension j % D. `table` (K, R * D) holds values[d, k] at [k][r * D + d] for every r:
// the inner loops then run over contiguous memory with no gathers and vectorize (distance, compare,
// select), which a per-element scan with a data-dependent branch does not. Writes z_q and indices;
// adds sum((z - z_q)^2) to `sq` (when kLoss, in fixed order per block) and sets `bad` on NaN/Inf.
template <bool kLoss, typename scalar_t, typename acc_t>
inline void quantize_rows(const scalar_t* z, const acc_t* table, int64_t D, int64_t K, int64_t R, int64_t n0,
                          int64_t n1, scalar_t* z_q, int64_t* indices, double& sq, bool& bad) {
  constexpr int64_t kMax = 4096;  // the block length R * D never exceeds this (see scalar_table)
  acc_t x[kMax], best_d[kMax], lane_sq[kMax];
  int32_t best[kMax];
  const acc_t big = std::numeric_limits<acc_t>::max();
  int finite = 1;
  for (int64_t r0 = n0; r0 < n1; r0 += R) {
    const int64_t w = std::min(R, n1 - r0) * D;
    const int64_t stride = R * D;
    const scalar_t* zb = z + r0 * D;
    for (int64_t j = 0; j < w; ++j) {
      x[j] = static_cast<acc_t>(zb[j]);
      finite &= static_cast<int>(std::abs(x[j]) <= big);
      best_d[j] = std::abs(x[j] - table[j]);
      best[j] = 0;
    }
    for (int64_t k = 1; k < K; ++k) {
      const acc_t* tk = table + k * stride;
      const int32_t kk = static_cast<int32_t>(k);
      // Written as min + bit-mask select: gcc vectorizes this form, not the equivalent ternaries.
      for (int64_t j = 0; j < w; ++j) {
        const acc_t d = std::abs(x[j] - tk[j]);
        const int32_t closer = -static_cast<int32_t>(d < best_d[j]);  // all ones when strictly closer
        best_d[j] = std::min(d, best_d[j]);
        best[j] = (kk & closer) | (best[j] & ~closer);
      }
    }
    scalar_t* qb = z_q + r0 * D;
    int64_t* ib = indices + r0 * D;
    for (int64_t j = 0; j < w; ++j) {
      const acc_t v = table[best[j] * stride + j];
      qb[j] = static_cast<scalar_t>(v);
      ib[j] = best[j];
      if constexpr (kLoss) lane_sq[j] = (x[j] - v) * (x[j] - v);
    }
    if constexpr (kLoss) {
      acc_t block = 0;
      for (int64_t j = 0; j < w; ++j) block += lane_sq[j];
      sq += static_cast<double>(block);
    }
  }
  if (!finite) bad = true;
}

// Nearest values for the rows [n0, n1) of z (N, D) read straight from values (D, K) (contiguous in the
// compute dtype): the path for codebooks whose replicated table would exceed kTableBudget. Same results
// as quantize_rows (ties to the lowest index, NaN -> index 0); the loss is summed per row.
template <bool kLoss, typename scalar_t, typename acc_t>
inline void quantize_rows_direct(const scalar_t* z, const acc_t* values, int64_t D, int64_t K, int64_t n0,
                                 int64_t n1, scalar_t* z_q, int64_t* indices, double& sq, bool& bad) {
  const acc_t big = std::numeric_limits<acc_t>::max();
  int finite = 1;
  for (int64_t n = n0; n < n1; ++n) {
    acc_t row_sq = 0;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = n * D + d;
      const acc_t x = static_cast<acc_t>(z[i]);
      finite &= static_cast<int>(std::abs(x) <= big);
      const acc_t* v = values + d * K;
      acc_t best_d = std::abs(x - v[0]);
      int64_t best = 0;
      for (int64_t k = 1; k < K; ++k) {
        const acc_t dk = std::abs(x - v[k]);
        if (dk < best_d) {
          best_d = dk;
          best = k;
        }
      }
      z_q[i] = static_cast<scalar_t>(v[best]);
      indices[i] = best;
      if constexpr (kLoss) row_sq += (x - v[best]) * (x - v[best]);
    }
    if constexpr (kLoss) sq += static_cast<double>(row_sq);
  }
  if (!finite) bad = true;
}

// Largest replicated table (bytes) the scalar-codebook CPU kernels build: 4 MiB. Whatever K, the forward's
// working memory is this table (or none) plus one copy of values in the compute dtype.
constexpr int64_t kTableBudget = int64_t(1) << 22;

// What quantize_rows reads: values (D, K) in the compute dtype and, when it fits kTableBudget, the
// (K, R * D) table with R = min(256 / D, kTableBudget / (K * D * sizeof(acc_t))) >= 1 rows per block (a
// block of about 256 elements stays in L1). rows_per_block == 0: no table, quantize_rows_direct serves.
struct ScalarTable {
  at::Tensor values;
  at::Tensor table;
  int64_t rows_per_block;
};

inline ScalarTable scalar_table(const at::Tensor& values, const char* op) {
  const int64_t D = values.size(0), K = values.size(1);
  TORCH_CHECK_VALUE(D <= 4096, op, ": at most 4096 latent dimensions per call are supported, got ", D,
                    " (split the latents into several calls)");
  const int64_t per_row = K * std::max<int64_t>(1, D) * static_cast<int64_t>(values.element_size());
  const int64_t rows = std::min<int64_t>(std::max<int64_t>(1, 256 / std::max<int64_t>(1, D)), kTableBudget / per_row);
  if (rows < 1 || K > std::numeric_limits<int32_t>::max()) return {values, at::Tensor(), 0};
  auto table = values.t().unsqueeze(1).expand({K, rows, D}).contiguous().view({K, rows * D});
  return {values, table, rows};
}

// quantize_rows or quantize_rows_direct, as the table says.
template <bool kLoss, typename scalar_t, typename acc_t>
inline void quantize_range(const scalar_t* z, const ScalarTable& t, int64_t D, int64_t K, int64_t n0, int64_t n1,
                           scalar_t* z_q, int64_t* indices, double& sq, bool& bad) {
  if (t.rows_per_block > 0) {
    quantize_rows<kLoss>(z, t.table.const_data_ptr<acc_t>(), D, K, t.rows_per_block, n0, n1, z_q, indices, sq,
                         bad);
  } else {
    quantize_rows_direct<kLoss>(z, t.values.const_data_ptr<acc_t>(), D, K, n0, n1, z_q, indices, sq, bad);
  }
}

// values (D, K) as a contiguous tensor of the compute dtype `ct`, after checking that copy can fit.
inline at::Tensor codebook_in_compute_dtype(const at::Tensor& values, at::ScalarType ct, const char* op,
                                            const char* name) {
  check_fits(values.numel(), static_cast<int64_t>(c10::elementSize(ct)), op, name);
  return values.to(ct).contiguous();
}

// Shape checks of the scalar-codebook backward ops: `name` (N, D) float and indices (N, D) int64 against
// values (D, K) float, on one device.
inline void check_scalar_backward(const at::Tensor& grad, const char* name, const at::Tensor& indices,
                                  const at::Tensor& values, const char* op) {
  check_float(grad, op, name);
  check_float(values, op, "values");
  check_indices(indices, op);
  check_rank(grad, 2, op, name);
  check_rank(values, 2, op, "values");
  TORCH_CHECK_VALUE(grad.sizes() == indices.sizes(), op, ": ", name, " ", grad.sizes(), " and indices ",
                    indices.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(values.size(0) == grad.size(1), op, ": values must have shape (D, K) with D = ", name,
                    ".shape[1] = ", grad.size(1), ", got values of shape ", values.sizes());
  TORCH_CHECK_VALUE(grad.device() == indices.device() && grad.device() == values.device(), op, ": ", name,
                    " is on ", grad.device(), ", indices on ", indices.device(), " and values on ", values.device(),
                    "; they must share one device");
}

// Shape checks of vector_quantize_backward: grad_z_q (N, C) float, indices (N,) int64, codebook (K, C) float.
inline void check_vector_backward(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& codebook,
                                  const char* op) {
  check_float(grad, op, "grad_z_q");
  check_float(codebook, op, "codebook");
  check_indices(indices, op);
  TORCH_CHECK_VALUE(grad.dim() == 2 && indices.dim() == 1 && grad.size(0) == indices.size(0), op,
                    ": grad_z_q must be (N, C) and indices (N,), got ", grad.sizes(), " and ", indices.sizes());
  TORCH_CHECK_VALUE(codebook.dim() == 2 && codebook.size(1) == grad.size(1), op,
                    ": codebook must have shape (K, C) with C = grad_z_q.shape[1] = ", grad.size(1), ", got ",
                    codebook.sizes());
  TORCH_CHECK_VALUE(grad.device() == indices.device() && grad.device() == codebook.device(), op,
                    ": grad_z_q is on ", grad.device(), ", indices on ", indices.device(), " and codebook on ",
                    codebook.device(), "; they must share one device");
}

// Checks of vector_quantize: z (N, C) float, codebook (K, C) float with K >= 1, same device.
inline void check_vector_codebook(const at::Tensor& z, const at::Tensor& codebook, const char* op) {
  check_float(z, op, "z");
  check_float(codebook, op, "codebook");
  check_rank(z, 2, op, "z");
  check_rank(codebook, 2, op, "codebook");
  TORCH_CHECK_VALUE(codebook.size(1) == z.size(1), op, ": codebook must have shape (K, C) with C = z.shape[-1] = ",
                    z.size(1), ", got codebook of shape ", codebook.sizes());
  TORCH_CHECK_VALUE(codebook.size(0) >= 1, op, ": codebook needs at least one row, got shape ", codebook.sizes());
  TORCH_CHECK_VALUE(z.device() == codebook.device(), op, ": z is on ", z.device(), " but codebook is on ",
                    codebook.device());
}

// Checks of latent_quantize_backward's arguments (both devices).
inline void check_latent_backward(const at::Tensor& grad_z_hat, const at::Tensor& grad_loss, const at::Tensor& z,
                                  const at::Tensor& values, const at::Tensor& indices, const char* op) {
  check_scalar_codebook(z, values, op);
  check_indices(indices, op);
  TORCH_CHECK_VALUE(grad_z_hat.sizes() == z.sizes() && indices.sizes() == z.sizes(), op, ": grad_z_hat ",
                    grad_z_hat.sizes(), ", indices ", indices.sizes(), " and z ", z.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, op, ": grad_loss must have one element, got shape ", grad_loss.sizes());
}

// Indices handed to a backward op come from its forward, but the op is public: an index outside
// [0, K) is reported (raise_bad_index) instead of writing out of bounds.
inline bool index_ok(int64_t k, int64_t K) { return static_cast<uint64_t>(k) < static_cast<uint64_t>(K); }

inline void raise_bad_index(const char* op, int64_t K) {
  TORCH_CHECK_VALUE(false, op, ": indices must lie in [0, ", K, "), the codebook size; got an index outside it");
}

inline void check_values_finite(const at::Tensor& values, const char* op, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(values).all().item<bool>(), op, ": ", name, " contains NaN or Inf");
}

inline void raise_not_finite(const char* op) {
  TORCH_CHECK_VALUE(false, op,
                    ": z contains NaN or Inf; fix the input (or pass check_finite=False to skip this check)");
}

}  // namespace latentquant
