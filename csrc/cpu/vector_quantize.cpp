// CPU kernels of latentquant::vector_quantize: nearest codebook row by squared L2.
// Rows are processed in tiles: for a tile of rows, ||c||^2 - 2 z.c is formed with one GEMM
// (BLAS) into a (tile, K) buffer and reduced with argmin, so the (N, K) distance matrix never
// exists. ||z||^2 is the same for every code and is left out. Exact duplicate codes resolve to the
// lowest index; codes whose distances differ by less than the rounding of the expansion may
// resolve differently from the direct formula (the chosen code is then equally near within rounding).
#include "../common.h"

#include <torch/library.h>

namespace latentquant {
namespace {

constexpr const char* kOp = "vector_quantize";

std::tuple<at::Tensor, at::Tensor> vector_quantize_cpu(const at::Tensor& z_in, const at::Tensor& codebook_in,
                                                        bool check_finite) {
  check_vector_codebook(z_in, codebook_in, kOp);
  const auto ct = compute_dtype(z_in, codebook_in);
  const auto z = z_in.contiguous();
  const auto cb = codebook_in_compute_dtype(codebook_in, ct, kOp, "codebook");
  if (check_finite) check_values_finite(cb, kOp, "codebook");
  const int64_t N = z.size(0), K = cb.size(0), C = cb.size(1);
  auto indices = at::empty({N}, z.options().dtype(at::kLong));
  if (N == 0) return {at::empty_like(z), indices};
  const auto cb_t = cb.t();
  // (K,): argmin of ||c||^2/2 - z.c. Each norm is summed in column order, so identical codes get identical
  // norms (and the lowest index wins their tie) on every backend.
  auto half_norm = at::empty({K}, cb.options());
  AT_DISPATCH_FLOATING_TYPES(ct, kOp, [&] {
    const scalar_t* c = cb.const_data_ptr<scalar_t>();
    scalar_t* h = half_norm.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, 256, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t s = 0;
        for (int64_t j = 0; j < C; ++j) s += c[k * C + j] * c[k * C + j];
        h[k] = s * scalar_t(0.5);
      }
    });
  });
  // Tile rows so a tile's (rows, K) buffer stays around 256 KiB (in L2).
  const int64_t tile = std::max<int64_t>(8, std::min<int64_t>(1024, (int64_t(1) << 16) / K));
  const int64_t tiles = (N + tile - 1) / tile;
  std::atomic<bool> bad{false};
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * tile, n1 = std::min(N, n0 + tile);
      const auto zt = z.slice(0, n0, n1).to(ct);
      if (check_finite && !at::isfinite(zt).all().item<bool>()) {
        bad.store(true, std::memory_order_relaxed);
        continue;
      }
      const auto score = at::addmm(half_norm, zt, cb_t, /*beta=*/1, /*alpha=*/-1);  // (rows, K)
      auto out = indices.slice(0, n0, n1);
      at::argmin_out(out, score, 1);  // first minimum: lowest index on ties
    }
  });
  if (bad.load()) raise_not_finite(kOp);
  auto z_q = codebook_in.index_select(0, indices).to(z.scalar_type());
  return {z_q, indices};
}

// grad_codebook[k] = sum over n with indices[n] == k of grad_z_q[n]; deterministic order.
at::Tensor vector_quantize_backward_cpu(const at::Tensor& grad_z_q_in, const at::Tensor& indices_in,
                                        const at::Tensor& codebook) {
  constexpr const char* op = "vector_quantize_backward";
  check_vector_backward(grad_z_q_in, indices_in, codebook, op);
  check_fits(codebook.numel(), sizeof(double), op, "the gradient accumulator (K * C float64)");
  const auto grad = grad_z_q_in.contiguous();
  const auto indices = indices_in.contiguous();
  const int64_t N = grad.size(0), C = grad.size(1), K = codebook.size(0);
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  std::atomic<bool> bad{false};
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), op, [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    out = chunked_row_reduce(N, K * C, [&](int64_t n0, int64_t n1, double* acc) {
      for (int64_t n = n0; n < n1; ++n) {
        if (!index_ok(idx[n], K)) {
          bad.store(true, std::memory_order_relaxed);
          continue;
        }
        double* row = acc + idx[n] * C;
        const scalar_t* gr = g + n * C;
        for (int64_t c = 0; c < C; ++c) row[c] += static_cast<double>(gr[c]);
      }
    });
  });
  if (bad.load()) raise_bad_index(op, K);
  return out.view({K, C}).to(codebook.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CPU, m) {
  m.impl("vector_quantize", &vector_quantize_cpu);
  m.impl("vector_quantize_backward", &vector_quantize_backward_cpu);
}

}  // namespace latentquant
