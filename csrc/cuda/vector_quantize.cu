// CUDA kernels of latentquant::vector_quantize: nearest codebook row by squared L2.
// Forward: each block takes tiles of kRows rows of z and walks the codebook in tiles of kCodes codes;
// z and code chunks of kDims columns are staged in shared memory and each thread accumulates a 4x4
// block of dot products z.c in registers (a small SIMT GEMM), so the (N, K) distance matrix never
// exists. The distance used is ||c||^2 - 2 z.c (||z||^2 is the same for every code): exact duplicate
// codes get identical distances and resolve to the lowest index; codes whose true distances differ by
// less than the rounding of the expansion may resolve to a different, equally near code than the
// direct formula. Backward: grad_codebook[k] = sum of grad_z_q[n] over n with indices[n] == k, a
// scatter-add (shared memory when the codebook fits, atomicAdd: not bit-deterministic).
#include "common.cuh"

#include <torch/library.h>

namespace latentquant::cuda {
namespace {

constexpr const char* kOp = "vector_quantize";
constexpr int kRows = 64;   // rows of z per tile
constexpr int kCodes = 64;  // codes per tile
constexpr int kDims = 32;   // columns per staged chunk
constexpr int kMicro = 4;   // each thread: kMicro rows x kMicro codes
constexpr int kLanes = 16;  // threads sharing a row (kCodes / kMicro); kThreads = kLanes * (kRows / kMicro)
static_assert(kLanes * (kRows / kMicro) == kThreads && kLanes * kMicro == kCodes, "tile shape");

// (dist, index) a beats (dist, index) b: smaller distance, or equal distance and lower index.
template <typename acc_t>
__device__ __forceinline__ bool better(acc_t da, int64_t ia, acc_t db, int64_t ib) {
  return da < db || (da == db && ia < ib);
}

// z (N, C) in scalar_t, codebook (K, C) in acc_t, both contiguous.
// Writes indices (N,) and z_q (N, C) = codebook[indices] in scalar_t. With check_finite, sets
// kZNotFinite / kCodebookNotFinite in *flag. ||c||^2 is accumulated while the code chunks are staged, one
// code per thread, column by column in a fixed order (never by torch's sum, whose grouping on the GPU
// depends on each row's address alignment), so identical codes get identical norms.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    vector_quantize_fwd_kernel(const scalar_t* __restrict__ z, const acc_t* __restrict__ codebook, int64_t N,
                               int64_t K, int64_t C, bool check_finite, scalar_t* __restrict__ z_q,
                               int64_t* __restrict__ indices, int* __restrict__ flag) {
  __shared__ acc_t zs[kDims][kRows + 1];    // z chunk, transposed: zs[column][row]
  __shared__ acc_t cs[kDims][kCodes + 1];   // code chunk, transposed: cs[column][code]
  __shared__ acc_t norms[kCodes];           // ||c||^2 of the codes of the current tile
  __shared__ int64_t best_index[kRows];
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  int bad = 0;
  if (check_finite && blockIdx.x == 0) {
    for (int64_t j = threadIdx.x; j < K * C; j += blockDim.x) {
      if (!is_finite(codebook[j])) bad |= kCodebookNotFinite;
    }
  }
  const int64_t tiles = (N + kRows - 1) / kRows;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t row0 = tile * kRows;
    acc_t best_d[kMicro];
    int64_t best_i[kMicro];
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      best_d[i] = INFINITY;
      best_i[i] = 0;  // kept when every distance is NaN or +Inf, as argmin's first element
    }
    for (int64_t code0 = 0; code0 < K; code0 += kCodes) {
      acc_t dot[kMicro][kMicro] = {};
      acc_t norm = 0;  // thread t < kCodes: ||c||^2 of code code0 + t, in column order
      for (int64_t col0 = 0; col0 < C; col0 += kDims) {
        for (int e = threadIdx.x; e < kRows * kDims; e += blockDim.x) {
          const int r = e / kDims, c = e % kDims;
          const int64_t row = row0 + r, col = col0 + c;
          acc_t x = 0;
          if (row < N && col < C) {
            x = static_cast<acc_t>(z[row * C + col]);
            if (check_finite && code0 == 0 && !is_finite(x)) bad |= kZNotFinite;
          }
          zs[c][r] = x;
        }
        for (int e = threadIdx.x; e < kCodes * kDims; e += blockDim.x) {
          const int k = e / kDims, c = e % kDims;
          const int64_t code = code0 + k, col = col0 + c;
          cs[c][k] = (code < K && col < C) ? codebook[code * C + col] : acc_t(0);
        }
        __syncthreads();
        if (threadIdx.x < kCodes) {
          for (int c = 0; c < kDims; ++c) norm += cs[c][threadIdx.x] * cs[c][threadIdx.x];
        }
#pragma unroll 8
        for (int c = 0; c < kDims; ++c) {
          acc_t a[kMicro], b[kMicro];
#pragma unroll
          for (int i = 0; i < kMicro; ++i) a[i] = zs[c][ty + i * (kRows / kMicro)];
#pragma unroll
          for (int j = 0; j < kMicro; ++j) b[j] = cs[c][tx + j * kLanes];
#pragma unroll
          for (int i = 0; i < kMicro; ++i) {
#pragma unroll
            for (int j = 0; j < kMicro; ++j) dot[i][j] += a[i] * b[j];
          }
        }
        __syncthreads();
      }
      if (threadIdx.x < kCodes) norms[threadIdx.x] = norm;
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        // Codes of this thread ascend with j, so a strict < keeps the lowest index among equals.
        acc_t d = INFINITY;
        int64_t idx = K;
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          const int64_t code = code0 + tx + j * kLanes;
          if (code < K) {
            const acc_t dist = norms[tx + j * kLanes] - acc_t(2) * dot[i][j];
            if (dist < d) {
              d = dist;
              idx = code;
            }
          }
        }
        // Reduce over the kLanes threads that share these rows (lanes differing in the low 4 bits).
#pragma unroll
        for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
          const acc_t od = __shfl_xor_sync(0xffffffffu, d, offset);
          const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, offset);
          if (better(od, oi, d, idx)) {
            d = od;
            idx = oi;
          }
        }
        if (idx < K && d < best_d[i]) {  // later tiles hold higher indices: strictly smaller wins
          best_d[i] = d;
          best_i[i] = idx;
        }
      }
      __syncthreads();  // norms is rewritten by the next code tile
    }
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < kMicro; ++i) best_index[ty + i * (kRows / kMicro)] = best_i[i];
    }
    __syncthreads();
    const int64_t rows = std::min<int64_t>(kRows, N - row0);
    for (int r = threadIdx.x; r < rows; r += blockDim.x) indices[row0 + r] = best_index[r];
    for (int64_t e = threadIdx.x; e < rows * C; e += blockDim.x) {
      const int64_t r = e / C, c = e - r * C;
      z_q[(row0 + r) * C + c] = static_cast<scalar_t>(codebook[best_index[r] * C + c]);
    }
    __syncthreads();  // best_index is rewritten by the next tile
  }
  if (check_finite) set_flag(flag, bad);
}

std::tuple<at::Tensor, at::Tensor> vector_quantize_cuda(const at::Tensor& z_in, const at::Tensor& codebook_in,
                                                         bool check_finite) {
  check_vector_codebook(z_in, codebook_in, kOp);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto ct = compute_dtype(z_in, codebook_in);
  const auto z = z_in.contiguous();
  const auto codebook = codebook_in.to(ct).contiguous();
  const int64_t N = z.size(0), C = z.size(1), K = codebook.size(0);
  auto z_q = at::empty_like(z);
  auto indices = at::empty({N}, z.options().dtype(at::kLong));
  if (N == 0) return {z_q, indices};
  const bool check = checks_enabled(check_finite);
  NonFiniteFlag flag(z);
  const int64_t tiles = (N + kRows - 1) / kRows;
  const int64_t sms = sm_count();
  const int grid = static_cast<int>(std::min<int64_t>(tiles, sms * 16));
  LATENTQUANT_DISPATCH_Z_AND_ACC(z.scalar_type(), ct, kOp, {
    vector_quantize_fwd_kernel<scalar_t, acc_type><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z.const_data_ptr<scalar_t>(), codebook.const_data_ptr<acc_type>(), N, K, C, check,
        z_q.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(), flag.ptr());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (check) flag.raise_if_set(kOp, "codebook");
  return {z_q, indices};
}

// Element i of grad_z_q (N, C): row n = i / C goes to bin indices[n] * C + (i % C).
// An index outside [0, K) is skipped and sets kBadIndex in *flag.
template <typename grad_t, typename acc_t>
struct VectorBackwardElem {
  const grad_t* __restrict__ grad;
  const int64_t* __restrict__ indices;
  int64_t K, C;
  int* flag;
  __device__ acc_t operator()(int64_t i, int64_t& bin) const {
    const int64_t n = i / C;
    const int64_t k = indices[n];
    const bool ok = k >= 0 && k < K;
    if (!ok) set_flag(flag, kBadIndex);
    bin = ok ? k * C + (i - n * C) : -1;
    return static_cast<acc_t>(grad[i]);
  }
};

at::Tensor vector_quantize_backward_cuda(const at::Tensor& grad_in, const at::Tensor& indices_in,
                                         const at::Tensor& codebook) {
  constexpr const char* op = "vector_quantize_backward";
  check_vector_backward(grad_in, indices_in, codebook, op);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto ct = compute_dtype(grad_in, codebook);
  const auto grad = grad_in.contiguous();
  const auto indices = indices_in.contiguous();
  const int64_t K = codebook.size(0), C = codebook.size(1);
  NonFiniteFlag flag(grad);
  at::Tensor bins;
  LATENTQUANT_DISPATCH_Z_AND_ACC(grad.scalar_type(), ct, op, {
    const VectorBackwardElem<scalar_t, acc_type> elem{grad.const_data_ptr<scalar_t>(),
                                                      indices.const_data_ptr<int64_t>(), K, C, flag.ptr()};
    bins = scatter_add<acc_type>(grad, grad.numel(), K * C, ct, elem);
  });
  if (checks_enabled(true)) flag.raise_if_bad_index(op, K);
  return bins.view({K, C}).to(codebook.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(latentquant, CUDA, m) {
  m.impl("vector_quantize", &vector_quantize_cuda);
  m.impl("vector_quantize_backward", &vector_quantize_backward_cuda);
}

}  // namespace latentquant::cuda
