"""The GAN half of Hsu et al. (2023): InfoWGAN-GP, QLInfoWGAN-GP and WGAN-GP, to the authors' recipe.

One network is both critic and latent regressor: the encoder trunk (conv blocks and dense blocks) with two
linear heads on its features, a value head ``D(x)`` (1 output) and a latent head ``ẑ(x)`` (L outputs; this is
the encoder's own last linear layer). The generator ``G`` is the style decoder; images are ``sigmoid(G(z))``.
QLInfoWGAN-GP quantizes the latent head with a :class:`~latentquant.nn.LatentQuantizer` (straight-through) and
draws its prior uniformly from each latent's current values, differentiably in the values; InfoWGAN-GP uses the
head's output as is and the prior ``U(0, 1)^L``; WGAN-GP is InfoWGAN-GP with latent weight 0.

Objectives (means over the batch; ``z`` from the prior, ``x̃ = sigmoid(G(z))``, ``x̂ = εx + (1 − ε)x̃``, ``ε ~ U(0, 1)``
per sample):

* critic (trunk + both heads): ``D(x̃) − D(x) + 10·(‖∇_x̂ D(x̂)‖₂ − 1)² + 200·mean_l(ẑ(x̃) − z)²``
  (QL: ``+ 0.01·quantization + 0.01·commitment`` on ``ẑ(x̃)``), every step;
* generator (generator + codebook): ``−D(x̃) + 200·mean_l(ẑ(x̃) − z)²`` (+ the same QL terms), every 5th step
  (``(step + 1) % 5 == 0``) on the same real batch, with a fresh ``z``.

The functions :func:`critic_value_loss`, :func:`gradient_penalty` and :func:`latent_regression_loss` are the
loss terms; :meth:`InfoWGANGP.critic_losses` and :meth:`InfoWGANGP.generator_losses` assemble them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from latentquant.nn import LatentQuantizer
from latentquant.zoo.base import Autoencoder


def critic_value_loss(value_real: torch.Tensor, value_fake: torch.Tensor) -> torch.Tensor:
    """The Wasserstein critic term ``mean(D(x̃)) − mean(D(x))`` (its negative is the Wasserstein estimate).

    Shapes:
        value_real ``(B,)``, value_fake ``(B',)`` -> scalar.
    """
    return value_fake.float().mean() - value_real.float().mean()


def gradient_penalty(
    value_fn: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    epsilon: torch.Tensor,
) -> torch.Tensor:
    """WGAN-GP's penalty ``mean_b (‖∇_x̂ D(x̂_b)‖₂ − 1)²`` at ``x̂ = ε·real + (1 − ε)·fake``.

    The norm is over the whole flattened image of each sample. The gradient is taken with ``create_graph=True``
    so that the penalty can be differentiated again with respect to the critic's parameters (double backward
    through ``value_fn`` only: pass the trunk + value head, never a path through the quantizer).

    Args:
        value_fn: maps images ``(B, C, H, W)`` to critic values ``(B,)``; each value may depend only on its own
            image (true of the conv/instance-norm critic).
        real, fake: ``(B, C, H, W)`` images; neither receives gradient.
        epsilon: ``(B,)`` interpolation weights in [0, 1].

    Returns:
        A scalar.
    """
    if real.shape != fake.shape:
        raise ValueError(
            f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape"
        )
    if epsilon.shape != real.shape[:1]:
        raise ValueError(
            f"gradient_penalty: epsilon must have shape ({real.shape[0]},) (one per sample), got {tuple(epsilon.shape)}"
        )
    weight = epsilon.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    interpolated = (weight * real.detach() + (1 - weight) * fake.detach()).requires_grad_(True)
    with torch.enable_grad():
        value = value_fn(interpolated)
        (grad,) = torch.autograd.grad(value.sum(), interpolated, create_graph=True)
    return (grad.float().flatten(1).norm(dim=1) - 1).square().mean()


def latent_regression_loss(z_hat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """InfoGAN's latent regression ``mean((ẑ − z)²)`` over the batch and the latents.

    Shapes:
        z_hat, z: ``(B, L)`` -> scalar.
    """
    if z_hat.shape != z.shape:
        raise ValueError(f"latent_regression_loss: z_hat {tuple(z_hat.shape)} and z {tuple(z.shape)} differ")
    return (z_hat.float() - z.float()).square().mean()


class InfoWGANGP(Autoencoder):
    """InfoWGAN-GP: a Wasserstein GAN with gradient penalty whose critic also regresses the latent code.

    ``self.encoder`` is the critic trunk with its latent head (its last linear layer), ``self.value_head`` the
    critic's value head, ``self.decoder`` the generator. As an :class:`Autoencoder` it serves evaluation: the
    representation of real images is the latent head's output and ``forward`` reconstructs them as ``G(E(x))``.

    Args:
        value_weight: weight of the critic value terms (authors: 1).
        gradient_penalty_weight: weight of the gradient penalty (authors: 10).
        latent_weight: weight of the latent regression (authors: 200; WGAN-GP: 0).
        generator_period: the generator steps when ``(step + 1) % generator_period == 0`` (authors: 5).
        beta1, beta2: Adam(W) betas of both players (authors: 0, 0.9).
        **kwargs: see :class:`latentquant.zoo.base.Autoencoder` (``encoder`` is the critic trunk, ``decoder``
            the generator).

    Shapes:
        ``forward(x)``: x ``(B, C, H, W)`` -> ``{"value": (B,), "z": (B, L) latent head, "z_hat": (B, L)
        representation, "x_hat_logits": (B, C, H, W) = G(z_hat)}``.
    """

    name: ClassVar[str] = "infowgan"
    discrete_latents: ClassVar[bool] = False
    hyperparameters: ClassVar[dict[str, Any]] = {
        "value_weight": 1.0,
        "gradient_penalty_weight": 10.0,
        "latent_weight": 200.0,
        "generator_period": 5,
        "beta1": 0.0,
        "beta2": 0.9,
    }

    def __init__(
        self,
        *args: Any,
        value_weight: float = 1.0,
        gradient_penalty_weight: float = 10.0,
        latent_weight: float = 200.0,
        generator_period: int = 5,
        beta1: float = 0.0,
        beta2: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for arg, value in (
            ("value_weight", value_weight),
            ("gradient_penalty_weight", gradient_penalty_weight),
            ("latent_weight", latent_weight),
        ):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{type(self).__name__}: {arg} must be a number >= 0, got {value!r}")
        if (
            isinstance(generator_period, bool)
            or not isinstance(generator_period, int)
            or generator_period < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: generator_period must be an int >= 1, got {generator_period!r}"
            )
        for arg, value in (("beta1", beta1), ("beta2", beta2)):
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{type(self).__name__}: {arg} must be in [0, 1), got {value!r}")
        self.value_weight = float(value_weight)
        self.gradient_penalty_weight = float(gradient_penalty_weight)
        self.latent_weight = float(latent_weight)
        self.generator_period = int(generator_period)
        self.betas = (float(beta1), float(beta2))
        self.value_head = nn.Linear(self.encoder.dense[-1].in_features, 1)

    # ----------------------------------------------------------------------------------------------- critic
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The critic trunk's features ``(B, F)`` of images ``x (B, C, H, W)`` (input of both heads)."""
        return self.encoder.dense[:-1](self.encoder.conv(x))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Critic values ``D(x) (B,)``: trunk + value head only (the gradient-penalty path)."""
        return self.value_head(self.features(x)).squeeze(1).float()

    def _latent(self, pre_z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The latent layer on the latent head's output ``pre_z (B, L)``: ``"z"`` (as given) and ``"z_hat"``,
        the regressed latent (here ``pre_z`` itself)."""
        return {"z": pre_z, "z_hat": pre_z.float()}

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Critic pass: ``{"value": (B,), "z": (B, L) latent head output, "z_hat": (B, L) regressed latent}``
        (QL adds ``"indices"`` and ``"aux_loss"``)."""
        features = self.features(x)
        pre_z = self.encoder.dense[-1](features)
        return {"value": self.value_head(features).squeeze(1).float(), **self._latent(pre_z)}

    # ------------------------------------------------------------------------------------------- generator
    def sample_prior(
        self, n: int, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> torch.Tensor:
        """``(n, L)`` draws from the prior ``U(0, 1)^L`` (on the model's device; ``differentiable`` is moot)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample_prior: n must be an int >= 0, got {n!r}")
        device = self.value_head.weight.device
        if generator is not None and generator.device != device:
            return torch.rand(n, self.num_latents, generator=generator, device=generator.device).to(device)
        return torch.rand(n, self.num_latents, generator=generator, device=device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``sigmoid(G(z)) (B, C, H, W)`` in [0, 1] from latents ``z (B, L)``."""
        return torch.sigmoid(self.decoder(z).float())

    # ------------------------------------------------------------------------- the Autoencoder interface
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.encode(x)
        outputs["x_hat_logits"] = self.decoder(outputs["z_hat"])
        return outputs

    def representation(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["z_hat"]

    def losses(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The critic's loss terms on the real batch ``x`` (``outputs`` is not needed: fakes are drawn anew)."""
        return self.critic_losses(x)

    def prior_traversal_values(self, steps: int) -> list[torch.Tensor]:
        """Per latent, the values a traversal from the prior visits: ``steps`` points spanning [0, 1]."""
        grid = torch.linspace(0.0, 1.0, steps, device=self.value_head.weight.device)
        return [grid.clone() for _ in range(self.num_latents)]

    # ------------------------------------------------------------------------------------------ objectives
    def _quantizer_terms(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Extra loss terms of the latent layer (QL: weighted quantization + commitment); none here."""
        return {}

    def critic_losses(
        self,
        real: torch.Tensor,
        z: torch.Tensor | None = None,
        epsilon: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The critic's objective on a real batch.

        Args:
            real: ``(B, C, H, W)`` images in [0, 1].
            z: ``(B, L)`` prior draws for the fakes (default: drawn from :meth:`sample_prior`, detached).
            epsilon: ``(B,)`` interpolation weights of the penalty (default: ``U(0, 1)``).

        Returns:
            ``"loss"`` (the total the critic minimizes), ``"wasserstein"`` (``mean D(x) − mean D(x̃)``),
            ``"gradient_penalty"``, ``"latent_mse"`` and, for QL, ``"quantization"``/``"commitment"``
            (unweighted) and ``"aux_loss"`` (weighted, included in the total).
        """
        batch = real.shape[0]
        if z is None:
            z = self.sample_prior(batch)
        if epsilon is None:
            epsilon = torch.rand(batch, device=real.device)
        with torch.no_grad():
            fake = self.generate(z.detach()).to(real.dtype)
        features = self.features(torch.cat([real, fake]))
        values = self.value_head(features).squeeze(1).float()
        fake_latent = self._latent(self.encoder.dense[-1](features[batch:]))
        value_loss = critic_value_loss(values[:batch], values[batch:])
        penalty = gradient_penalty(self.value, real, fake, epsilon)
        latent = latent_regression_loss(fake_latent["z_hat"], z.detach())
        extra = self._quantizer_terms(fake_latent)
        loss = (
            self.value_weight * value_loss
            + self.gradient_penalty_weight * penalty
            + self.latent_weight * latent
        )
        if "aux_loss" in extra:
            loss = loss + extra["aux_loss"]
        return {
            "loss": loss,
            "wasserstein": -value_loss.detach(),
            "gradient_penalty": penalty,
            "latent_mse": latent,
            **extra,
        }

    def generator_losses(self, n: int, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The generator's objective on ``n`` fresh fakes.

        Args:
            n: batch size.
            z: ``(n, L)`` prior draws (default: :meth:`sample_prior` with ``differentiable=True``, so that the
                loss reaches a learned prior's values).

        Returns:
            ``"loss"`` (the total), ``"value"`` (``mean D(x̃)``), ``"latent_mse"`` and, for QL,
            ``"quantization"``/``"commitment"``/``"aux_loss"`` as in :meth:`critic_losses`.
        """
        if z is None:
            z = self.sample_prior(n, differentiable=True)
        fake = self.generate(z)
        encoded = self.encode(fake)
        value = encoded["value"].mean()
        latent = latent_regression_loss(encoded["z_hat"], z)
        extra = self._quantizer_terms(encoded)
        loss = -self.value_weight * value + self.latent_weight * latent
        if "aux_loss" in extra:
            loss = loss + extra["aux_loss"]
        return {"loss": loss, "value": value, "latent_mse": latent, **extra}

    # ------------------------------------------------------------------------------------------- training
    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters the critic's optimizer owns: the trunk and both heads."""
        return [*self.encoder.parameters(), *self.value_head.parameters()]

    def generator_modules(self) -> list[nn.Module]:
        """Modules the generator's optimizer owns: the generator (and, for QL, the latent codebook)."""
        return [self.decoder]

    def configure_optimizers(self, config: Any) -> dict[str, torch.optim.Optimizer]:
        """Two AdamW optimizers, ``"generator"`` (generator + codebook) and ``"critic"`` (trunk + both heads).

        Weights: AdamW(``config.lr``, betas ``(beta1, beta2)``, eps 1e-8, decoupled decay ``config.weight_decay``),
        clipped element-wise to ``±config.grad_clip`` first; biases and codebooks: the same without decay or
        clipping (Adam). Groups come from :func:`latentquant.train.optim.param_groups`.
        """
        from latentquant.train.optim import param_groups

        if not config.lr > 0:
            raise ValueError(f"lr must be > 0, got {config.lr}")
        weight_decay = float(config.weight_decay or 0.0)
        players = {
            "generator": nn.ModuleList(self.generator_modules()),
            "critic": nn.ModuleList([self.encoder, self.value_head]),
        }
        return {
            name: torch.optim.AdamW(
                param_groups(module, weight_decay), lr=float(config.lr), betas=self.betas, eps=1e-8
            )
            for name, module in players.items()
        }

    def is_generator_step(self, step: int) -> bool:
        """Whether the generator steps at 0-based ``step`` (the authors: ``(step + 1) % 5 == 0``)."""
        return (step + 1) % self.generator_period == 0

    def train_step(
        self,
        images: torch.Tensor,
        step: int,
        optimizers: dict[str, torch.optim.Optimizer],
        config: Any,
        forward: Callable[..., Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One iteration: a critic step on ``images``, then a generator step when :meth:`is_generator_step`.

        Each player's gradients are computed for its own parameters only (``backward(inputs=...)``), clipped
        (weights), and applied by its optimizer. ``forward`` (a ``torch.compile``'d module) is not used: the
        gradient penalty's double backward runs eagerly.

        Returns:
            Detached scalars: ``"loss"`` and ``"critic_loss"`` (the critic's total), ``"wasserstein"``,
            ``"gradient_penalty"``, ``"latent_mse"`` (+ QL terms), and on generator steps ``"generator_loss"``,
            ``"generator_value"``, ``"generator_latent_mse"`` (+ ``"generator_<QL term>"``).
        """
        from latentquant.train.optim import clip_gradients

        missing = sorted({"generator", "critic"} - set(optimizers))
        if missing:
            raise ValueError(
                f"{type(self).__name__}.train_step: optimizers {missing} missing; got {sorted(optimizers)}"
            )
        device_type = images.device.type
        use_amp = bool(getattr(config, "amp", False)) and device_type == "cuda"
        logged: dict[str, torch.Tensor] = {}
        for name in ("critic", "generator"):
            if name == "generator" and not self.is_generator_step(step):
                continue
            optimizer = optimizers[name]
            params = [p for group in optimizer.param_groups for p in group["params"]]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_amp):
                terms = (
                    self.critic_losses(images) if name == "critic" else self.generator_losses(images.shape[0])
                )
            terms["loss"].backward(inputs=params)
            clip_gradients(optimizer, config.grad_clip)
            optimizer.step()
            prefix = "generator_" if name == "generator" else ""
            for key, value in terms.items():
                if key == "aux_loss":
                    continue
                logged[f"{prefix}{key}" if key != "loss" else f"{name}_loss"] = value.detach()
        logged["loss"] = logged["critic_loss"]
        return logged

    # --------------------------------------------------------------------------------------------- report
    @torch.no_grad()
    def report_figures(self, out_dir: Path, records: list[dict[str, Any]], config: Any) -> dict[str, str]:
        """Write the GAN's own figures into ``out_dir`` and return ``{figure name: caption}``.

        ``samples.png``: a grid of samples from the prior; ``prior_traversals.png``: from one prior draw, each
        latent set to each value of :meth:`prior_traversal_values`; ``gan_curves.png``: the critic and generator
        losses and the Wasserstein estimate over steps. The draws use a generator seeded with ``config.seed``,
        leaving the global random state alone.
        """
        from latentquant.train.report import plot_gan_curves, plot_image_grid, plot_traversals

        device = self.value_head.weight.device
        rng = torch.Generator().manual_seed(int(getattr(config, "seed", 0)))
        was_training = self.training
        self.eval()
        try:
            z = self.sample_prior(32, generator=rng)
            plot_image_grid(
                self.generate(z), out_dir / "samples.png", columns=8, title="Samples from the prior"
            )
            values = self.prior_traversal_values(int(getattr(config, "traversal_steps", 10)))
            plot_traversals(
                self,
                z[0],
                values,
                [True] * self.num_latents,
                out_dir / "prior_traversals.png",
                device,
                title="Latent traversals from a prior sample (each row varies one latent)",
            )
        finally:
            self.train(was_training)
        plot_gan_curves(records, out_dir / "gan_curves.png")
        prior = "each latent's codebook values" if self.discrete_latents else "the prior U(0, 1)"
        return {
            "samples": "Samples G(z) from the prior.",
            "prior_traversals": f"Latent traversals from one prior sample: each row sets one latent to {prior}.",
            "gan_curves": "Critic and generator losses (left) and the critic's Wasserstein estimate "
            "mean D(x) - mean D(G(z)) (right) over steps.",
        }


class QLInfoWGANGP(InfoWGANGP):
    """QLInfoWGAN-GP: InfoWGAN-GP whose latent head is quantized by per-latent learned scalar codebooks.

    The regressed latent is the straight-through quantized code; the prior draws each latent uniformly from
    its current values, differentiably in the values (the generator's losses train the codebook); both players
    add ``quantization_weight·mean((sg(z) − z_q)²) + commitment_weight·mean((z − sg(z_q))²)`` on the fakes'
    latent head. The codebook belongs to the generator's optimizer (no decay, no clipping).

    Args:
        num_values: values per latent (authors: 10, initialized ``linspace(-0.5, 0.5)``).
        quantization_weight, commitment_weight: authors: 0.01 each.
        **kwargs: see :class:`InfoWGANGP`.

    Shapes:
        ``forward(x)`` adds ``"indices": (B, L) int64`` and ``"aux_loss": ()``; ``"z_hat"`` holds the quantized
        values (straight-through).
    """

    name: ClassVar[str] = "qlinfowgan"
    discrete_latents: ClassVar[bool] = True
    hyperparameters: ClassVar[dict[str, Any]] = {
        **InfoWGANGP.hyperparameters,
        "num_values": 10,
        "quantization_weight": 0.01,
        "commitment_weight": 0.01,
    }

    def __init__(
        self,
        *args: Any,
        num_values: int = 10,
        quantization_weight: float = 0.01,
        commitment_weight: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.quantizer = LatentQuantizer(
            self.num_latents,
            num_values=num_values,
            quantization_weight=quantization_weight,
            commitment_weight=commitment_weight,
        )

    def _latent(self, pre_z: torch.Tensor) -> dict[str, torch.Tensor]:
        z_hat, indices, aux_loss = self.quantizer(pre_z.float())
        return {"z": pre_z, "z_hat": z_hat, "indices": indices, "aux_loss": aux_loss}

    def _quantizer_terms(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        distance = (encoded["z"].detach().float() - encoded["z_hat"].detach()).square().mean()
        return {"aux_loss": encoded["aux_loss"], "quantization": distance, "commitment": distance}

    def sample_prior(
        self, n: int, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> torch.Tensor:
        """``(n, L)`` draws, each latent uniform over its current values; ``differentiable=True`` keeps the
        graph to the values (``LatentQuantizer.sample``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample_prior: n must be an int >= 0, got {n!r}")
        return self.quantizer.sample(n, generator=generator, differentiable=differentiable)

    def prior_traversal_values(self, steps: int) -> list[torch.Tensor]:
        """Per latent, every one of its codebook values in ascending order (``steps`` does not apply)."""
        values = self.quantizer.sorted_codebook().detach()
        return [values[j, :size].clone() for j, size in enumerate(self.quantizer.num_values)]

    def traversal_values(self, latents: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Per latent, every one of its codebook values in ascending order (``steps`` does not apply)."""
        return self.prior_traversal_values(steps)

    def generator_modules(self) -> list[nn.Module]:
        return [self.decoder, self.quantizer]

    def codebook_parameters(self) -> list[nn.Parameter]:
        return list(self.quantizer.codebook_parameters())
