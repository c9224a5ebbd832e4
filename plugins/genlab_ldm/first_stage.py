"""The LDM's first stage: an autoencoder that compresses a 28x28 digit to a small spatial latent.

KL-regularized (diffusers ``AutoencoderKL``) with a *very small* KL weight, as the LDM paper does,
so reconstructions stay sharp; or VQ-regularized (diffusers ``VQModel``). Digits are padded to
32x32 so that two stride-2 stages give an 8x8 latent (4x8x8 = 256 numbers for 784 pixels).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin, VQModel
from diffusers.configuration_utils import register_to_config
from torch.nn import functional as F

from genlab.runtime import randn  # CPU generators, then moved: a seed means the same on every device

REGULARIZERS = ("kl", "vq")


class FirstStage(ModelMixin, ConfigMixin):
    """Autoencoder for the latent diffusion model.

    Args:
        regularizer (str, default "kl"): "kl" (AutoencoderKL) or "vq" (VQModel).
        image_size (int, default 28): digits are padded from this to ``padded_size``.
        padded_size (int, default 32): the size the autoencoder sees.
        in_channels (int, default 1): image channels.
        block_out_channels (tuple, default (32, 64, 64)): one stage per entry; all but the last
            halve the resolution (32 -> 16 -> 8).
        latent_channels (int, default 4): channels of z.
        kl_weight (float, default 1e-6): weight of KL(q(z|x) || N(0, I)) in the loss ("kl" only).
        num_vq_embeddings (int, default 256): codebook size ("vq" only).
    """

    @register_to_config
    def __init__(self, regularizer: str = "kl", image_size: int = 28, padded_size: int = 32, in_channels: int = 1,
                 block_out_channels: tuple = (32, 64, 64), latent_channels: int = 4, kl_weight: float = 1e-6,
                 num_vq_embeddings: int = 256, norm_num_groups: int = 16):
        super().__init__()
        if regularizer not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {regularizer!r}; valid: {', '.join(REGULARIZERS)}")
        common = dict(
            in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels), layers_per_block=1, norm_num_groups=norm_num_groups,
            sample_size=padded_size,
        )
        if regularizer == "kl":
            self.autoencoder = AutoencoderKL(**common)
        else:
            self.autoencoder = VQModel(**common, num_vq_embeddings=num_vq_embeddings, vq_embed_dim=latent_channels)

    @property
    def pad(self) -> int:
        return (self.config.padded_size - self.config.image_size) // 2

    def _to_model(self, images):
        """[0, 1] images -> padded [-1, 1]."""
        return F.pad(images * 2 - 1, (self.pad,) * 4, value=-1.0)

    def _from_model(self, x):
        p = self.pad
        x = x[..., p : x.shape[-2] - p, p : x.shape[-1] - p] if p else x
        return ((x + 1) / 2).clamp(0, 1)

    def posterior(self, images):
        """(mean, std) of q(z|x) for images in [0, 1]; for VQ, the pre-quantization latent and std 0."""
        x = self._to_model(images)
        if self.config.regularizer == "kl":
            dist = self.autoencoder.encode(x).latent_dist
            return dist.mean, dist.std
        z = self.autoencoder.encode(x).latents
        return z, torch.zeros_like(z)

    def sample_latent(self, images, generator=None):
        """z = E_mu(x) + E_sigma(x) * eps, a draw from q(z|x): what the LDM diffuses."""
        mean, std = self.posterior(images)
        return mean + std * randn(mean.shape, generator, device=mean.device)

    def decode(self, z):
        """Latents -> images in [0, 1] (VQ latents are quantized first)."""
        if self.config.regularizer == "kl":
            return self._from_model(self.autoencoder.decode(z).sample)
        return self._from_model(self.autoencoder.decode(z, force_not_quantize=False).sample)

    @property
    def latent_size(self) -> int:
        """The latent's side: every stage but the last halves the padded image."""
        return self.config.padded_size // 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, images, generator=None):
        """Training terms: {"loss", "recon", "reg"} for images in [0, 1]."""
        x = self._to_model(images)
        if self.config.regularizer == "kl":
            dist = self.autoencoder.encode(x).latent_dist
            z = dist.mean + dist.std * randn(dist.mean.shape, generator, device=x.device)
            recon = self.autoencoder.decode(z).sample
            reg = dist.kl().mean() * self.config.kl_weight
        else:
            h = self.autoencoder.encode(x).latents
            quantized, commit_loss, _ = self.autoencoder.quantize(h)
            recon = self.autoencoder.decode(quantized, force_not_quantize=True).sample
            reg = commit_loss.mean()
        # L1 on the [-1, 1] image keeps edges sharper than MSE
        rec = (recon - x).abs().mean()
        return {"loss": rec + reg, "recon": rec.detach(), "reg": reg.detach()}


class Decoder(torch.nn.Module):
    """``FirstStage.decode`` as a module of one tensor in and one out, the form ``genlab.runtime`` runs."""

    def __init__(self, first_stage: FirstStage):
        super().__init__()
        self.first_stage = first_stage

    def forward(self, latents):
        return self.first_stage.decode(latents)
