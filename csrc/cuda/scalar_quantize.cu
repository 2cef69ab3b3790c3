// CUDA kernels of latentquant::scalar_quantize: per-dimension nearest scalar codebook value.
// Forward: one element-wise pass (scalar_codebook.cuh). Backward: grad_values[d, k] = sum of
// grad_z_q[n, d] over the n that chose k, by a shared-memory scatter-add (not bit-deterministic:
// atomicAdd order varies between runs; deterministic under torch.use_deterministic_algorithms, see common.cuh).
#include "scalar_codebook.cuh"

#include <torch/library.h>

namespace latentquant::cuda {
namespace {

constexpr const char* kOp = "scalar_quantize";

std::tuple<at::Tensor, at::Tensor> scalar_quantize_cuda(const at::Tensor& z_in, const at::Tensor& values_in,
                                                         bool check_finite) {
  check_scalar_codebook(z_in, values_in, kOp);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto ct = compute_dtype(z_in, values_in);
  const auto z = z_in.contiguous();
  const auto values = values_in.to(ct).contiguous();
  auto z_q = at::empty_like(z);
  auto indices = at::empty(z.sizes(), z.options().dtype(at::kLong));
  if (z.numel() == 0) return {z_q, indices};
  const bool check = checks_enabled(check_finite);
  NonFiniteFlag flag(z);
  LATENTQUANT_DISPATCH_Z_AND_ACC(z.scalar_type(), ct, kOp, {
    launch_scalar_codebook_fwd<scalar_t, acc_type, false>(z, values, check, z_q, indices, nullptr, flag.ptr());
  });
  if (check) flag.raise_if_set(kOp, "values");
  return {z_q, indices};
}

// Contribution of grad_z_q[i] to bin d * K + indices[i].
// An index outside [0, K) is skipped and sets kBadIndex in *flag.
template <typename grad_t, typename acc_t>
struct ScalarBackwardElem {
  const grad_t* __restrict__ grad;
  const int64_t* __restrict__ indices;
  int64_t D, K;
  int* flag;
  __device__ acc_t operator()(int64_t i, int64_t& bin) const {
    const int64_t k = indices[i];
    const bool ok = k >= 0 && k < K;
    if (!ok) set_flag(flag, kBadIndex);
    bin = ok ? (i % D) * K + k : -1;
    return static_cast<acc_t>(grad[i]);
  }
};

at::Tensor scalar_quantize_backward_cuda(const at::Tensor& grad_in, const at::Tensor& indices_in,
                                         const at::Tensor& values) {
  constexpr const char* op = "scalar_quantize_backward";
  check_scalar_backward(grad_in, "grad_z_q", indices_in, values, op);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto ct = compute_dtype(grad_in, values);
  const auto grad = grad_in.contiguous();
  const auto indices = indices_in.contiguous();
  const int64_t D = values.size(0), K = values.size(1);
  NonFiniteFlag flag(grad);
  at::Tensor bins;
  LATENTQUANT_DISPATCH_Z_AND_ACC(grad.scalar_type(), ct, op, {
    const ScalarBackwardElem<scalar_t, acc_type> elem{grad.const_data_ptr<scalar_t>(),
                                                      indices.const_data_ptr<int64_t>(), D, K, flag.ptr()};
    bins = scatter_add<acc_type>(grad, grad.numel(), D * K, ct, elem);
  });
  if (checks_enabled(true)) flag.raise_if_bad_index(op, K);
  return bins.view({D, K}).to(values.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CUDA, m) {
  m.impl("scalar_quantize", &scalar_quantize_cuda);
  m.impl("scalar_quantize_backward", &scalar_quantize_backward_cuda);
}

}  // namespace latentquant::cuda
