// Helpers shared by the CPU kernels: argument checks with the messages users see, and
// the accumulation type used for each input dtype (float32 or better, per DESIGN §3).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

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
