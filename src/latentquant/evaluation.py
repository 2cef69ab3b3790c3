"""``latentquant.evaluate``: score any encoder on a ground-truth dataset, in the style of disentanglement_lib.

    >>> import latentquant
    >>> from latentquant.data import get_dataset
    >>> result = latentquant.evaluate(my_encoder, get_dataset("shapes3d"), num_samples=10_000)
    >>> result.metrics["infom"], result.metrics["mig"]
    >>> result.to_json("metrics.json")

The images come from a fixed sample of the dataset (``num_samples`` distinct images, the first of a seeded
shuffle: the sample ``latentquant train`` evaluates on, with the same default seed), are encoded in batches by
``encode_fn`` and scored against their factor indices by
:func:`latentquant.metrics.evaluate_representation` (InfoMEC, MIG, DCI, SAP, modularity/explicitness), plus the
PSNR of ``decode_fn``'s reconstructions when one is given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentquant._progress import progress
from latentquant.metrics.evaluate import ALL_METRICS, evaluate_representation
from latentquant.metrics.infomec import CONVENTIONS
from latentquant.provenance import provenance

DEFAULT_SEED = 20230228  # the training runs' eval seed (the authors' data seed): the same images
# With ``discrete_latents=None``, latents with at most this many distinct values in every column, and at most a
# quarter as many as samples (each value seen 4 times on average), are scored as discrete (plug-in MI): QLAE's
# quantized values (10 per latent) are, a continuous encoder's are not.
AUTO_DISCRETE_MAX_VALUES = 64

Encode = Callable[[torch.Tensor], Any]


@dataclass
class EvaluationReport:
    """What :func:`evaluate` returns.

    Attributes:
        metrics: flat scalars: ``infom``, ``infoe``, ``infoc`` (of the first convention; the other one, when both
            are asked for, as ``infom_standalone`` ... or ``infom_paper`` ...), ``mig``, ``dci_disentanglement``,
            ``dci_completeness``, ``dci_informativeness``, ``sap``, ``modularity``, ``explicitness``, ``psnr`` (dB)
            — those requested.
        details: per metric the full result (``nmi`` matrix, importances, per-source gaps, ...) as JSON-ready dicts;
            InfoMEC under ``infomec`` (and ``infomec_<convention>`` for the second convention).
        dataset: the dataset's name; ``factor_names``: its factors (the rows of every matrix).
        num_samples, seed, discrete_latents, conventions: how it was computed.
        provenance: latentquant/torch versions, git commit, device, threads, wall time
            (:func:`latentquant.provenance.provenance`).
        latents: (N, L) the encoded sample (CPU); factors: (N, F) int64 factor indices. Not in ``to_dict``.
    """

    metrics: dict[str, float]
    details: dict[str, Any]
    dataset: str
    factor_names: tuple[str, ...]
    num_samples: int
    seed: int
    discrete_latents: bool
    conventions: tuple[str, ...]
    provenance: dict[str, Any]
    latents: torch.Tensor = field(repr=False)
    factors: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the latents and factors."""
        return {
            "metrics": dict(self.metrics),
            "dataset": self.dataset,
            "factor_names": list(self.factor_names),
            "num_samples": self.num_samples,
            "seed": self.seed,
            "discrete_latents": self.discrete_latents,
            "conventions": list(self.conventions),
            "details": self.details,
            "provenance": dict(self.provenance),
        }

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The ``to_dict`` as JSON text (NaN written as ``NaN``, as Python's json does); also written to ``path``
        when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def _metric_list(metrics: str | Sequence[str], decode_fn: Callable | None) -> tuple[list[str], bool]:
    """(metrics for evaluate_representation, whether PSNR is wanted)."""
    if metrics == "all":
        return list(ALL_METRICS), decode_fn is not None
    names = check_metric_names(metrics, extra=("psnr",))
    want_psnr = "psnr" in names
    if want_psnr and decode_fn is None:
        raise ValueError("metrics: 'psnr' needs decode_fn (latents -> images in [0, 1])")
    return [m for m in names if m != "psnr"], want_psnr


def _conventions(convention: str | Sequence[str]) -> tuple[str, ...]:
    if convention == "both":
        return CONVENTIONS
    names = (convention,) if isinstance(convention, str) else tuple(convention)
    if not names or any(c not in CONVENTIONS for c in names) or len(set(names)) != len(names):
        raise ValueError(
            f"convention: expected one of {CONVENTIONS}, 'both' or a list of them, got {convention!r}"
        )
    return names


def _as_batch_tensor(out: Any, batch: int, what: str) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{what} must return a tensor or numpy array, got {type(out).__name__}")
    if out.dim() < 1 or out.shape[0] != batch:
        raise ValueError(
            f"{what} must return a batch of {batch} rows for {batch} images, got shape {tuple(out.shape)}"
        )
    return out


def _resolve_dataset(dataset: Any) -> Any:
    if isinstance(dataset, str):
        from latentquant.data import get_dataset

        return get_dataset(dataset)
    needed = ("index_to_factors", "images_for", "factor_names")
    if not all(hasattr(dataset, a) for a in needed):
        raise ValueError(
            "dataset: expected a latentquant.data dataset (or its name, e.g. 'shapes3d'), "
            f"got {type(dataset).__name__}"
        )
    return dataset


def _is_discrete(latents: torch.Tensor, discrete_latents: bool | None) -> bool:
    if discrete_latents is not None:
        return bool(discrete_latents)
    if not latents.is_floating_point():
        return True
    limit = min(AUTO_DISCRETE_MAX_VALUES, latents.shape[0] // 4)
    return all(int(torch.unique(latents[:, j]).numel()) <= limit for j in range(latents.shape[1]))


def representation_metrics(
    factors: torch.Tensor,
    latents: torch.Tensor,
    discrete_latents: bool,
    conventions: Sequence[str],
    metrics: Sequence[str],
    dci_model: str = "gbt",
    show_progress: bool | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The requested metrics of a representation, as ``metrics.json`` records them.

    Args:
        factors: (N, F) factor indices; latents: (N, L) the representation.
        discrete_latents: plug-in MI on unique values (see ``latentquant.metrics.infomec``).
        conventions: InfoMEC conventions; the first gives ``infom``/``infoe``/``infoc``, the others
            ``infom_<convention>`` ... (InfoMEC only is recomputed for them).
        metrics: names from ``latentquant.metrics.ALL_METRICS``; empty gives empty results.
        dci_model, show_progress: as :func:`evaluate`.

    Returns:
        (flat scalars, full results per metric as JSON-ready dicts: ``infomec``, ``infomec_<convention>``,
        ``mig``, ``dci``, ``sap``, ``modularity``).
    """
    scores: dict[str, float] = {}
    details: dict[str, Any] = {}
    if not metrics:
        return scores, details
    steps = [(conventions[0], list(metrics))]
    steps += [(c, ["infomec"]) for c in conventions[1:] if "infomec" in metrics]
    for i, (convention, names) in enumerate(steps):
        result = evaluate_representation(
            factors,
            latents,
            discrete_latents=discrete_latents,
            convention=convention,
            metrics=names,
            dci_model=dci_model,
            show_progress=show_progress,
        )
        full = result.to_dict()
        flat = full.pop("scalars")
        if i == 0:
            scores.update(flat)
            details.update(full)
        else:
            scores.update({f"{k}_{convention}": v for k, v in flat.items()})
            details[f"infomec_{convention}"] = full["infomec"]
    return scores, details


def check_metric_names(metrics: str | Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """``"all"``, a comma-separated string or a list -> a list of names from ``ALL_METRICS`` (plus ``extra``);
    ``"all"`` gives ``ALL_METRICS``. An unknown or empty list is a ValueError naming the choices."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [str(m) for m in metrics]
    if names == ["all"]:
        return list(ALL_METRICS)
    known = (*ALL_METRICS, *extra)
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise ValueError(
            f"metrics: expected 'all' or a non-empty list from {', '.join(known)}, got {metrics!r}"
        )
    return list(dict.fromkeys(names))


def evaluate(
    encode_fn: Encode,
    dataset: Any,
    num_samples: int = 10_000,
    metrics: str | Sequence[str] = "all",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = DEFAULT_SEED,
    decode_fn: Callable[[torch.Tensor], Any] | None = None,
    convention: str | Sequence[str] = "paper",
    discrete_latents: bool | None = None,
    dci_model: str = "gbt",
    show_progress: bool | None = None,
) -> EvaluationReport:
    """Disentanglement metrics of any encoder on a ground-truth dataset.

    Args:
        encode_fn: maps a batch of images, a float32 (B, C, H, W) tensor in [0, 1] on ``device`` (what
            ``latentquant.data`` datasets give), to latents (B, L) (a tensor or numpy array; trailing dims are
            flattened). Called under ``torch.no_grad()``; put a module in eval mode yourself.
        dataset: a ``latentquant.data`` dataset, or a procedural dataset's name (``"shapes3d"``, ``"dsprites"``).
        num_samples: N, distinct images scored (all of them when the dataset is smaller).
        metrics: ``"all"`` (InfoMEC, MIG, DCI, SAP, modularity, and PSNR when ``decode_fn`` is given), or a list /
            comma-separated string from ``infomec, mig, dci, sap, modularity, psnr``.
        batch_size: images per ``encode_fn`` call.
        device: where images go (default: CUDA when available, else CPU).
        seed: seed of the sample (default: the one ``latentquant train`` evaluates on, so a run's encoder scores on
            the same images).
        decode_fn: maps ``encode_fn``'s output batch to reconstructions (B, C, H, W) in [0, 1] (apply the sigmoid
            to logits yourself); gives ``psnr``, the mean per-image PSNR in dB.
        convention: InfoMEC convention, ``"paper"``, ``"standalone"``, ``"both"`` or a list (see
            ``latentquant.metrics.infomec``).
        discrete_latents: score latents as discrete (plug-in MI); None decides: integer latents, or at most
            ``min(64, N // 4)`` distinct values in every latent, are discrete.
        dci_model: ``"gbt"`` (disentanglement_lib's gradient-boosted trees, slow) or ``"linear"``.
        show_progress: draw progress bars; None: only when stderr is a terminal.

    Returns:
        :class:`EvaluationReport`.
    """
    start = time.perf_counter()
    wanted, want_psnr = _metric_list(metrics, decode_fn)
    conventions = _conventions(convention)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: expected an int >= 2, got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    dataset = _resolve_dataset(dataset)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    from latentquant.train.evaluate import evaluation_factors, psnr

    factors = evaluation_factors(dataset, num_samples, seed)
    n = factors.shape[0]
    chunks, psnrs = [], []
    with torch.no_grad():
        for lo in progress(
            range(0, n, batch_size), "encoding", total=-(-n // batch_size), enabled=show_progress
        ):
            images = dataset.images_for(factors[lo : lo + batch_size]).to(device)
            z = _as_batch_tensor(encode_fn(images), images.shape[0], "encode_fn")
            if want_psnr:
                recon = _as_batch_tensor(decode_fn(z), images.shape[0], "decode_fn")
                if recon.shape != images.shape:
                    raise ValueError(
                        f"decode_fn must return images of shape {tuple(images.shape)}, got {tuple(recon.shape)}"
                    )
                psnrs.append(psnr(recon.to(images.device), images).cpu())
            chunks.append(z.detach().reshape(z.shape[0], -1).cpu())
    latents = torch.cat(chunks)
    if latents.is_floating_point():
        latents = latents.double()
    discrete = _is_discrete(latents, discrete_latents)
    scores, details = representation_metrics(
        factors, latents, discrete, conventions, wanted, dci_model, show_progress
    )
    if want_psnr:
        scores["psnr"] = float(torch.cat(psnrs).mean())
    return EvaluationReport(
        metrics=scores,
        details=details,
        dataset=str(getattr(dataset, "name", type(dataset).__name__)),
        factor_names=tuple(dataset.factor_names),
        num_samples=n,
        seed=int(seed),
        discrete_latents=discrete,
        conventions=conventions if "infomec" in wanted else (),
        provenance=provenance(device, time.perf_counter() - start),
        latents=latents,
        factors=factors,
    )
