"""The VAE network and its math: ELBO with the reparameterization trick, IWAE bound, per-dimension KL.

All log-likelihoods are in nats and summed over pixels, per image. Inputs are floats in [0, 1]:
dequantized pixels for the density decoders, x / 255 for Bernoulli (intensities as probabilities)
and for the decoders made for 8-bit data, which give every one of the 256 values its exact
probability (``DISCRETE``).
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.nn import functional as F

from genlab.runtime import rand, randn  # CPU generators, then moved: a seed means the same on every device

from . import distributions as D

LIKELIHOODS = ("gaussian", "bernoulli", "continuous-bernoulli", "discretized-logistic", "categorical")
DISCRETE = ("discretized-logistic", "categorical")  # probabilities of 8-bit values, not densities
LOG_2PI = math.log(2 * math.pi)


class VAENetwork(ModelMixin, ConfigMixin):
    """Convolutional VAE with a vector latent.

    Args:
        image_size (int, default 28): height and width of the images, divisible by 4.
        in_channels (int, default 1): image channels.
        latent_dim (int, default 16): dimensions of z.
        channels (tuple, default (32, 64)): conv widths of the two stride-2 stages.
        hidden (int, default 256): width of the fully connected layer on each side of z.
        likelihood (str, default "gaussian"): decoder p(x|z): "gaussian" (mean plus one learned
            scale), "bernoulli" (classic: intensities as probabilities, trained with binary cross-
            entropy), "continuous-bernoulli" (the Bernoulli normalised into a density on [0, 1]),
            or, made for 8-bit data, "discretized-logistic" (a mixture of ``components``
            discretized logistics per pixel, as PixelCNN++) or "categorical" (256-way softmax per
            pixel).
        beta (float, default 1.0): weight of the KL term in the training objective.
        components (int, default 1): mixture components of the discretized-logistic decoder.
    """

    @register_to_config
    def __init__(self, image_size: int = 28, in_channels: int = 1, latent_dim: int = 16,
                 channels: tuple = (32, 64), hidden: int = 256, likelihood: str = "gaussian",
                 beta: float = 1.0, components: int = 1):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
        if components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        # decoder outputs per image channel: one logit or mean; 3 per mixture component; 256 logits
        outputs = {"discretized-logistic": 3 * components, "categorical": 256}.get(likelihood, 1)
        c1, c2 = channels
        side = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c1, c2, 4, 2, 1), nn.SiLU(),
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.SiLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, c2 * side * side), nn.SiLU(),
            nn.Unflatten(1, (c2, side, side)),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(c1, in_channels * outputs, 4, 2, 1),
        )
        # one learned scale for the Gaussian decoder ("sigma-VAE"): the data sets the recon/KL balance
        self.log_sigma = nn.Parameter(torch.tensor(math.log(0.1)))

    @property
    def dims(self) -> int:
        c = self.config
        return c.in_channels * c.image_size * c.image_size

    # ----- q(z|x) and p(x|z) ---------------------------------------------------------------------
    def encode(self, x):
        """Mean and log-variance of q(z|x)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    @property
    def discrete(self) -> bool:
        """Whether p(x|z) gives probabilities of 8-bit values (rather than a density on [0, 1])."""
        return self.config.likelihood in DISCRETE

    def decode(self, z):
        """Decoder output: logits (Bernoulli kinds), pre-sigmoid mean (Gaussian), mixture
        parameters (discretized logistic) or 256 logits per pixel (categorical)."""
        return self.decoder(z)

    def _value_probs(self, out):
        """P(value) of the 256 values of every pixel, [B, C, 256, H, W] (discrete decoders)."""
        if self.config.likelihood == "categorical":
            return D.categorical_probs(out)
        return D.logistic_mixture_probs(out, self.config.components)

    def mean_image(self, out):
        """E[x|z] in [0, 1]."""
        kind = self.config.likelihood
        if kind == "continuous-bernoulli":
            return D.cb_mean(out)
        if kind == "discretized-logistic":
            return D.logistic_mixture_mean(out, self.config.components)
        if kind in DISCRETE:
            return D.expected_level(self._value_probs(out))
        return torch.sigmoid(out)

    def sample_image(self, out, generator=None):
        """A draw from p(x|z), clipped to [0, 1]."""
        kind = self.config.likelihood
        if kind == "gaussian":
            noise = randn(out.shape, generator, device=out.device)
            return (torch.sigmoid(out) + self.log_sigma.exp() * noise).clamp(0, 1)
        if kind == "discretized-logistic":
            return D.logistic_mixture_sample(out, self.config.components, generator)
        if kind in DISCRETE:
            return D.sample_levels(self._value_probs(out), generator)
        probs = rand(out.shape, generator, device=out.device)
        if kind == "bernoulli":
            return (probs < torch.sigmoid(out)).float()
        return D.cb_icdf(probs, out)

    def log_px_given_z(self, x, out, density: bool = False):
        """log p(x|z) per image, summed over pixels (nats).

        Binary cross-entropy on intensities is not a density on continuous pixel values, so
        ``density=True`` (used for likelihoods in bits/dim) evaluates a Bernoulli decoder as the
        continuous Bernoulli with the same logits (Loaiza-Ganem & Cunningham, 2019): a proper
        density, hence a valid bound, for the decoder the model was trained with. The discrete
        decoders return log P of the 8-bit values x * 255 (a probability, not a density).
        """
        kind = self.config.likelihood
        if density and kind == "bernoulli":
            kind = "continuous-bernoulli"
        if density and kind in DISCRETE:
            out = D.wide(out)  # reported probabilities: float64, so that the 784-pixel sums are exact
        if kind == "discretized-logistic":
            per_pixel = D.logistic_mixture_log_prob(D.to_levels(x), out, self.config.components)
        elif kind == "categorical":
            per_pixel = D.categorical_log_prob(D.to_levels(x), out)
        elif kind == "gaussian":
            log_sigma = self.log_sigma
            mean = torch.sigmoid(out)
            per_pixel = -0.5 * ((x - mean) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * LOG_2PI
        elif kind == "bernoulli":
            per_pixel = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            per_pixel = D.cb_log_prob(x, out)
        return per_pixel.flatten(1).sum(1)

    # ----- the bounds ----------------------------------------------------------------------------
    @staticmethod
    def kl_per_dim(mu, logvar):
        """Closed-form KL(q(z|x) || N(0, I)) per latent dimension: [B, latent_dim]."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)

    @staticmethod
    def reparameterize(mu, logvar, generator=None):
        """z = mu + sigma * eps with eps ~ N(0, I): the sample stays differentiable in mu and sigma."""
        eps = randn(mu.shape, generator, device=mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def forward(self, x, generator=None):
        """The training terms; going through forward keeps multi-GPU (DDP) gradient sync intact."""
        return self.elbo(x, generator)

    def elbo(self, x, generator=None, density: bool = False):
        """Per-image ELBO terms (nats): {"elbo", "recon", "kl"}, with one reparameterized z each."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        recon = self.log_px_given_z(x, self.decode(z), density)
        kl = self.kl_per_dim(mu, logvar).sum(1)
        return {"elbo": recon - kl, "recon": recon, "kl": kl}

    def iwae_bound(self, x, k: int, generator=None, chunk: int = 64, density: bool = False):
        """log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x); per image, nats. k=1 is the ELBO."""
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        log_weights = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = randn((n, *mu.shape), generator, device=mu.device)
            z = mu + std * eps  # [n, B, D]
            log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)
            log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            out = self.decode(z.flatten(0, 1))
            log_px = self.log_px_given_z(x.repeat(n, 1, 1, 1), out, density).view(n, -1)
            log_weights.append(log_px + log_prior - log_q)
        log_weights = torch.cat(log_weights, 0)
        return torch.logsumexp(log_weights, 0) - math.log(k)
