// Helpers shared by the CUDA kernels: launch geometry, aligned vector loads, the nearest-value search,
// warp/block reductions, the NaN/Inf device flag and the shared-memory scatter-add used by every backward.
//
// Scatters (grad_values, grad_codebook) add per-block shared-memory partial sums into global memory with
// atomicAdd in whatever order blocks finish: not bit-deterministic. Under
// torch.use_deterministic_algorithms(True) they take a deterministic path instead: each element's
// contribution and bin are written out and summed by index_put_(accumulate=True), which is deterministic
// in that mode. The aux_loss is deterministic for a given device and shape (fixed grid, per-block partials
// summed in block order by one block).
//
// Checks (NaN/Inf, indices outside [0, K)) set bits of a device flag that the host reads once per call
// (one synchronization), except while the current stream is capturing a CUDA graph: then nothing is read
// back (a sync is illegal there and a replay could not raise) and bad indices are skipped, never written
// out of bounds.
#pragma once
#include "../common.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_put.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace latentquant::cuda {

constexpr int kThreads = 256;
constexpr int kVec = 4;  // elements per thread per step in the element-wise kernels
// Scatter bins / codebook copies up to this size live in shared memory (keeps >= 4 blocks per SM).
constexpr int64_t kSmemBytes = 32 * 1024;

// Bits of the device flag written by kernels that check their input.
constexpr int kZNotFinite = 1;
constexpr int kCodebookNotFinite = 2;
constexpr int kBadIndex = 4;

// Whether the host may read check flags back now: not while the current stream captures a CUDA graph.
// Called under the op's CUDAGuard, after its tensors exist, so the device's context already does.
inline bool checks_enabled(bool check) {
  return check && c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

// Grid for a grid-stride loop over `work` items of `threads` per block: enough blocks to fill the
// device (8 resident blocks of 256 threads per SM), never more than the work needs, at least one.
inline int64_t sm_count() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms;
}

inline int grid_for(int64_t work, int threads = kThreads) {
  const int64_t sms = sm_count();
  const int64_t needed = (work + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, sms * 8)));
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, int N>
struct alignas(sizeof(T) * N) aligned_vec {
  T val[N];
};

template <int N, typename T>
__device__ __forceinline__ aligned_vec<T, N> load_vec(const T* p, int64_t i) {
  return *reinterpret_cast<const aligned_vec<T, N>*>(p + i);
}

template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, int64_t i, const aligned_vec<T, N>& v) {
  *reinterpret_cast<aligned_vec<T, N>*>(p + i) = v;
}

template <typename acc_t>
__device__ __forceinline__ bool is_finite(acc_t x) {
  return isfinite(x);
}

// Index of the value nearest to x among v[0..K) by |x - v|, ties to the lowest index
// (the device twin of latentquant::nearest_scalar in csrc/common.h).
template <typename acc_t>
__device__ __forceinline__ int64_t nearest_scalar_dev(acc_t x, const acc_t* v, int64_t K) {
  int64_t best = 0;
  acc_t best_d = fabs(x - v[0]);
  for (int64_t k = 1; k < K; ++k) {
    const acc_t d = fabs(x - v[k]);
    if (d < best_d) {
      best_d = d;
      best = k;
    }
  }
  return best;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

// Sum of `x` over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in
// thread 0. Every thread of the block must call it. Fixed order, so deterministic.
template <typename T>
__device__ T block_sum(T x) {
  __shared__ T warp_partials[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  x = warp_sum(x);
  if (lane == 0) warp_partials[warp] = x;
  __syncthreads();
  const int warps = blockDim.x / 32;
  x = (threadIdx.x < warps) ? warp_partials[threadIdx.x] : T(0);
  if (warp == 0) x = warp_sum(x);
  return x;
}

// out[0] = scale * sum(partials[0..n)), summed in a fixed order by a single block.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finalize_sum_kernel(const acc_t* __restrict__ partials, int n,
                                                                acc_t scale, acc_t* __restrict__ out) {
  acc_t s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = scale * s;
}

// A one-int device flag that kernels set (bitwise or) when they meet NaN/Inf; read back with one sync.
struct NonFiniteFlag {
  at::Tensor flag;
  explicit NonFiniteFlag(const at::Tensor& like) : flag(at::zeros({1}, like.options().dtype(at::kInt))) {}
  int* ptr() { return flag.mutable_data_ptr<int>(); }
  // Synchronizes the stream (item()) and raises the op's ValueError if a bit is set. Call only when
  // checks_enabled(): never during graph capture.
  void raise_if_set(const char* op, const char* codebook_name) const {
    const int bits = flag.item<int>();
    TORCH_CHECK_VALUE(!(bits & kCodebookNotFinite), op, ": ", codebook_name, " contains NaN or Inf");
    if (bits & kZNotFinite) raise_not_finite(op);
  }
  // The same for the backward ops: the CPU kernels' error for an index outside [0, K).
  void raise_if_bad_index(const char* op, int64_t K) const {
    if (flag.item<int>() & kBadIndex) raise_bad_index(op, K);
  }
};

__device__ __forceinline__ void set_flag(int* flag, int bits) {
  if (bits) atomicOr(flag, bits);
}

// Scatter-add of per-element contributions into `num_bins` accumulators (grad_values,
// grad_codebook). `elem(i, &bin)` returns element i's contribution and its bin (or -1 to skip),
// and may write per-element outputs (latent_quantize_backward's grad_z). With `bins_in_smem` each
// block accumulates into shared memory and adds its non-zero partial sums to `bins` with atomicAdd;
// otherwise it adds to `bins` directly. Each thread takes kVec elements per step, strided by
// blockDim.x so loads stay coalesced, and loads them all before adding (memory-level parallelism).
// Deterministic mode: writes contrib_out[i] and bin_out[i] (0 and bin 0 for skipped elements) instead.
template <typename acc_t, typename Elem>
__global__ void __launch_bounds__(kThreads)
    scatter_elems_kernel(int64_t numel, acc_t* __restrict__ contrib_out, int64_t* __restrict__ bin_out, Elem elem) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    int64_t bin = -1;
    const acc_t c = elem(i, bin);
    contrib_out[i] = bin >= 0 ? c : acc_t(0);
    bin_out[i] = bin >= 0 ? bin : 0;
  }
}

template <typename acc_t, typename Elem>
__global__ void __launch_bounds__(kThreads)
    scatter_add_kernel(int64_t numel, int64_t num_bins, bool bins_in_smem, acc_t* __restrict__ bins, Elem elem) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sbins = reinterpret_cast<acc_t*>(smem_raw);
  if (bins_in_smem) {
    for (int64_t b = threadIdx.x; b < num_bins; b += blockDim.x) sbins[b] = acc_t(0);
    __syncthreads();
  }
  acc_t* target = bins_in_smem ? sbins : bins;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * kVec;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kVec; base < numel; base += step) {
    acc_t contrib[kVec];
    int64_t bin[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int64_t i = base + j * blockDim.x + threadIdx.x;
      bin[j] = -1;
      if (i < numel) contrib[j] = elem(i, bin[j]);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (bin[j] >= 0) atomicAdd(target + bin[j], contrib[j]);
    }
  }
  if (bins_in_smem) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < num_bins; b += blockDim.x) {
      if (sbins[b] != acc_t(0)) atomicAdd(bins + b, sbins[b]);
    }
  }
}

// Launches scatter_add_kernel on the current stream into a zeroed (num_bins,) tensor of `acc_dtype`
// and returns it (deterministic algorithms: scatter_elems_kernel + index_put_, see the file header).
template <typename acc_t, typename Elem>
at::Tensor scatter_add(const at::Tensor& like, int64_t numel, int64_t num_bins, at::ScalarType acc_dtype,
                       const Elem& elem) {
  auto bins = at::zeros({num_bins}, like.options().dtype(acc_dtype));
  if (numel == 0 || num_bins == 0) return bins;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (at::globalContext().deterministicAlgorithms()) {
    auto contrib = at::empty({numel}, like.options().dtype(acc_dtype));
    auto bin = at::empty({numel}, like.options().dtype(at::kLong));
    scatter_elems_kernel<acc_t, Elem><<<grid_for(numel), kThreads, 0, stream>>>(
        numel, contrib.mutable_data_ptr<acc_t>(), bin.mutable_data_ptr<int64_t>(), elem);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    c10::List<std::optional<at::Tensor>> index;
    index.push_back(bin);
    bins.index_put_(index, contrib, /*accumulate=*/true);
    return bins;
  }
  const bool in_smem = num_bins * static_cast<int64_t>(sizeof(acc_t)) <= kSmemBytes;
  const size_t smem = in_smem ? num_bins * sizeof(acc_t) : 0;
  const int grid = grid_for((numel + kVec - 1) / kVec);
  scatter_add_kernel<acc_t, Elem><<<grid, kThreads, smem, stream>>>(
      numel, num_bins, in_smem, bins.mutable_data_ptr<acc_t>(), elem);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bins;
}

}  // namespace latentquant::cuda

// Dispatch over z's dtype (float16/bfloat16/float32/float64) and the compute dtype CT (float32, or
// float64 when z or the codebook is float64). The statements passed as the last argument see
// `scalar_t` (z's element type) and `acc_type` (the compute type).
#define LATENTQUANT_DISPATCH_Z_AND_ACC(Z_TYPE, CT, NAME, ...)                  \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Z_TYPE, NAME, [&] { \
    if ((CT) == at::kDouble) {                                                  \
      using acc_type = double;                                                  \
      __VA_ARGS__                                                               \
    } else {                                                                    \
      /* z float64 implies CT float64: this branch never runs for it. */        \
      using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>; \
      __VA_ARGS__                                                               \
    }                                                                           \
  })
