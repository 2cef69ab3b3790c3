"""Mutual-information estimators (DESIGN §5), in nats, batched over every (column of x, column of y) pair.

- :func:`mutual_info_continuous_discrete`: Ross (2014) k-NN estimator, as scikit-learn's ``mutual_info_classif``.
- :func:`mutual_info_continuous_continuous`: KSG estimator 1 (max-norm), as ``mutual_info_regression``.
- :func:`mutual_info_discrete_discrete`, :func:`entropy_discrete`: plug-in, from contingency counts.

numpy in, numpy out; tensors in, tensors out on the same device. The k-NN estimators run on the
``latentquant::knn_mi_cd`` / ``knn_mi_cc`` ops (C++ on the CPU, Triton on CUDA).
"""

from latentquant.mi._knn import mutual_info_continuous_continuous, mutual_info_continuous_discrete
from latentquant.mi._plugin import entropy_discrete, mutual_info_discrete_discrete

__all__ = [
    "entropy_discrete",
    "mutual_info_continuous_continuous",
    "mutual_info_continuous_discrete",
    "mutual_info_discrete_discrete",
]
