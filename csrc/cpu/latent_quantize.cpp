// CPU kernels of latentquant::latent_quantize, the fused QLAE quantization step.
// Forward, one pass: index, value and the partial sums of (z - z_q)^2 per fixed chunk of rows.
// Backward, one pass: the straight-through gradient plus the commitment term for z, and the
// quantization term scattered into values. Reductions are summed in chunk order, so results are
// bit-identical whatever the number of threads.
#include "../common.h"

#include <torch/library.h>

namespace latentquant {
namespace {

constexpr const char* kOp = "latent_quantize";

template <typename scalar_t, typename acc_t>
double latent_quantize_fwd_kernel(const scalar_t* z, const ScalarTable& t, int64_t N, int64_t D, int64_t K,
                                  scalar_t* z_hat, int64_t* indices, std::atomic<bool>& bad) {
  auto sum = chunked_row_reduce(N, 1, [&](int64_t n0, int64_t n1, double* acc) {
    bool local_bad = false;
    quantize_range<true, scalar_t, acc_t>(z, t, D, K, n0, n1, z_hat, indices, acc[0], local_bad);
    if (local_bad) bad.store(true, std::memory_order_relaxed);
  });
  return sum.template item<double>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> latent_quantize_cpu(const at::Tensor& z_in, const at::Tensor& values_in,
                                                                    double quantization_weight,
                                                                    double commitment_weight, bool check_finite) {
  check_scalar_codebook(z_in, values_in, kOp);
  const auto ct = compute_dtype(z_in, values_in);
  const auto z = z_in.contiguous();
  const auto values = codebook_in_compute_dtype(values_in, ct, kOp, "values");
  if (check_finite) check_values_finite(values, kOp, "values");
  const int64_t N = z.size(0), D = z.size(1), K = values.size(1);
  auto z_hat = at::empty_like(z);
  auto indices = at::empty(z.sizes(), z.options().dtype(at::kLong));
  if (z.numel() == 0) return {z_hat, indices, at::zeros({}, z.options().dtype(ct))};
  const auto table = scalar_table(values, kOp);
  std::atomic<bool> bad{false};
  double sq = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), kOp, [&] {
    if (ct == at::kDouble) {
      sq = latent_quantize_fwd_kernel<scalar_t, double>(z.const_data_ptr<scalar_t>(), table, N, D, K,
                                                        z_hat.mutable_data_ptr<scalar_t>(),
                                                        indices.mutable_data_ptr<int64_t>(), bad);
    } else {
      sq = latent_quantize_fwd_kernel<scalar_t, float>(z.const_data_ptr<scalar_t>(), table, N, D, K,
                                                       z_hat.mutable_data_ptr<scalar_t>(),
                                                       indices.mutable_data_ptr<int64_t>(), bad);
    }
  });
  if (check_finite && bad.load()) raise_not_finite(kOp);
  const double loss = (quantization_weight + commitment_weight) * sq / static_cast<double>(z.numel());
  return {z_hat, indices, at::scalar_tensor(loss, z.options().dtype(ct))};
}

template <typename scalar_t, typename acc_t>
at::Tensor latent_quantize_bwd_kernel(const scalar_t* grad_z_hat, double grad_loss, const scalar_t* z,
                                      const acc_t* values, const int64_t* indices, int64_t N, int64_t D, int64_t K,
                                      double qw, double cw, scalar_t* grad_z, std::atomic<bool>& bad) {
  const double inv_n = 1.0 / static_cast<double>(N * D);
  const acc_t z_scale = static_cast<acc_t>(grad_loss * 2.0 * cw * inv_n);
  const acc_t v_scale = static_cast<acc_t>(grad_loss * 2.0 * qw * inv_n);
  return chunked_row_reduce(N, D * K, [&](int64_t n0, int64_t n1, double* acc) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = n * D + d;
        const int64_t k = indices[i];
        if (!index_ok(k, K)) {
          bad.store(true, std::memory_order_relaxed);
          continue;
        }
        const acc_t diff = static_cast<acc_t>(z[i]) - values[d * K + k];  // z - z_q
        grad_z[i] = static_cast<scalar_t>(static_cast<acc_t>(grad_z_hat[i]) + z_scale * diff);
        acc[d * K + k] -= static_cast<double>(v_scale * diff);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> latent_quantize_backward_cpu(const at::Tensor& grad_z_hat_in,
                                                                 const at::Tensor& grad_loss, const at::Tensor& z_in,
                                                                 const at::Tensor& values_in,
                                                                 const at::Tensor& indices_in,
                                                                 double quantization_weight,
                                                                 double commitment_weight) {
  constexpr const char* op = "latent_quantize_backward";
  check_latent_backward(grad_z_hat_in, grad_loss, z_in, values_in, indices_in, op);
  const auto ct = compute_dtype(z_in, values_in);
  const auto z = z_in.contiguous();
  const auto grad_z_hat = grad_z_hat_in.to(z.scalar_type()).contiguous();
  const auto indices = indices_in.contiguous();
  const auto values = codebook_in_compute_dtype(values_in, ct, op, "values");
  check_fits(values.numel(), sizeof(double), op, "the gradient accumulator (D * K float64)");
  const int64_t N = z.size(0), D = z.size(1), K = values.size(1);
  auto grad_z = at::empty_like(z);
  if (z.numel() == 0) return {grad_z, at::zeros(values_in.sizes(), values_in.options())};
  const double gl = grad_loss.item<double>();
  std::atomic<bool> bad{false};
  at::Tensor grad_values;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), op, [&] {
    using acc_type = acc_t<scalar_t>;
    if (ct == at::kDouble) {
      grad_values = latent_quantize_bwd_kernel<scalar_t, double>(
          grad_z_hat.const_data_ptr<scalar_t>(), gl, z.const_data_ptr<scalar_t>(), values.const_data_ptr<double>(),
          indices.const_data_ptr<int64_t>(), N, D, K, quantization_weight, commitment_weight,
          grad_z.mutable_data_ptr<scalar_t>(), bad);
    } else {
      grad_values = latent_quantize_bwd_kernel<scalar_t, acc_type>(
          grad_z_hat.const_data_ptr<scalar_t>(), gl, z.const_data_ptr<scalar_t>(), values.const_data_ptr<acc_type>(),
          indices.const_data_ptr<int64_t>(), N, D, K, quantization_weight, commitment_weight,
          grad_z.mutable_data_ptr<scalar_t>(), bad);
    }
  });
  if (bad.load()) raise_bad_index(op, K);
  return {grad_z, grad_values.view({D, K}).to(values_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CPU, m) {
  m.impl("latent_quantize", &latent_quantize_cpu);
  m.impl("latent_quantize_backward", &latent_quantize_backward_cpu);
}

}  // namespace latentquant
