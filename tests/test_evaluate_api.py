"""latentquant.evaluate: any encoder, any latentquant.data dataset, disentanglement_lib-style."""

import json
import math

import numpy as np
import pytest
import torch

from latentquant.data.base import GroundTruthDataset
from latentquant.evaluation import evaluate
from latentquant.train.evaluate import evaluation_factors


class Tiny(GroundTruthDataset):
    """Images whose pixel f is factor f's index / size: a perfect encoder reads them back."""

    def __init__(self):
        super().__init__(
            "tiny", ("a", "b", "c"), (5, 4, 6), [np.arange(5), np.arange(4), np.arange(6)], (1, 1, 3)
        )

    def _render(self, factors):
        return (factors.float() / self._sizes.float()).reshape(-1, 1, 1, 3)


def perfect(images):
    return images.flatten(1) * 10.0  # one latent per factor


def test_perfect_and_constant_encoders():
    ds = Tiny()
    good = evaluate(perfect, ds, num_samples=120, metrics="infomec,mig,sap,modularity", device="cpu")
    assert good.num_samples == 120 and good.discrete_latents  # 4-6 values per latent: discrete
    assert good.metrics["infom"] > 0.99 and good.metrics["infoc"] > 0.99
    assert good.metrics["mig"] > 0.95 and good.metrics["modularity"] > 0.99
    assert np.asarray(good.details["infomec"]["nmi"]).shape == (3, 3)
    bad = evaluate(
        lambda x: torch.zeros(x.shape[0], 3), ds, num_samples=120, metrics=["mig", "sap"], device="cpu"
    )
    assert bad.metrics["mig"] == 0.0 and bad.metrics["sap"] == 0.0
    # the sample is the training runs' evaluation sample (distinct images, seeded shuffle)
    assert torch.equal(good.factors, evaluation_factors(ds, 120, 20230228))
    assert len({tuple(f) for f in good.factors.tolist()}) == 120


def test_psnr_both_conventions_and_json(tmp_path):
    ds = Tiny()
    result = evaluate(
        perfect,
        ds,
        num_samples=60,
        metrics=["infomec", "psnr"],
        convention="both",
        batch_size=7,
        decode_fn=lambda z: torch.full((z.shape[0], 1, 1, 3), 0.5),
        device="cpu",
    )
    images = ds.images_for(result.factors)
    mse = (images - 0.5).square().flatten(1).mean(1)
    assert result.metrics["psnr"] == pytest.approx(float((-10 * torch.log10(mse)).mean()), rel=1e-6)
    assert {"infom", "infom_standalone", "infoe_standalone", "infoc_standalone"} <= set(result.metrics)
    assert result.conventions == ("paper", "standalone") and "infomec_standalone" in result.details
    text = result.to_json(tmp_path / "m.json")
    back = json.loads((tmp_path / "m.json").read_text())
    assert back == json.loads(text) and back["metrics"]["psnr"] == result.metrics["psnr"]
    prov = back["provenance"]
    assert prov["device"] == "cpu" and prov["torch_version"] == torch.__version__ and prov["wall_time_s"] >= 0
    assert {"latentquant_version", "git_commit", "num_threads"} <= set(prov)


def test_continuous_encoder_and_dataset_by_name():
    def encode(x):  # two continuous summaries of a dSprites image: brightness and the horizontal centroid
        columns = torch.arange(x.shape[3], dtype=x.dtype)
        mass = x.sum(dim=(1, 2))
        return torch.stack([x.mean(dim=(1, 2, 3)), (mass * columns).sum(1) / mass.sum(1).clamp_min(1e-6)], 1)

    result = evaluate(encode, "dsprites", num_samples=48, metrics="mig", device="cpu")
    assert not result.discrete_latents and result.dataset == "dsprites"
    assert result.latents.shape == (48, 2) and result.latents.dtype == torch.float64
    assert math.isfinite(result.metrics["mig"]) and result.factor_names[-1] == "pos_y"


def test_argument_errors():
    ds = Tiny()
    with pytest.raises(ValueError, match="'psnr' needs decode_fn"):
        evaluate(perfect, ds, metrics="psnr")
    with pytest.raises(ValueError, match="metrics: expected 'all'"):
        evaluate(perfect, ds, metrics="mig,infomecc")
    with pytest.raises(ValueError, match="convention: expected"):
        evaluate(perfect, ds, convention="papr")
    with pytest.raises(ValueError, match="encode_fn must return a batch of 10 rows"):
        evaluate(lambda x: torch.zeros(3, 2), ds, num_samples=20, batch_size=10, metrics="mig")
    with pytest.raises(ValueError, match="encode_fn must return a tensor or numpy array, got tuple"):
        evaluate(lambda x: (x, x), ds, num_samples=20, metrics="mig")
    with pytest.raises(ValueError, match="dataset: expected a latentquant.data dataset"):
        evaluate(perfect, [1, 2, 3])


def test_top_level_name():
    import latentquant

    assert latentquant.evaluate is evaluate
