// The element-wise forward shared by scalar_quantize and latent_quantize (per-dimension scalar
// codebooks): nearest value per element, its index, and -- for latent_quantize -- per-block partial
// sums of (z - z_q)^2. One pass over z; vectorized loads/stores when every pointer is aligned.
#pragma once
#include "common.cuh"

namespace latentquant::cuda {

// Element i of z (N, D) (flattened, contiguous) has dimension d = i % D and codebook values[d, :]
// (values: (D, K) contiguous in acc_t). The codebook is copied to shared memory when it fits.
// Writes z_q[i] (in z's dtype), indices[i]; with LOSS, loss_partials[blockIdx.x] = sum of (z - v)^2
// over the block's elements (v the chosen value in acc_t). With check_finite, sets kZNotFinite in
// *flag for NaN/Inf in z and kCodebookNotFinite for NaN/Inf in values.
template <typename scalar_t, typename acc_t, int VEC, bool LOSS>
__global__ void __launch_bounds__(kThreads)
    scalar_codebook_fwd_kernel(const scalar_t* __restrict__ z, const acc_t* __restrict__ values, int64_t numel,
                               int64_t D, int64_t K, bool values_in_smem, bool check_finite,
                               scalar_t* __restrict__ z_q, int64_t* __restrict__ indices,
                               acc_t* __restrict__ loss_partials, int* __restrict__ flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int bad = 0;
  const acc_t* vals = values;
  if (values_in_smem) {
    acc_t* svals = reinterpret_cast<acc_t*>(smem_raw);
    for (int64_t j = threadIdx.x; j < D * K; j += blockDim.x) svals[j] = values[j];
    __syncthreads();
    vals = svals;
  }
  if (check_finite && blockIdx.x == 0) {
    for (int64_t j = threadIdx.x; j < D * K; j += blockDim.x) {
      if (!is_finite(vals[j])) bad |= kCodebookNotFinite;
    }
  }
  acc_t sq = 0;
  auto quantize = [&](scalar_t zi, int64_t d, scalar_t& q, int64_t& k) {
    const acc_t x = static_cast<acc_t>(zi);
    if (check_finite && !is_finite(x)) bad |= kZNotFinite;
    const acc_t* v = vals + d * K;
    k = nearest_scalar_dev(x, v, K);
    q = static_cast<scalar_t>(v[k]);
    if constexpr (LOSS) {
      const acc_t diff = x - v[k];
      sq += diff * diff;
    }
  };
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t nvec = numel / VEC;
  for (int64_t v = tid; v < nvec; v += stride) {
    const int64_t i0 = v * VEC;
    const auto zin = load_vec<VEC>(z, i0);
    aligned_vec<scalar_t, VEC> q;
    aligned_vec<int64_t, VEC> k;
    int64_t d = i0 % D;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      quantize(zin.val[j], d, q.val[j], k.val[j]);
      d = (d + 1 == D) ? 0 : d + 1;
    }
    store_vec<VEC>(z_q, i0, q);
    store_vec<VEC>(indices, i0, k);
  }
  for (int64_t i = nvec * VEC + tid; i < numel; i += stride) quantize(z[i], i % D, z_q[i], indices[i]);
  if (check_finite) set_flag(flag, bad);
  if constexpr (LOSS) {
    sq = block_sum(sq);
    if (threadIdx.x == 0) loss_partials[blockIdx.x] = sq;
  }
}

// Runs scalar_codebook_fwd_kernel for z (N, D) contiguous and values (D, K) contiguous in acc_type.
// Returns the number of blocks launched (the length of loss_partials used when LOSS).
template <typename scalar_t, typename acc_t, bool LOSS>
int launch_scalar_codebook_fwd(const at::Tensor& z, const at::Tensor& values, bool check_finite, at::Tensor& z_q,
                               at::Tensor& indices, acc_t* loss_partials, int* flag) {
  const int64_t numel = z.numel(), D = z.size(1), K = values.size(1);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* qp = z_q.mutable_data_ptr<scalar_t>();
  int64_t* ip = indices.mutable_data_ptr<int64_t>();
  const bool vec = aligned_to(zp, sizeof(scalar_t) * kVec) && aligned_to(qp, sizeof(scalar_t) * kVec) &&
                   aligned_to(ip, sizeof(int64_t) * kVec);
  const bool in_smem = D * K * static_cast<int64_t>(sizeof(acc_t)) <= kSmemBytes;
  const size_t smem = in_smem ? D * K * sizeof(acc_t) : 0;
  const int grid = grid_for(vec ? (numel + kVec - 1) / kVec : numel);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const acc_t* vp = values.const_data_ptr<acc_t>();
  if (vec) {
    scalar_codebook_fwd_kernel<scalar_t, acc_t, kVec, LOSS>
        <<<grid, kThreads, smem, stream>>>(zp, vp, numel, D, K, in_smem, check_finite, qp, ip, loss_partials, flag);
  } else {
    scalar_codebook_fwd_kernel<scalar_t, acc_t, 1, LOSS>
        <<<grid, kThreads, smem, stream>>>(zp, vp, numel, D, K, in_smem, check_finite, qp, ip, loss_partials, flag);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grid;
}

// The grid launch_scalar_codebook_fwd will use (to size loss_partials before launching).
inline int scalar_codebook_fwd_max_grid(int64_t numel) { return grid_for(numel); }

}  // namespace latentquant::cuda
