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
from genlab import Capability, Model, Samples, runtime, unwrap
from genlab.errors import GenlabError
from genlab.interpolation import interpolate_latents

WEIGHTS = Path(__file__).parent / "weights" / "vae-mnist-5k"
# the bundled sets, by folder name: vae-mnist-5k (Bernoulli decoder, the default) and
# vae-dlogistic-mnist-5k (mixture of discretized logistics: exact probabilities of 8-bit values)
BUNDLED = WEIGHTS.parent


class VAE(Model):
    model_id = "vae"
    family = "vae"
    training_objective = "ELBO: reconstruction log-likelihood under the decoder minus KL(q(z|x) || N(0, I))"
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
        """uint8 pixels -> what the decoder models: dequantized values for densities, x/255 for
        Bernoulli and for the 8-bit decoders (which read the values back as round(255 x))."""
        from genlab.datasets import dequantize, to_unit

        net = unwrap(network)
        if net.config.likelihood == "bernoulli" or net.discrete:
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
        """Upper bounds on -log2 P(x) of 8-bit images, in bits/dim: the importance-sampled (IWAE,
        k samples) bound and the ELBO (k = 1), with the standard error of the IWAE bound over images.

        The 8-bit decoders (discretized logistic, categorical) give the exact probability of every
        8-bit value, so the bound is on the discrete images themselves. The density decoders are
        evaluated on dequantized pixels y = (x + u) / 256, and -log2 P(x) <= -log2 p(y) + 8 per
        dimension; a Bernoulli decoder is evaluated as the continuous Bernoulli with the same logits
        (see ``VAENetwork.log_px_given_z``), so the number is a bound for every decoder kind.
        """
        import math

        import torch

        from genlab.datasets import dequantize, to_unit

        net = self.network
        if k < 1:
            raise GenlabError(f"k must be at least 1, got {k}")
        generator = torch.Generator().manual_seed(seed)
        iwae, elbo = [], []
        with torch.inference_mode(), runtime.exact_fp32():  # a published bound: float32, not TF32, on a GPU
            for batch in images_uint8.split(batch_size):
                y = (to_unit(batch) if net.discrete else dequantize(batch, generator)).to(self.device)
                iwae.append(net.iwae_bound(y, k, generator, density=True).cpu())
                elbo.append(net.elbo(y, generator, density=True)["elbo"].cpu())
        dims = net.dims
        offset = 0.0 if net.discrete else 8.0  # -log2 P(x) <= -log2 p(y) + 8 D for y = (x + u) / 256
        per_image = lambda log_p: -torch.cat(log_p).double() / dims / math.log(2) + offset  # noqa: E731
        bpd = per_image(iwae)
        kind = net.config.likelihood
        if kind == "discretized-logistic":
            decoder = (f"mixture of {net.config.components} discretized logistics" if net.config.components > 1
                       else "discretized logistic")
            convention = f"exact probabilities of the 8-bit values ({decoder} decoder, no dequantization)"
        elif kind == "categorical":
            convention = "exact probabilities of the 8-bit values (256-way categorical decoder, no dequantization)"
        elif kind == "bernoulli":
            convention = ("dequantized pixels (x + u) / 256, Bernoulli decoder normalised as a continuous "
                          "Bernoulli (exact normaliser)")
        else:
            convention = f"dequantized pixels (x + u) / 256, {kind} decoder"
        return {"bpd": float(bpd.mean()), "bpd_stderr": float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
                "method": f"IWAE bound, k={k}; {convention}", "convention": "discrete" if net.discrete else "dequantized",
                "elbo_bpd": float(per_image(elbo).mean()), "k": k, "images": len(images_uint8),
                "runtime": {"device": str(self.device), "backend": "torch", "precision": "fp32"}}

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
