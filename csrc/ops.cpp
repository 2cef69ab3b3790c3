// Every latentquant:: operator schema, declared once. Kernels register per device in
// csrc/cpu/<op>.cpp (TORCH_LIBRARY_IMPL(latentquant, CPU, m)) and csrc/cuda/<op>.cu (CUDA);
// Python (src/latentquant/ops/<op>.py) adds fake implementations and autograd.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// latentquant._C is imported as a plain Python module; importing it runs the static
// registrations below. It holds no Python functions of its own.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(latentquant, m) {
  // ---- quantization (issue: foundation) ----
  m.def("scalar_quantize(Tensor z, Tensor values, bool check_finite=True) -> (Tensor, Tensor)");
  m.def("scalar_quantize_backward(Tensor grad_z_q, Tensor indices, Tensor values) -> Tensor");
  m.def(
      "latent_quantize(Tensor z, Tensor values, float quantization_weight, float commitment_weight, "
      "bool check_finite=True) -> (Tensor, Tensor, Tensor)");
  m.def(
      "latent_quantize_backward(Tensor grad_z_hat, Tensor grad_loss, Tensor z, Tensor values, "
      "Tensor indices, float quantization_weight, float commitment_weight) -> (Tensor, Tensor)");
  m.def("vector_quantize(Tensor z, Tensor codebook, bool check_finite=True) -> (Tensor, Tensor)");
  m.def("vector_quantize_backward(Tensor grad_z_q, Tensor indices, Tensor codebook) -> Tensor");
  // ---- mutual information (issue: metrics) ----
  // k-NN mutual information of every (latent, source) pair on preprocessed float64 data -> (L, S).
  m.def("knn_mi_cd(Tensor x, Tensor y, int n_neighbors) -> Tensor");  // x (N, L, D), y (N, S) int64
  m.def("knn_mi_cc(Tensor x, Tensor y, int n_neighbors) -> Tensor");  // x (N, L, Dx), y (N, S, Dy)
  // ---- label encoding (sources and discrete latents of every metric) ----
  // x (N, C) float64 or int64 -> codes (N, C) int64, the rank of each value among its column's distinct values
  // (torch.unique's inverse), and counts (C,) int64, the distinct values per column.
  m.def("label_encode(Tensor x) -> (Tensor, Tensor)");
  // ---- logistic regression (issue: metrics, InfoE) ----
  // Weighted softmax cross-entropy of T multinomial logistic regressions on shared features, and its
  // gradient: x1t (F1, N) feature-major (last row ones), weights (T, C, F1), labels (T, N) int64,
  // sample_weight (T, N) -> loss (T,), grad (T, C, F1).
  m.def("logistic_loss_grad(Tensor x1t, Tensor weights, Tensor labels, Tensor sample_weight) -> (Tensor, Tensor)");
  // The same on one-hot features given as codes (G, N) int64 in [0, F1 - 1): x1t[f, n] = #{g : codes[g, n] = f}.
  m.def(
      "logistic_onehot_loss_grad(Tensor codes, Tensor weights, Tensor labels, Tensor sample_weight) -> (Tensor, "
      "Tensor)");
  // The whole L-BFGS fit of latentquant.metrics.logistic (CPU): data = x1t (F1, N) or, with onehot, codes (G, N);
  // weights (T, C, F1) the start; num_classes (T,) int64; l2 (T,) -> final weights (T, C, F1), iterations (T,),
  // and the unweighted mean cross-entropy (T,) float64 of the final weights on the samples (InfoE's CE_pred).
  m.def(
      "logistic_fit_lbfgs(Tensor data, Tensor weights, Tensor labels, Tensor sample_weight, Tensor num_classes, "
      "Tensor l2, bool onehot, int max_iter, float tol, int num_threads) -> (Tensor, Tensor, Tensor)");
}
