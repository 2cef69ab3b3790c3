// CUDA kernels of latentquant::latent_quantize, the fused QLAE quantization step.
// Forward, one pass over z (scalar_codebook.cuh): index, value and per-block partial sums of
// (z - z_q)^2, reduced by one block in a fixed order (deterministic for a given device and shape):
//   aux_loss = (qw + cw) * sum((z - z_q)^2) / numel.
// Backward, one pass: grad_z = grad_z_hat + grad_loss * 2 cw (z - z_q) / numel, and
// grad_values[d, k] += grad_loss * 2 qw (z_q - z) / numel scattered through shared memory
// (atomicAdd: not bit-deterministic; deterministic under torch.use_deterministic_algorithms, see
// common.cuh). grad_loss is read on the device, so neither pass synchronizes except for the checks (one
// sync each: NaN/Inf in the forward unless check_finite=False, indices in the backward; none while the
// stream captures a CUDA graph).
#include "scalar_codebook.cuh"

#include <torch/library.h>

namespace latentquant::cuda {
namespace {

constexpr const char* kOp = "latent_quantize";

std::tuple<at::Tensor, at::Tensor, at::Tensor> latent_quantize_cuda(const at::Tensor& z_in,
                                                                     const at::Tensor& values_in,
                                                                     double quantization_weight,
                                                                     double commitment_weight, bool check_finite) {
  check_scalar_codebook(z_in, values_in, kOp);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto ct = compute_dtype(z_in, values_in);
  const auto z = z_in.contiguous();
  const auto values = values_in.to(ct).contiguous();
  auto z_hat = at::empty_like(z);
  auto indices = at::empty(z.sizes(), z.options().dtype(at::kLong));
  auto aux_loss = at::empty({}, z.options().dtype(ct));
  if (z.numel() == 0) return {z_hat, indices, aux_loss.zero_()};
  const int64_t numel = z.numel();
  auto partials = at::empty({scalar_codebook_fwd_max_grid(numel)}, z.options().dtype(ct));
  const bool check = checks_enabled(check_finite);
  NonFiniteFlag flag(z);
  LATENTQUANT_DISPATCH_Z_AND_ACC(z.scalar_type(), ct, kOp, {
    const int grid = launch_scalar_codebook_fwd<scalar_t, acc_type, true>(
        z, values, check, z_hat, indices, partials.mutable_data_ptr<acc_type>(), flag.ptr());
    const auto scale =
        static_cast<acc_type>((quantization_weight + commitment_weight) / static_cast<double>(numel));
    finalize_sum_kernel<acc_type><<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        partials.const_data_ptr<acc_type>(), grid, scale, aux_loss.mutable_data_ptr<acc_type>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (check) flag.raise_if_set(kOp, "values");
  return {z_hat, indices, aux_loss};
}

// Element i: writes grad_z[i] and returns its quantization-loss contribution to bin d * K + k.
// z_scale = grad_loss * 2 cw / numel and v_scale = grad_loss * 2 qw / numel are formed per thread
// from *grad_loss (a device scalar in acc_t) and the host constants 2 cw / numel, 2 qw / numel.
template <typename scalar_t, typename acc_t>
struct LatentBackwardElem {
  const scalar_t* __restrict__ grad_z_hat;
  const scalar_t* __restrict__ z;
  const acc_t* __restrict__ values;
  const int64_t* __restrict__ indices;
  const acc_t* __restrict__ grad_loss;
  acc_t z_factor, v_factor;
  int64_t D, K;
  scalar_t* __restrict__ grad_z;
  int* flag;  // kBadIndex for an index outside [0, K) (skipped)
  __device__ acc_t operator()(int64_t i, int64_t& bin) const {
    const int64_t k = indices[i];
    const bool ok = k >= 0 && k < K;
    if (!ok) set_flag(flag, kBadIndex);
    const int64_t d = i % D;
    const acc_t gl = *grad_loss;
    const acc_t diff = static_cast<acc_t>(z[i]) - (ok ? values[d * K + k] : acc_t(0));  // z - z_q
    grad_z[i] = static_cast<scalar_t>(static_cast<acc_t>(grad_z_hat[i]) + gl * z_factor * diff);
    bin = ok ? d * K + k : -1;
    return -(gl * v_factor) * diff;
  }
};

std::tuple<at::Tensor, at::Tensor> latent_quantize_backward_cuda(const at::Tensor& grad_z_hat_in,
                                                                  const at::Tensor& grad_loss_in,
                                                                  const at::Tensor& z_in, const at::Tensor& values_in,
                                                                  const at::Tensor& indices_in,
                                                                  double quantization_weight,
                                                                  double commitment_weight) {
  constexpr const char* op = "latent_quantize_backward";
  check_latent_backward(grad_z_hat_in, grad_loss_in, z_in, values_in, indices_in, op);
  TORCH_CHECK_VALUE(grad_z_hat_in.device() == z_in.device() && indices_in.device() == z_in.device() &&
                        grad_loss_in.device() == z_in.device(),
                    op, ": grad_z_hat (", grad_z_hat_in.device(), "), grad_loss (", grad_loss_in.device(),
                    "), indices (", indices_in.device(), ") and z (", z_in.device(), ") must share one device");
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto ct = compute_dtype(z_in, values_in);
  const auto z = z_in.contiguous();
  const auto grad_z_hat = grad_z_hat_in.to(z.scalar_type()).contiguous();
  const auto indices = indices_in.contiguous();
  const auto values = values_in.to(ct).contiguous();
  const auto grad_loss = grad_loss_in.reshape({}).to(ct);
  const int64_t numel = z.numel(), D = values.size(0), K = values.size(1);
  auto grad_z = at::empty_like(z);
  if (numel == 0) return {grad_z, at::zeros(values_in.sizes(), values_in.options())};
  const double inv_n = 1.0 / static_cast<double>(numel);
  NonFiniteFlag flag(z);
  at::Tensor bins;
  LATENTQUANT_DISPATCH_Z_AND_ACC(z.scalar_type(), ct, op, {
    const LatentBackwardElem<scalar_t, acc_type> elem{grad_z_hat.const_data_ptr<scalar_t>(),
                                                      z.const_data_ptr<scalar_t>(),
                                                      values.const_data_ptr<acc_type>(),
                                                      indices.const_data_ptr<int64_t>(),
                                                      grad_loss.const_data_ptr<acc_type>(),
                                                      static_cast<acc_type>(2.0 * commitment_weight * inv_n),
                                                      static_cast<acc_type>(2.0 * quantization_weight * inv_n),
                                                      D,
                                                      K,
                                                      grad_z.mutable_data_ptr<scalar_t>(),
                                                      flag.ptr()};
    bins = scatter_add<acc_type>(z, numel, D * K, ct, elem);
  });
  if (checks_enabled(true)) flag.raise_if_bad_index(op, K);
  return {grad_z, bins.view({D, K}).to(values_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CUDA, m) {
  m.impl("latent_quantize", &latent_quantize_cuda);
  m.impl("latent_quantize_backward", &latent_quantize_backward_cuda);
}

}  // namespace latentquant::cuda
