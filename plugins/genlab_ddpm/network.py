"""The DDPM network: a diffusers ``UNet2DModel`` that also records its noise schedule.

Subclassing keeps it a ``UNet2DModel`` (so diffusers' stock ``DDIMPipeline`` can run the very same
weights, which the benchmark does) while the schedule it was trained with (T, beta schedule,
prediction type) travels in the same config.json.
"""

from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.configuration_utils import register_to_config

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}


class Denoiser(torch.nn.Module):
    """The network as a function of tensors only, (x_t [B, C, H, W], integer t [B]) -> its output:
    what ``genlab.runtime`` exports and runs (a diffusers UNet returns an output object instead)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, sample, timestep):
        return self.network(sample, timestep).sample


class DenoisingUNet(UNet2DModel):
    """``UNet2DModel`` plus the noise schedule it was trained for.

    Args:
        sample_size (int, default 28), in_channels / out_channels (int, default 1): image shape.
        block_out_channels (tuple, default (32, 64, 64)): widths per resolution (28, 14, 7).
        layers_per_block (int, default 1): resnets per block.
        down_block_types / up_block_types: diffusers block names; attention only at 7x7 by default.
        norm_num_groups (int, default 8): group-norm groups.
        num_train_timesteps (int, default 1000): T.
        beta_schedule (str, default "linear"): "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal).
        prediction_type (str, default "epsilon"): what the network predicts, "epsilon" or "v".
        min_snr_gamma (float, optional): weight each step's loss by min(SNR_t, gamma) / SNR_t (epsilon)
            or / (SNR_t + 1) (v), the min-SNR weighting of Hang et al. 2023; None: the plain mean.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        in_channels: int = 1,
        out_channels: int = 1,
        block_out_channels: tuple = (32, 64, 64),
        layers_per_block: int = 1,
        down_block_types: tuple = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim: int = 16,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        min_snr_gamma: float | None = None,
    ):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            num_train_timesteps=num_train_timesteps,
        )

    # ----- the schedule --------------------------------------------------------------------------
    def schedule_kwargs(self) -> dict:
        c = self.config
        # Ho et al.'s linear betas (1e-4 to 0.02) are tuned for T = 1000; scale them for other T so
        # that x_T is still pure noise (as in Nichol & Dhariwal's code)
        scale = 1000 / c.num_train_timesteps
        return {
            "num_train_timesteps": c.num_train_timesteps,
            "beta_schedule": BETA_SCHEDULES[c.beta_schedule],
            "beta_start": 1e-4 * scale,
            "beta_end": min(0.02 * scale, 0.999),
            "prediction_type": PREDICTION_TYPES[c.prediction_type],
        }

    def scheduler(self, kind: str = "ddpm", **kwargs):
        """A fresh diffusers scheduler of ``kind`` (ddpm, ddim, dpm-solver++, ddim-inverse) for this schedule."""
        base = self.schedule_kwargs()
        if kind == "ddpm":
            return DDPMScheduler(**base, variance_type="fixed_small", clip_sample=True, **kwargs)
        if kind == "ddim":
            return DDIMScheduler(**base, clip_sample=True, set_alpha_to_one=True, **kwargs)
        if kind == "ddim-inverse":
            return DDIMInverseScheduler(**base, clip_sample=False, set_alpha_to_one=True, **kwargs)
        if kind == "dpm-solver++":
            # the cosine schedule's alpha-bar reaches ~0 at t = T (log-SNR -inf), where x0 = (x - sigma eps) /
            # alpha divides by ~0: start the solver where lambda = log(alpha / sigma) = -5.1, as for the
            # linear schedule, whose alpha-bar_T = 4e-5 puts it there
            clip = {"lambda_min_clipped": -5.1} if self.config.beta_schedule == "cosine" else {}
            # x̂0 kept in the data range [-1, 1], as DDIM's clip_sample does (dynamic thresholding with
            # sample_max_value 1 is a plain clip): at high noise an epsilon model's x̂0 = (x - sigma eps) / alpha
            # magnifies its error ~1/alpha, and an unclipped x̂0 there can leave a sample as noise
            return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", solver_order=2,
                                               thresholding=True, sample_max_value=1.0, **clip, **kwargs)
        raise ValueError(f"unknown scheduler {kind!r}")

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar_t for t = 0..T-1 (float64), from the same scheduler the samplers use."""
        return self.scheduler("ddpm").alphas_cumprod.double()
