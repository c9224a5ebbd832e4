"""The flow network: a diffusers ``UNet2DModel`` that predicts the velocity of a straight-line flow.

Subclassing keeps it a ``UNet2DModel`` (the same building block as the DDPM's) while what the flow
needs travels in the same config.json: how training draws t, and, for a flow on an autoencoder's
latents, which registered model encodes and decodes them and the scale that gives the latents unit
variance. The autoencoder's weights are not copied in: the flow asks genlab's registry for it.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config

# t in [0, 1] is fed to the UNet's sinusoidal time embedding as t * TIME_SCALE, the range of the
# integer timesteps that embedding was designed for
TIME_SCALE = 1000.0
TIME_SAMPLING = ("uniform", "logit-normal")


class VelocityUNet(UNet2DModel):
    """``UNet2DModel`` predicting v(x_t, t) = eps - x_0 for x_t = (1 - t) x_0 + t eps.

    Args:
        sample_size (int, default 28), in_channels (int, default 1): shape of what the flow moves
            (the image, or the autoencoder's latent); the output has the input's channels.
        block_out_channels (tuple, default (16, 32, 64)): widths per resolution.
        layers_per_block (int, default 1): resnets per block.
        down_block_types / up_block_types: diffusers block names; attention at the lowest resolution.
        attention_head_dim (int, default 8), norm_num_groups (int, default 8).
        time_sampling (str, default "uniform"): how training draws t: "uniform" on [0, 1] or
            "logit-normal" (sigmoid of N(0, 1), Esser et al. 2024: more weight on mid-range t).
        first_stage_model (str, optional): id of a registered model with encode and decode whose latents
            the flow moves; None: the flow moves pixels, scaled to [-1, 1].
        first_stage_weights (str, optional): that model's weights (None: its bundled ones).
        first_stage_digest (str, optional): sha256 of those weights when the flow was made: the flow
            refuses an autoencoder whose weights changed since.
        scale_factor (float, default 1.0): multiplies latents so they have unit variance on the data.
        reflow (dict, optional): for a rectified student, how its teacher's pairs were made.
        num_classes (int, optional): a class-conditional flow: diffusers' class embedding (one vector
            per class, added to the time embedding), the class given as ``labels``; None: unconditional.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        in_channels: int = 1,
        block_out_channels: tuple = (16, 32, 64),
        layers_per_block: int = 1,
        down_block_types: tuple = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim: int = 8,
        norm_num_groups: int = 8,
        time_sampling: str = "uniform",
        first_stage_model: str | None = None,
        first_stage_weights: str | None = None,
        first_stage_digest: str | None = None,
        scale_factor: float = 1.0,
        reflow: dict | None = None,
        num_classes: int | None = None,
    ):
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; valid: {', '.join(TIME_SAMPLING)}")
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}")
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups, num_class_embeds=num_classes,
        )

    def velocity(self, x, t, labels=None):
        """v(x, t) for a batch x and times t (a float tensor [B] in [0, 1]); ``labels`` (int [B]) for a
        class-conditional flow."""
        return self(x, t * TIME_SCALE, class_labels=labels).sample


class Velocity(torch.nn.Module):
    """v(x, t) of a flow's network as a module of tensors in, one tensor out: what genlab.runtime
    runs and exports (t a float tensor [B] in [0, 1]; then labels, int64 [B], for a class-conditional
    flow)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, sample, t, labels=None):
        return self.network.velocity(sample, t) if labels is None else self.network.velocity(sample, t, labels)
