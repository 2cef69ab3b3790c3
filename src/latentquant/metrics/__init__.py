"""Disentanglement metrics: InfoMEC (both conventions), MIG, DCI, SAP, modularity and explicitness.

Every metric takes ``sources`` (N, S) and ``latents`` (N, L) as numpy arrays or torch tensors and returns
a small dataclass of floats and numpy arrays; ``evaluate_representation`` computes them all, sharing the
mutual-information work. Matrices are (sources x latents) throughout.
"""

from latentquant.metrics.dci import DCIResult, dci, disentanglement_completeness
from latentquant.metrics.evaluate import ALL_METRICS, EvaluationResult, evaluate_representation
from latentquant.metrics.infomec import CONVENTIONS, InfoMECResult, infomec
from latentquant.metrics.mig import MIGResult, histogram_discretize, mig
from latentquant.metrics.modularity import ModularityExplicitnessResult, modularity_explicitness
from latentquant.metrics.plots import plot_nmi
from latentquant.metrics.sap import SAPResult, sap

__all__ = [
    "ALL_METRICS",
    "CONVENTIONS",
    "DCIResult",
    "EvaluationResult",
    "InfoMECResult",
    "MIGResult",
    "ModularityExplicitnessResult",
    "SAPResult",
    "dci",
    "disentanglement_completeness",
    "evaluate_representation",
    "histogram_discretize",
    "infomec",
    "mig",
    "modularity_explicitness",
    "plot_nmi",
    "sap",
]
