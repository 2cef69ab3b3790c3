"""``evaluate_representation``: every metric of this package on one representation, sharing the work.

The sources are label-encoded and their entropies computed once; the k-NN NMI serves InfoM and InfoC;
the plug-in MI of histogram-binned latents serves MIG and modularity; one seeded train/test split serves
DCI, SAP and explicitness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentquant._progress import Stages
from latentquant.metrics._inputs import check_pair, cpu_threads, encode_sources
from latentquant.metrics.dci import DCI_MODELS, DCIResult, _dci_encoded
from latentquant.metrics.infomec import CONVENTIONS, InfoMECResult, _infomec_encoded, integer_typed
from latentquant.metrics.mig import MIGResult, binned_mutual_information, mig_from_mutual_information
from latentquant.metrics.modularity import ModularityExplicitnessResult, _modularity_explicitness_encoded
from latentquant.metrics.sap import SAPResult, _sap_encoded

ALL_METRICS = ("infomec", "mig", "dci", "sap", "modularity")


@dataclass
class EvaluationResult:
    """Results of :func:`evaluate_representation`; a metric not requested is None."""

    infomec: InfoMECResult | None = None
    mig: MIGResult | None = None
    dci: DCIResult | None = None
    sap: SAPResult | None = None
    modularity: ModularityExplicitnessResult | None = None

    def scalars(self) -> dict[str, float]:
        """Headline numbers, flat: ``{"infom": ..., "mig": ..., "dci_disentanglement": ...}``."""
        out: dict[str, float] = {}
        if self.infomec is not None:
            out.update(infom=self.infomec.infom, infoe=self.infomec.infoe, infoc=self.infomec.infoc)
        if self.mig is not None:
            out["mig"] = self.mig.mig
        if self.dci is not None:
            out.update(
                dci_disentanglement=self.dci.disentanglement,
                dci_completeness=self.dci.completeness,
                dci_informativeness=self.dci.informativeness_test,
            )
        if self.sap is not None:
            out["sap"] = self.sap.sap
        if self.modularity is not None:
            out.update(modularity=self.modularity.modularity, explicitness=self.modularity.explicitness_test)
        return out

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict: ``scalars`` plus every computed result in full."""
        out: dict[str, object] = {"scalars": self.scalars()}
        for name in ALL_METRICS:
            result = getattr(self, name)
            if result is not None:
                out[name] = result.to_dict()
        return out


def evaluate_representation(
    sources: np.ndarray | torch.Tensor,
    latents: np.ndarray | torch.Tensor,
    discrete_latents: bool = False,
    convention: str = "paper",
    metrics: tuple[str, ...] | list[str] = ALL_METRICS,
    dci_model: str = "gbt",
    num_bins: int = 20,
    test_fraction: float = 1 / 3,
    jitter: float = 1e-10,
    seed: int = 0,
    num_threads: int | None = 1,
    show_progress: bool | None = None,
) -> EvaluationResult:
    """InfoMEC, MIG, DCI, SAP, modularity and explicitness of a representation in one call.

    Args:
        sources: ground-truth factors, any values; each column label-encoded, none constant; S >= 2.
        latents: the representation, L >= 2 (InfoMEC runs on its device; the rest on the CPU).
        discrete_latents: latents take few distinct values (InfoMEC's plug-in MI, see ``infomec``).
        convention: InfoMEC convention, ``"paper"`` or ``"standalone"``.
        metrics: any of ``("infomec", "mig", "dci", "sap", "modularity")``.
        dci_model: ``"gbt"`` (disentanglement_lib) or ``"linear"`` (fast).
        num_bins: histogram bins per latent for MIG and modularity.
        test_fraction: held-out share for DCI, SAP and explicitness.
        jitter: tie-breaking noise of the k-NN MI estimator.
        seed: seed of the split, the trees and the noise.
        num_threads: torch intra-op threads for CPU work (restored afterwards; None keeps torch's), as
            in ``infomec``.
        show_progress: a bar over the metrics (and GBT-DCI's per-source fits); None: only on a terminal.

    Returns:
        :class:`EvaluationResult`.

    Shapes:
        sources (N, S), latents (N, L).
    """
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {ALL_METRICS}, got {list(metrics)}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if dci_model not in DCI_MODELS:
        raise ValueError(f"dci_model must be one of {DCI_MODELS}, got {dci_model!r}")
    integer_latents = integer_typed(latents)
    sources, latents = check_pair(sources, latents)
    result = EvaluationResult()
    with cpu_threads(latents.device, num_threads), Stages(metrics, "metrics", show_progress) as stages:
        encoded = encode_sources(sources, device=latents.device)
        stages.start("infomec")
        if "infomec" in metrics:
            result.infomec = _infomec_encoded(
                encoded, latents, discrete_latents, convention, jitter, seed, integer_latents
            )
        stages.start("mig")
        stages.start("modularity")
        if "mig" in metrics or "modularity" in metrics:
            binned = binned_mutual_information(encoded, latents, num_bins)
            if "mig" in metrics:
                result.mig = mig_from_mutual_information(binned, encoded.entropy.cpu())
            if "modularity" in metrics:
                result.modularity = _modularity_explicitness_encoded(
                    encoded, latents, binned, test_fraction, seed
                )
        stages.start("dci")
        if "dci" in metrics:
            result.dci = _dci_encoded(encoded, latents, dci_model, test_fraction, seed, show_progress)
        stages.start("sap")
        if "sap" in metrics:
            result.sap = _sap_encoded(encoded, latents, test_fraction, seed)
    return result
