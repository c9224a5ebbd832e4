"""genlab's classic VAE: z ~ N(0, I), one decoder pass per image, ELBO = E[log p(x|z)] - beta * KL.

This module stays light (no torch at import) so listing plugins is fast; the network and its math
live in ``network.py`` and load when the model is first used, on the model's device (inputs are moved
there, results come back on the CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

import genlab
from genlab import Capability, Model, Samples, unwrap
from genlab.errors import GenlabError
from genlab.interpolation import interpolate_latents

WEIGHTS = Path(__file__).parent / "weights" / "vae-mnist-5k"


class VAE(Model):
    model_id = "vae"
    family = "vae"
    training_objective = "ELBO: Bernoulli reconstruction log-likelihood minus KL(q(z|x) || N(0, I))"
    description = (
        "Classic variational autoencoder: conv encoder/decoder, 16-d Gaussian latent, trained on the "
        "ELBO with the reparameterization trick; samples in a single decoder pass."
    )
    capabilities = frozenset({
        Capability.SAMPLE, Capability.ENCODE, Capability.DECODE, Capability.RECONSTRUCT,
        Capability.INTERPOLATE, Capability.LIKELIHOOD,
    })
    default_weights = WEIGHTS

    class Options(genlab.Options):
        temperature: float = Field(1.0, ge=0.0, le=3.0, description="Scale of the prior noise: z ~ N(0, t^2 I)")
        output: Literal["mean", "sample"] = Field(
            "mean", description="Show the decoder's mean E[x|z] or a draw from p(x|z)"
        )

    @classmethod
    def network_class(cls):
        from .network import VAENetwork

        return VAENetwork

    # ----- training ------------------------------------------------------------------------------
    def training_loss(self, network, batch, generator=None):
        x = self._inputs(network, batch["images"], generator)
        terms = network(x, generator=generator)
        beta = unwrap(network).config.beta
        dims = unwrap(network).dims
        loss = (beta * terms["kl"] - terms["recon"]).mean() / dims  # nats per dim keeps the lr scale-free
        return loss, {"recon_nats": terms["recon"].mean().detach(), "kl_nats": terms["kl"].mean().detach()}

    @staticmethod
    def _inputs(network, images, generator=None):
        """uint8 pixels -> what the decoder models: dequantized values for densities, x/255 for Bernoulli."""
        from genlab.datasets import dequantize, to_unit

        if unwrap(network).config.likelihood == "bernoulli":
            return to_unit(images)
        return dequantize(images, generator)

    # ----- capabilities --------------------------------------------------------------------------
    def sample(self, count, *, seed=0, options=None) -> Samples:
        import time

        import torch

        opts = self.parse_options(options)
        net = self.network
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same latents on every device
        with torch.inference_mode():
            z = opts.temperature * torch.randn(count, net.config.latent_dim, generator=generator)
            out = net.decode(z.to(self.device))
            images = net.mean_image(out) if opts.output == "mean" else net.sample_image(out, generator)
        return Samples(images=images.cpu(), nfe=1, seconds=time.perf_counter() - start,
                       info={"latents": z, "device": str(self.device)})

    def encode(self, images):
        """Posterior means and log-variances of q(z|x) for float images in [0, 1]."""
        import torch

        with torch.inference_mode():
            mu, logvar = self.network.encode(images.float().to(self.device))
        return mu.cpu(), logvar.cpu()

    def latent_shape(self):
        return (self.network.config.latent_dim,)

    def image_shape(self):
        c = self.network.config
        return (c.in_channels, c.image_size, c.image_size)

    def posterior(self, images):
        return self.encode(images)

    def decode(self, z):
        import torch

        with torch.inference_mode():
            return self.network.mean_image(self.network.decode(z.to(self.device))).cpu()

    def reconstruct(self, images):
        """Decoder mean at the posterior mean: x -> mu(x) -> E[x|z=mu]."""
        mu, _ = self.encode(images)
        return self.decode(mu)

    def interpolate(self, start, end, steps: int = 8, method: str = "slerp"):
        """Images along a path between the latents of two images, decoded in one pass."""
        import torch

        if steps < 2:
            raise GenlabError(f"interpolation needs at least 2 steps, got {steps}")
        mu, _ = self.encode(torch.stack([start, end]))
        path = interpolate_latents(mu[0], mu[1], steps, method)
        return self.decode(path)

    def bits_per_dim(self, images_uint8, *, k: int = 64, seed: int = 0, batch_size: int = 100) -> dict:
        """Upper bounds on the NLL of 8-bit images, in bits/dim, on dequantized pixels.

        Returns the importance-sampled (IWAE, k samples) bound and the ELBO (k = 1) bound. A
        Bernoulli decoder is evaluated as the continuous Bernoulli with the same logits (see
        ``VAENetwork.log_px_given_z``), so the number is a bound for every decoder kind.
        """
        import math

        import torch

        from genlab.datasets import dequantize

        net = self.network
        if k < 1:
            raise GenlabError(f"k must be at least 1, got {k}")
        generator = torch.Generator().manual_seed(seed)
        iwae, elbo = [], []
        with torch.inference_mode():
            for batch in images_uint8.split(batch_size):
                y = dequantize(batch, generator).to(self.device)
                iwae.append(net.iwae_bound(y, k, generator, density=True).cpu())
                elbo.append(net.elbo(y, generator, density=True)["elbo"].cpu())
        dims = net.dims
        # -log2 P(x) <= -log2 p(y) + 8 D for y = (x + u) / 256
        to_bpd = lambda log_p: float((-torch.cat(log_p).mean() / dims) / math.log(2) + 8.0)  # noqa: E731
        method = f"IWAE bound, k={k}" + (
            ", Bernoulli decoder normalised as a continuous Bernoulli" if net.config.likelihood == "bernoulli" else ""
        )
        return {"bpd": to_bpd(iwae), "method": method, "elbo_bpd": to_bpd(elbo),
                "k": k, "images": len(images_uint8)}

    def latent_diagnostics(self, images, threshold: float = 0.01) -> dict:
        """Per-dimension KL (nats, averaged over images) and active units.

        A unit is active when the posterior mean moves with the data: Cov_x(E_q[z_d]) > threshold
        (Burda et al., 2016). Inactive units are the symptom of posterior collapse.
        """
        mu, logvar = self.encode(images)
        kl = self.network.kl_per_dim(mu, logvar).mean(0)
        activity = mu.var(0)
        return {
            "kl_per_dim": [round(float(v), 4) for v in kl],
            "activity": [round(float(v), 4) for v in activity],
            "active_units": int((activity > threshold).sum()),
            "latent_dim": int(mu.shape[1]),
        }



@genlab.hookimpl
def register_models(register):
    register(VAE)
