"""genlab's latent diffusion: a first-stage autoencoder, then diffusion on its latents.

"Latent Diffusion: best of both" — compress with an autoencoder (VAE-like, but with a very small
KL weight so reconstructions stay sharp), model the latents with diffusion, decode.

This module stays light (no torch at import); the networks load on first use.
"""

from __future__ import annotations

from pathlib import Path

import genlab
from genlab import Capability, Model

WEIGHTS = Path(__file__).parent / "weights"


def _unwrap(network):
    return getattr(network, "module", network)


class LDMAutoencoder(Model):
    model_id = "ldm-autoencoder"
    family = "autoencoder"
    description = (
        "The latent diffusion model's first stage: a KL- (or VQ-) regularized autoencoder that turns a "
        "28x28 digit into a 4x8x8 latent and back, trained for reconstruction with a tiny KL weight."
    )
    capabilities = frozenset({Capability.ENCODE, Capability.DECODE, Capability.RECONSTRUCT})
    default_weights = WEIGHTS / "ldm-autoencoder-mnist-5k"

    @classmethod
    def network_class(cls):
        from .first_stage import FirstStage

        return FirstStage

    def training_loss(self, network, batch, generator=None):
        from genlab.datasets import to_unit

        terms = network(to_unit(batch["images"]), generator=generator)
        return terms["loss"], {"recon_l1": terms["recon"], "reg": terms["reg"]}

    def encode(self, images):
        """Posterior means of q(z|x), [N, 4, 8, 8], for images in [0, 1]."""
        import torch

        with torch.inference_mode():
            return self.network.posterior(images.float())[0]

    def decode(self, latents):
        import torch

        with torch.inference_mode():
            return self.network.decode(latents)

    def reconstruct(self, images):
        return self.decode(self.encode(images))

    def reconstruction_metrics(self, images) -> dict:
        """MSE, PSNR and SSIM of reconstructions of images in [0, 1]."""
        from .first_stage import reconstruction_metrics

        return reconstruction_metrics(images, self.reconstruct(images))


@genlab.hookimpl
def register_models(register):
    register(LDMAutoencoder)
