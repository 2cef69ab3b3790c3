// CPU kernels of latentquant::scalar_quantize and its backward: per-dimension nearest scalar
// codebook value. One pass over z, OpenMP (at::parallel_for) over rows, no (N, D, K) temporary.
#include "../common.h"

#include <torch/library.h>

namespace latentquant {
namespace {

constexpr const char* kOp = "scalar_quantize";

template <typename scalar_t, typename acc_t>
void scalar_quantize_fwd_kernel(const scalar_t* z, const ScalarTable& t, int64_t N, int64_t D, int64_t K,
                                scalar_t* z_q, int64_t* indices, std::atomic<bool>& bad) {
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, D * K)), [&](int64_t n0, int64_t n1) {
    double unused = 0.0;
    bool local_bad = false;
    quantize_range<false, scalar_t, acc_t>(z, t, D, K, n0, n1, z_q, indices, unused, local_bad);
    if (local_bad) bad.store(true, std::memory_order_relaxed);
  });
}

std::tuple<at::Tensor, at::Tensor> scalar_quantize_cpu(const at::Tensor& z_in, const at::Tensor& values_in,
                                                        bool check_finite) {
  check_scalar_codebook(z_in, values_in, kOp);
  const auto z = z_in.contiguous();
  const auto values = codebook_in_compute_dtype(values_in, compute_dtype(z_in, values_in), kOp, "values");
  if (check_finite) check_values_finite(values, kOp, "values");
  const int64_t N = z.size(0), D = z.size(1), K = values.size(1);
  auto z_q = at::empty_like(z);
  auto indices = at::empty(z.sizes(), z.options().dtype(at::kLong));
  if (z.numel() == 0) return {z_q, indices};
  const auto table = scalar_table(values, kOp);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), kOp, [&] {
    if (values.scalar_type() == at::kDouble) {
      scalar_quantize_fwd_kernel<scalar_t, double>(z.const_data_ptr<scalar_t>(), table, N, D, K,
                                                   z_q.mutable_data_ptr<scalar_t>(),
                                                   indices.mutable_data_ptr<int64_t>(), bad);
    } else {
      scalar_quantize_fwd_kernel<scalar_t, float>(z.const_data_ptr<scalar_t>(), table, N, D, K,
                                                  z_q.mutable_data_ptr<scalar_t>(),
                                                  indices.mutable_data_ptr<int64_t>(), bad);
    }
  });
  if (check_finite && bad.load()) raise_not_finite(kOp);
  return {z_q, indices};
}

// grad_values[d, k] = sum over n with indices[n, d] == k of grad_z_q[n, d]; deterministic order.
at::Tensor scalar_quantize_backward_cpu(const at::Tensor& grad_z_q_in, const at::Tensor& indices_in,
                                        const at::Tensor& values) {
  constexpr const char* op = "scalar_quantize_backward";
  check_scalar_backward(grad_z_q_in, "grad_z_q", indices_in, values, op);
  check_fits(values.numel(), sizeof(double), op, "the gradient accumulator (D * K float64)");
  const auto grad = grad_z_q_in.contiguous();
  const auto indices = indices_in.contiguous();
  const int64_t N = grad.size(0), D = grad.size(1), K = values.size(1);
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  std::atomic<bool> bad{false};
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), op, [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    out = chunked_row_reduce(N, D * K, [&](int64_t n0, int64_t n1, double* acc) {
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t d = 0; d < D; ++d) {
          const int64_t k = idx[n * D + d];
          if (!index_ok(k, K)) {
            bad.store(true, std::memory_order_relaxed);
            continue;
          }
          acc[d * K + k] += static_cast<double>(g[n * D + d]);
        }
      }
    });
  });
  if (bad.load()) raise_bad_index(op, K);
  return out.view({D, K}).to(values.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CPU, m) {
  m.impl("scalar_quantize", &scalar_quantize_cpu);
  m.impl("scalar_quantize_backward", &scalar_quantize_backward_cpu);
}

}  // namespace latentquant
