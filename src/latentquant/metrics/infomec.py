"""InfoMEC (InfoM, InfoE, InfoC; Hsu et al. 2023) in its two conventions, batched in torch.

DESIGN §6. The two conventions differ only in preprocessing; the formulas are shared:

============================  ========================================  =========================================
                              ``convention="paper"`` (training-time     ``convention="standalone"`` (the authors'
                              code behind the paper's tables)           later standalone ``infomec.py``)
============================  ========================================  =========================================
continuous latents: MI        Ross k-NN estimator, k = 3, raw latents   k = 10, each latent standardized first
discrete latents: MI          plug-in MI on each latent's unique        same
                              values
active latents                range > max range / 8 (discrete too)      continuous: range > max range / 20;
                                                                        discrete: range > 0
InfoE features                integer-typed latents (code indices):     integer-typed or ``discrete_latents``:
                              one-hot; float latents standardized       one-hot of each latent; else standardized
InfoM over latents without    NaN terms dropped from the mean           NaN terms kept: InfoM is NaN
information (0/0)
============================  ========================================  =========================================

Sources are label-encoded per column; ``NMI[i, j] = I(s_i; z_j) / H(s_i)`` with H the plug-in entropy.

- InfoM = (mean over active latents j of max_i NMI[i, j] / sum_i NMI[i, j] − 1/S) / (1 − 1/S).
- InfoC = (mean over sources i of max_j NMI[i, j] / sum_j NMI[i, j] − 1/L_active) / (1 − 1/L_active),
  sums over active latents.
- Where a ratio is 0/0 the result follows the authors' code exactly (their training-time
  ``compute_mutual_information_ratio`` for "paper", their ``infomec.py`` for "standalone"): an active latent
  that informs about no source has a NaN InfoM term, which "paper" drops from the mean (its ``isfinite`` mask)
  and "standalone" keeps (``np.mean``: InfoM is NaN). A source that no active latent informs about has a
  NaN InfoC term that neither drops: InfoC is NaN in both conventions. With no active latent, or no
  informative one in "paper", both are NaN; with S = 1 InfoM, with one active latent InfoC, is 0/0 = NaN.
  A NaN says "undefined for this representation"; no 0 stands in for it.
- InfoE = mean over sources of (CE_null − CE_pred) / CE_null, with CE_pred the unweighted cross-entropy
  of a multinomial logistic regression (no penalty, balanced class weights, L-BFGS, 100 iterations) fit
  and scored on the same samples. CE_null, the same fit on all-zero features, is exactly ln(C): the
  intercept-only balanced objective (1/C) sum_c -ln p_c is minimized by p_c = 1/C, which is also where
  L-BFGS starts (zero weights), so the reference's null fit stops at once with log loss ln(C).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from latentquant import mi
from latentquant._openmp import available_cores
from latentquant.metrics._inputs import (
    EncodedSources,
    check_pair,
    cpu_threads,
    encode_columns,
    encode_sources,
    standardize,
)
from latentquant.metrics.logistic import OneHotCodes, fit_logistic

CONVENTIONS = ("paper", "standalone")


@dataclass
class InfoMECResult:
    """InfoMEC scores.

    Attributes:
        infom: modularity in [0, 1].
        infoe: explicitness, at most 1 and ~0 for uninformative latents (slightly negative is possible:
            the fit minimizes the balanced cross-entropy, InfoE reads the unweighted one).
        infoc: compactness in [0, 1].
        (InfoM and InfoC are NaN where the authors' formulas are 0/0: see the module docstring.)
        nmi: (S, L) normalized mutual information ``I(s_i; z_j) / H(s_i)``.
        active_latents: (L,) bool, the latents InfoM and InfoC count.
        convention: ``"paper"`` or ``"standalone"``.
    """

    infom: float
    infoe: float
    infoc: float
    nmi: np.ndarray
    active_latents: np.ndarray
    convention: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (arrays as nested lists)."""
        return {
            "infom": self.infom,
            "infoe": self.infoe,
            "infoc": self.infoc,
            "nmi": self.nmi.tolist(),
            "active_latents": self.active_latents.tolist(),
            "convention": self.convention,
        }


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def normalized_mutual_information(
    encoded: EncodedSources,
    latents: torch.Tensor,
    discrete_latents: bool,
    convention: str = "paper",
    jitter: float = 1e-10,
    seed: int = 0,
) -> torch.Tensor:
    """NMI matrix of label-encoded sources against latents, as the convention prescribes.

    Args:
        encoded: sources from :func:`latentquant.metrics._inputs.encode_sources`.
        latents: float latents on the device the estimator should run on.
        discrete_latents: plug-in MI on each latent's unique values instead of the k-NN estimator.
        convention: ``"paper"`` (k = 3, raw latents) or ``"standalone"`` (k = 10, standardized latents).
        jitter: relative noise the k-NN estimator adds to break ties (scikit-learn's 1e-10).
        seed: seed of that noise.

    Returns:
        (S, L) float64 tensor ``I(s_i; z_j) / H(s_i)``.

    Shapes:
        encoded.codes (N, S), latents (N, L).
    """
    _check_convention(convention)
    codes = encoded.codes.to(latents.device)
    if discrete_latents:
        latent_codes, _ = encode_columns(latents)
        information = mi.mutual_info_discrete_discrete(codes, latent_codes)
    else:
        knn_input, k = (latents, 3) if convention == "paper" else (standardize(latents), 10)
        information = mi.mutual_info_continuous_discrete(
            knn_input, codes, n_neighbors=k, jitter=jitter, seed=seed
        ).T
    return information.to(torch.float64) / encoded.entropy.to(latents.device)[:, None]


def active_latents(latents: torch.Tensor, discrete_latents: bool, convention: str = "paper") -> torch.Tensor:
    """(L,) bool: latents whose range clears the convention's threshold (see the module table).

    Shapes:
        latents (N, L).
    """
    _check_convention(convention)
    ranges = latents.amax(dim=0) - latents.amin(dim=0)
    if convention == "paper":
        return ranges > ranges.max() / 8
    if discrete_latents:
        return ranges > 0
    return ranges > ranges.max() / 20


def _normalized(mean_share: torch.Tensor, count: int) -> float:
    """``(mean_share - 1/count) / (1 - 1/count)`` in float64, NaN where it is 0/0 (as numpy/jax give)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((np.float64(mean_share) - 1.0 / count) / (1.0 - 1.0 / count))


def modularity_compactness(
    nmi: torch.Tensor, active: torch.Tensor, convention: str = "paper"
) -> tuple[float, float]:
    """InfoM and InfoC of an NMI matrix (formulas, and the NaN of 0/0 cases, in the module docstring).

    Args:
        nmi: normalized mutual information.
        active: the latents counted.
        convention: ``"paper"`` drops latents without information from InfoM; ``"standalone"`` keeps them
            (InfoM NaN), as the authors' two files do.

    Shapes:
        nmi (S, L), active (L,) bool.
    """
    _check_convention(convention)
    pruned = nmi[:, active.to(nmi.device)].to(torch.float64)
    num_sources, num_active = pruned.shape
    if num_active == 0:
        return math.nan, math.nan
    per_latent = pruned.amax(dim=0) / pruned.sum(dim=0)  # 0/0 = NaN for a latent informing about nothing
    if convention == "paper":
        per_latent = per_latent[torch.isfinite(per_latent)]
    per_source = pruned.amax(dim=1) / pruned.sum(dim=1)  # NaN for a source no active latent informs about
    return _normalized(per_latent.mean(), num_sources), _normalized(per_source.mean(), num_active)


def integer_typed(latents: object) -> bool:
    """Whether ``latents`` (numpy array, tensor or array-like) has an integer dtype (not bool): code indices,
    which InfoE one-hot encodes in both conventions (the authors' ``process_latents``)."""
    if isinstance(latents, torch.Tensor):
        return not (latents.is_floating_point() or latents.is_complex() or latents.dtype == torch.bool)
    return bool(np.issubdtype(np.asarray(latents).dtype, np.integer))


def _one_hot_columns(latents: torch.Tensor) -> OneHotCodes:
    """One-hot features of each latent's unique values, as codes: the fit gathers and scatter-adds weight
    columns instead of multiplying by the (N, sum of values) one-hot matrix (latentquant.metrics.logistic)."""
    codes, num_values = encode_columns(latents)
    return OneHotCodes(codes, num_values)


def infoe_scores(
    encoded: EncodedSources,
    latents: torch.Tensor,
    discrete_latents: bool,
    convention: str = "paper",
    max_iter: int = 100,
    dtype: torch.dtype = torch.float32,
    integer_latents: bool = False,
    workers: int = 1,
) -> tuple[float, np.ndarray]:
    """InfoE and its per-source terms, all sources fit in one batched L-BFGS on ``latents.device``.

    Args:
        encoded: label-encoded sources.
        latents: the representation (as float values; ``integer_latents`` says whether they were integers).
        discrete_latents: with ``convention="standalone"``, one-hot features instead of standardized ones.
        convention: ``"paper"`` or ``"standalone"``.
        max_iter: L-BFGS iterations (scikit-learn's default 100, as the reference).
        dtype: compute dtype of the fit (float32 agrees with float64 to ~1e-6 here and is ~2x faster).
        integer_latents: the latents are integer-typed code indices: one-hot features in both conventions.
        workers: threads of the CPU fit, which share out the sources (see :func:`fit_logistic`).

    Returns:
        (InfoE, per-source (S,) float64 array of (CE_null − CE_pred) / CE_null).

    Shapes:
        encoded.codes (N, S), latents (N, L).
    """
    _check_convention(convention)
    if integer_latents or (convention == "standalone" and discrete_latents):
        features = _one_hot_columns(latents)
    else:
        features = standardize(latents)
    fit = fit_logistic(
        features.to(dtype),
        encoded.codes.to(latents.device),
        num_classes=encoded.num_classes,
        class_weight="balanced",
        max_iter=max_iter,
        workers=workers,
    )
    null = torch.tensor([math.log(int(c)) for c in encoded.num_classes], dtype=torch.float64)
    per_source = ((null - fit.cross_entropy.cpu()) / null).numpy()
    return float(per_source.mean()), per_source


def infomec(
    sources: np.ndarray | torch.Tensor,
    latents: np.ndarray | torch.Tensor,
    discrete_latents: bool = False,
    convention: str = "paper",
    jitter: float = 1e-10,
    seed: int = 0,
    num_threads: int | None = 1,
) -> InfoMECResult:
    """InfoM, InfoE, InfoC and the NMI matrix of a representation (DESIGN §6).

    Runs where ``latents`` lives (CPU or CUDA tensor; numpy runs on CPU).

    Args:
        sources: ground-truth factors, any values; each column label-encoded, none constant.
        latents: the representation, finite. Integer-typed latents (code indices, e.g. VQ-VAE's) get one-hot
            InfoE features in both conventions, as the authors score VQ-VAE; float latents (QLAE's quantized
            values) standardized ones in "paper".
        discrete_latents: latents take few distinct values (quantized): plug-in MI on unique values. Default
            False (the k-NN estimator), as ``evaluate_representation``.
        convention: ``"paper"`` (default; produced the paper's tables) or ``"standalone"``
            (the authors' later file); the table in this module's docstring lists the differences.
        jitter: relative tie-breaking noise of the k-NN MI estimator (continuous latents).
        seed: seed of that noise.
        num_threads: torch intra-op threads for a CPU run (restored afterwards); None keeps torch's
            setting. The default 1 is the fastest on a CPU shared with other jobs (see ``cpu_threads``);
            on an idle multi-core machine None lets the k-NN estimator use every core.

    Returns:
        :class:`InfoMECResult` with floats ``infom``, ``infoe``, ``infoc``, ``nmi`` (S, L), ``active_latents`` (L,).

    Shapes:
        sources (N, S), latents (N, L).
    """
    _check_convention(convention)
    integer_latents = integer_typed(latents)
    # The input checks too run under the thread cap: their per-column torch.unique on 2 threads, beside the
    # other jobs of a busy 2-core machine, cost 0.55 s of CPU per call at N = 50,000 (OpenMP threads spinning).
    device = latents.device if isinstance(latents, torch.Tensor) else torch.device("cpu")
    with cpu_threads(device, num_threads):
        sources, latents = check_pair(sources, latents)
        encoded = encode_sources(sources, device=latents.device)
        return _infomec_encoded(encoded, latents, discrete_latents, convention, jitter, seed, integer_latents)


def _infomec_encoded(
    encoded: EncodedSources,
    latents: torch.Tensor,
    discrete_latents: bool,
    convention: str,
    jitter: float,
    seed: int,
    integer_latents: bool = False,
) -> InfoMECResult:
    infoe_args = (encoded, latents, discrete_latents, convention)
    infoe_kwargs = {"integer_latents": integer_latents}
    if latents.device.type == "cpu":
        # The k-NN MI (C++ op) and the logistic fits are independent and both release the GIL in their
        # kernels: they run side by side, and the fit shares its sources out over every core with threads of
        # its own (they block rather than spin, so they take nothing from the k-NN op while it runs).
        infoe_kwargs["workers"] = available_cores()
        # torch's thread setting is per thread: the pool's fresh thread would otherwise run its torch ops
        # (standardize, the final cross-entropy) on torch's default team, whose OpenMP threads then spin after
        # every op and take a core from the k-NN op and the fit (measured: 0.6 s of 1.3 s CPU per call at N = 50,000).
        threads = torch.get_num_threads()

        def infoe_task() -> tuple[float, np.ndarray]:
            with cpu_threads(latents.device, threads):
                return infoe_scores(*infoe_args, **infoe_kwargs)

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(infoe_task)
            nmi = normalized_mutual_information(encoded, latents, discrete_latents, convention, jitter, seed)
            infoe, _ = pending.result()
    else:
        nmi = normalized_mutual_information(encoded, latents, discrete_latents, convention, jitter, seed)
        infoe, _ = infoe_scores(*infoe_args, **infoe_kwargs)
    active = active_latents(latents, discrete_latents, convention)
    infom, infoc = modularity_compactness(nmi, active, convention)
    return InfoMECResult(
        infom=infom,
        infoe=infoe,
        infoc=infoc,
        nmi=nmi.cpu().numpy(),
        active_latents=active.cpu().numpy(),
        convention=convention,
    )
