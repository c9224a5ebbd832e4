"""genlab's pixel-space DDPM: forward noising in closed form, reverse denoising with diffusers schedulers.

Images live in [-1, 1] inside this module (x = 2 * pixel - 1) and in [0, 1] at its edges. The
network is a diffusers ``UNet2DModel`` (see ``network.py``); samplers are diffusers' DDPM, DDIM and
DPM-Solver++ schedulers driven by one loop of ours, which records the trajectory. The network runs on
the model's device through ``genlab.runtime`` (options ``backend`` and ``precision``): plain PyTorch,
or on the CPU the same network exported to ONNX Runtime or OpenVINO, whichever a probe finds fastest.

This module imports no torch at import time, so listing plugins stays fast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

import genlab
from genlab import Capability, Model, Samples, runtime, unwrap
from genlab.errors import GenlabError
from genlab.schedules import set_timesteps

WEIGHTS = Path(__file__).parent / "weights" / "ddpm-mnist-5k"
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
# the likelihood estimator's budget per image (see DDPM.bits_per_dim): the first EXACT_TERMS terms
# of the bound exactly, the rest from STRATA stratified draws; 100 network calls, as many as the old
# evenly spaced estimator. On the bundled model (200 held-out digits, all 1000 terms) t = 1 holds
# 34% of the bound, t <= 10 77%, t <= 50 89%; drawing t from the measured terms, 50 exact + 50
# strata moved the 200-image mean by 0.001 bits/dim (sd), 1 exact + 99 strata by 0.10 (the previous
# linear-epsilon model: 53%, 77%, 90%; 0.0008 and 0.03)
EXACT_TERMS = 50
STRATA = 50
# what runs the network in the likelihood bound, whatever the sampler's backend (see DDPM.runner): the
# eval's pinned PyTorch fp32 (IEEE float32 on every device), in the channels-last memory of its
# published numbers
BOUND_RUNTIME = runtime.Choice("torch", "fp32", "channels_last")



class DDPM(Model):
    model_id = "ddpm"
    family = "diffusion"
    training_objective = "simple MSE between the added noise and the predicted noise (or v), t uniform"
    description = (
        "Pixel-space denoising diffusion (DDPM): a UNet learns to predict the noise added by a fixed "
        "forward process; sampling runs the reverse process from pure noise in many small steps."
    )
    capabilities = frozenset({
        Capability.SAMPLE, Capability.TRAJECTORY, Capability.FORWARD_PROCESS, Capability.ENCODE,
        Capability.DECODE, Capability.RECONSTRUCT, Capability.INTERPOLATE, Capability.LIKELIHOOD,
        Capability.IMAGE_TO_IMAGE,
    })
    default_weights = WEIGHTS

    class Options(genlab.Options):
        # default: the setting with the bundled model's best FID in evals/reports/bundled
        sampler: Literal["ddpm", "ddim", "dpm-solver++"] = Field(
            "dpm-solver++", description="ddpm: ancestral; ddim: deterministic at eta 0; dpm-solver++: 2nd-order ODE solver"
        )
        steps: int = Field(20, ge=1, le=1000, description="Denoising steps = network evaluations (NFE)")
        eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM noise: 0 deterministic, 1 like DDPM")
        backend: runtime.Backend = runtime.backend_field()
        precision: runtime.Precision = runtime.precision_field()

    # precision=auto keeps fp32: on the bundled DDPM (DPM-Solver++ 20, N = 1,000, seeds 0-2,
    # benchmarks/sampler_fid.py) OpenVINO bf16 gave FID 26.02 ± 1.47 against 25.82 ± 1.35 in fp32,
    # within seed noise but higher on every seed, and the published numbers are fp32's
    bf16_harmless = False

    @classmethod
    def network_class(cls):
        from .network import DenoisingUNet

        return DenoisingUNet

    def load_network(self, weights):
        from diffusers.utils import logging as diffusers_logging

        # config.json also holds UNet2DModel's own settings, which this subclass passes on by
        # default; diffusers warns that they "will be ignored" on every load, which is noise here
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            return super().load_network(weights)
        finally:
            diffusers_logging.set_verbosity(level)

    def runner(self, backend: str = "auto", precision: str = "auto", mode: str | None = None):
        """The denoiser as ``genlab.runtime`` runs it: ``runner(x_t, t)`` with t an integer tensor [B].

        Memory format is the probe's to choose (channels-last was measured slower for the bundled UNet).
        The likelihood bound pins PyTorch fp32 channels-last (``mode``): its published numbers were
        computed that way, and the two formats round float32 differently (~1e-6)."""
        import torch

        from .network import Denoiser

        net = self.network
        if getattr(self, "_denoiser", (None, None))[0] is not net:
            self._denoiser = (net, Denoiser(net).eval())
        c = net.config

        def example(batch):
            return (torch.zeros(batch, c.in_channels, c.sample_size, c.sample_size),
                    torch.full((batch,), c.num_train_timesteps // 2, dtype=torch.long))

        def probe_inputs(batch, generator):
            # what sampling feeds the network: x_t has unit variance at every t, and t spans the schedule
            return (torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=generator),
                    torch.randint(0, c.num_train_timesteps, (batch,), generator=generator))

        return runtime.network_runner(self, f"ddpm-{c.sample_size}", self._denoiser[1], example, ["sample", "timestep"],
                                      device=self.device, backend=backend, precision=precision,
                                      bf16_harmless=self.bf16_harmless, mode=mode, probe_inputs=probe_inputs)

    def _times(self, t, count: int):
        import torch

        return torch.full((count,), int(t), dtype=torch.long, device=self.device)

    # ----- schedule helpers ----------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.network.config.num_train_timesteps

    def _alpha_bar(self, network=None):
        net = unwrap(network if network is not None else self.network)
        cache = getattr(net, "_genlab_alpha_bar", None)
        if cache is None:
            cache = net.alphas_cumprod.float()
            net._genlab_alpha_bar = cache
        return cache

    @staticmethod
    def _x0_and_eps(out, x_t, alpha_bar_t, prediction_type: str):
        """The network output as (predicted x_0, predicted noise), for either parameterization."""
        a = alpha_bar_t.sqrt().view(-1, 1, 1, 1)
        s = (1 - alpha_bar_t).sqrt().view(-1, 1, 1, 1)
        if prediction_type == "v":
            return a * x_t - s * out, s * x_t + a * out
        return (x_t - s * out) / a, out

    def check_options(self, options) -> "DDPM.Options":
        opts = self.parse_options(options)
        T = self.num_train_timesteps
        if opts.steps > T:
            raise GenlabError(f"steps={opts.steps} is more than the model's T={T}: choose 1 to {T}")
        return opts

    # ----- training ------------------------------------------------------------------------------
    def training_loss(self, network, batch, generator=None):
        import torch
        from torch.nn import functional as F

        from genlab.datasets import to_unit

        net = unwrap(network)
        x0 = to_unit(batch["images"]) * 2 - 1
        device = x0.device
        T = net.config.num_train_timesteps
        t = torch.randint(0, T, (len(x0),), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        alpha_bar = self._alpha_bar(net).to(device)[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        target = noise if net.config.prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        out = network(x_t, t).sample
        per_image = F.mse_loss(out, target, reduction="none").flatten(1).mean(1)
        gamma = getattr(net.config, "min_snr_gamma", None)
        if gamma is None:
            return per_image.mean(), {}
        # min-SNR-gamma (Hang et al. 2023): the easy, low-noise steps stop dominating the gradient
        snr = (alpha_bar / (1 - alpha_bar)).flatten()
        weight = snr.clamp(max=gamma) / (snr if net.config.prediction_type == "epsilon" else snr + 1)
        return (weight * per_image).mean(), {"unweighted": per_image.mean().detach()}

    # ----- forward process -----------------------------------------------------------------------
    def schedule_curves(self) -> dict:
        """alpha-bar_t and SNR_t = alpha-bar_t / (1 - alpha-bar_t) for t = 1..T."""
        ab = self._alpha_bar().double()
        return {"t": list(range(1, len(ab) + 1)), "alpha_bar": ab.tolist(), "snr": (ab / (1 - ab)).tolist()}

    def noise(self, images, t: int, *, seed: int = 0):
        """A draw from q(x_t | x_0) in closed form: sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps; images in [0, 1]."""
        import torch

        T = self.num_train_timesteps
        if not 1 <= t <= T:
            raise GenlabError(f"t={t} is outside 1..{T}")
        ab = self._alpha_bar()[t - 1]
        eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        return ((ab.sqrt() * (images * 2 - 1) + (1 - ab).sqrt() * eps) + 1) / 2

    # ----- reverse process -----------------------------------------------------------------------
    def trajectory(self, count: int = 1, *, seed: int = 0, options=None, x_T=None, start_index: int = 0,
                   record_every: int = 1):
        """Run the reverse process, yielding a dict per recorded step:
        ``{"step", "steps", "t", "x_t", "x0_hat"}`` (images in [0, 1]); the last one is the sample."""
        import torch

        opts = self.check_options(options)
        net = self.network
        c = net.config
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
        scheduler = net.scheduler(opts.sampler)
        set_timesteps(scheduler, opts.steps, opts.sampler)  # before the runner: a refused grid costs no probe
        run = self.runner(opts.backend, opts.precision)
        device = self.device
        timesteps = scheduler.timesteps[start_index:]
        if x_T is None:
            x = runtime.randn((count, c.in_channels, c.sample_size, c.sample_size), generator, device=device)
            x = x * scheduler.init_noise_sigma
        else:
            x = x_T.float().to(device)
        alpha_bar = self._alpha_bar().to(device)
        step_kwargs = {"eta": opts.eta} if opts.sampler == "ddim" else {}
        if opts.sampler in ("ddpm", "ddim"):
            step_kwargs["generator"] = generator
        with torch.inference_mode():
            for i, t in enumerate(timesteps):
                out = run(scheduler.scale_model_input(x, t), self._times(t, len(x)))
                x_prev = scheduler.step(out, t, x, **step_kwargs).prev_sample
                last = i == len(timesteps) - 1
                if last or (record_every and i % record_every == 0):
                    x0_hat, _ = self._x0_and_eps(out, x, alpha_bar[int(t)].expand(len(x)), c.prediction_type)
                    yield {"step": i + 1, "steps": len(timesteps), "t": int(t) + 1,
                           "x_t": ((x_prev.clamp(-1, 1) + 1) / 2).cpu(), "x0_hat": ((x0_hat.clamp(-1, 1) + 1) / 2).cpu()}
                x = x_prev

    def sample(self, count, *, seed=0, options=None) -> Samples:
        opts = self.check_options(options)
        start = time.perf_counter()
        final = None
        for final in self.trajectory(count, seed=seed, options=opts, record_every=0):
            pass
        return Samples(images=final["x_t"], nfe=opts.steps, seconds=time.perf_counter() - start,
                       info={"sampler": opts.sampler, **runtime.describe_choice(self.runner(opts.backend, opts.precision),
                                                                               self.device)})

    # ----- DDIM inversion: the diffusion model's encoder -----------------------------------------
    def _ddim_timesteps(self, steps: int):
        T = self.num_train_timesteps
        if not 1 <= steps <= T:
            raise GenlabError(f"steps={steps} must be between 1 and T={T}")
        import torch

        return torch.linspace(0, T - 1, steps).round().long().unique()  # ascending

    def _ddim_step(self, x, t: int, from_bar, to_bar, eps_at=None):
        """One deterministic DDIM move of x from noise level from_bar to to_bar, using the network at t.

        Encoding and decoding take the same step in opposite directions, so each undoes the other
        when the network is evaluated at the same point (``eps_at``); nothing is clipped.
        """
        net = self.network
        probe = x if eps_at is None else eps_at  # where the network is evaluated
        # fp32 always: inversion undoes decoding only when both evaluate the network alike
        out = self.runner(precision="fp32")(probe, self._times(t, len(x)))
        _, eps = self._x0_and_eps(out, probe, self._alpha_bar().to(x.device)[t].expand(len(x)), net.config.prediction_type)
        x0_hat = (x - (1 - from_bar).sqrt() * eps) / from_bar.sqrt()
        return to_bar.sqrt() * x0_hat + (1 - to_bar).sqrt() * eps

    def latent_shape(self):
        c = self.network.config  # x_T has the image's shape: diffusion does not compress
        return (c.in_channels, c.sample_size, c.sample_size)

    def image_shape(self):
        return self.latent_shape()

    def encode(self, images, steps: int = 50, refine: int = 2):
        """Deterministic DDIM inversion: images in [0, 1] to the noise x_T that DDIM decodes back to them.

        Plain inversion evaluates the network at the point it leaves (eps(x_s, t) stands in for
        eps(x_t, t)); ``refine`` fixed-point iterations per step re-evaluate it at the point it
        arrives at, which makes decode(encode(x)) close to exact (each costs one more NFE per step).
        """
        import torch

        ab = self._alpha_bar().to(self.device)
        x = images.float().to(self.device) * 2 - 1
        level = torch.tensor(1.0, device=self.device)
        with torch.inference_mode():
            for t in self._ddim_timesteps(steps).tolist():
                target = self._ddim_step(x, t, level, ab[t])
                for _ in range(refine):
                    # the x_t whose decoding step lands on x: x_t = F(x, eps(x_t, t))
                    target = self._ddim_step(x, t, level, ab[t], eps_at=target)
                x, level = target, ab[t]
        return x.cpu()

    def decode(self, x_T, steps: int = 50):
        """Deterministic DDIM (eta 0) from noise x_T back to images in [0, 1]."""
        import torch

        ab = self._alpha_bar().to(self.device)
        timesteps = self._ddim_timesteps(steps).tolist()[::-1]
        x = x_T.float().to(self.device)
        with torch.inference_mode():
            for i, t in enumerate(timesteps):
                to_bar = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, device=self.device)
                x = self._ddim_step(x, t, ab[t], to_bar)
        return ((x.clamp(-1, 1) + 1) / 2).cpu()

    def reconstruct(self, images, steps: int = 50):
        """Invert to x_T and decode back; the round-trip error measures how faithful inversion is."""
        return self.decode(self.encode(images, steps), steps)

    def interpolate(self, start, end, steps: int = 8, method: str = "slerp", ddim_steps: int = 50):
        """Slerp between the inverted noises of two real images, each point decoded by DDIM."""
        import torch

        from genlab.interpolation import interpolate_latents

        noises = self.encode(torch.stack([start, end]), ddim_steps)
        shape = noises.shape[1:]
        path = interpolate_latents(noises[0].flatten(), noises[1].flatten(), steps, method)
        return self.decode(path.view(steps, *shape), ddim_steps)

    # ----- image to image (SDEdit) ---------------------------------------------------------------
    def edit(self, images, *, strength: float = 0.5, seed: int = 0, options=None):
        """Noise images in [0, 1] to t = strength * T and denoise them back (SDEdit)."""
        import torch

        if not 0 < strength <= 1:
            raise GenlabError(f"strength={strength} must be in (0, 1]")
        opts = self.check_options(options)
        scheduler = self.network.scheduler(opts.sampler)
        set_timesteps(scheduler, opts.steps, opts.sampler)
        t_start = int(round(strength * self.num_train_timesteps)) - 1
        start_index = int((scheduler.timesteps > t_start).sum())
        if start_index >= len(scheduler.timesteps):
            return images
        t = int(scheduler.timesteps[start_index])
        generator = torch.Generator().manual_seed(seed)
        ab = self._alpha_bar()[t]
        noise = torch.randn(images.shape, generator=generator)
        x_t = ab.sqrt() * (images.float().cpu() * 2 - 1) + (1 - ab).sqrt() * noise
        final = None
        for final in self.trajectory(len(images), seed=seed, options=opts, x_T=x_t, start_index=start_index,
                                     record_every=0):
            pass
        return final["x_t"]

    # ----- likelihood ----------------------------------------------------------------------------
    def bits_per_dim(self, images_uint8, *, seed: int = 0, batch_size: int = 100,
                     exact_terms: int = EXACT_TERMS, strata: int = STRATA) -> dict:
        """An unbiased estimate of the variational bound (Ho et al. 2020, eq. 5) in bits/dim.

        The bound is on the discrete 8-bit images themselves (no dequantization): a discretized
        Gaussian decoder gives the probability of each 8-bit value. Per image,

        L = L_T + sum_{t=2..T} L_{t-1} + L_0,  L_T = KL(q(x_T|x_0) || N(0, I)),
        L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)),  L_0 = -log p(x_0|x_1),

        with p's variance fixed to the posterior's (beta-tilde). The terms at small t are by far
        the largest, so the first ``exact_terms`` (t = 1..exact_terms, L_0 included) are evaluated
        for every image, and the remaining T - exact_terms are split into ``strata`` contiguous
        strata of near-equal width, each estimated by one t drawn uniformly inside it per image and
        weighted by the stratum's width: an unbiased estimate of the all-terms sum. Every
        evaluated term draws its own x_t (one noise draw, as the all-terms sum does).
        ``exact_terms >= T`` (or exact_terms + strata >= T) evaluates all T terms.

        ``bpd_stderr`` is the standard error over the images of the per-image estimates; each image
        has its own t and noise draws, so it covers the sampling of the images and of the draws
        together (and bounds how far another seed can move the estimate on the same images).
        """
        import torch

        if exact_terms < 1 or strata < 0:
            raise GenlabError(f"exact_terms must be at least 1 and strata at least 0, got {exact_terms} and {strata}")
        net = self.network
        T = net.config.num_train_timesteps
        if strata == 0 and exact_terms < T:  # no strata would leave the terms after exact_terms out of the bound
            raise GenlabError(f"strata=0 needs exact_terms={T} (every term of this model's bound), got "
                              f"exact_terms={exact_terms}; give strata at least 1 to estimate the rest")
        x0 = (images_uint8.double() / 255) * 2 - 1
        n, dims = len(x0), x0[0].numel()
        generator = torch.Generator().manual_seed(seed)
        if exact_terms + strata >= T:
            exact_terms, strata = T, 0
        # strata over t = exact_terms + 1 .. T, drawn before any noise: [strata + 1] edges
        edges = torch.linspace(exact_terms + 1, T + 1, strata + 1).round().long()
        widths = (edges[1:] - edges[:-1]).double()
        u = torch.rand((strata, n), generator=generator, dtype=torch.float64)
        drawn = edges[:-1, None] + (u * widths[:, None]).long()  # [strata, n], paper t
        # evaluations in order: every exact t for every image, then one draw per stratum and image
        image_index = torch.arange(n).repeat(exact_terms + strata)
        t_index = torch.cat([torch.arange(1, exact_terms + 1).repeat_interleave(n), drawn.flatten()])
        weight = torch.cat([torch.ones(exact_terms * n, dtype=torch.float64), widths.repeat_interleave(n)])
        nats = self._bound_terms(x0, image_index, t_index, generator, batch_size)
        total = self._prior_term(x0).index_add(0, image_index, weight * nats)
        bpd = total / (dims * math.log(2))
        if strata:
            method = (f"variational bound, unbiased: t=1..{exact_terms} exact, t={exact_terms + 1}..{T} from "
                      f"{strata} strata (one t per stratum and image)")
        else:
            method = f"variational bound, all {T} terms"
        return {
            "bpd": float(bpd.mean()),
            "bpd_stderr": float(bpd.std() / math.sqrt(n)) if n > 1 else 0.0,
            "method": method + "; discrete 8-bit data (discretized Gaussian decoder, no dequantization)",
            "convention": "discrete",
            "images": n, "evaluations_per_image": exact_terms + strata,
            "exact_terms": exact_terms, "strata": strata,
            "runtime": {"device": str(self.device), "backend": BOUND_RUNTIME.backend,
                        "precision": BOUND_RUNTIME.precision, "mode": BOUND_RUNTIME.mode},
        }

    def term_profile(self, images_uint8, *, seed: int = 0, batch_size: int = 100):
        """Every term of the bound for every image, in nats: ``[N, T + 1]`` with column 0 = L_0
        (decoder), column t - 1 = L_{t-1} for t = 2..T, column T = the prior term L_T."""
        import torch

        net = self.network
        T = net.config.num_train_timesteps
        x0 = (images_uint8.double() / 255) * 2 - 1
        n = len(x0)
        t_index = torch.arange(1, T + 1).repeat_interleave(n)
        nats = self._bound_terms(x0, torch.arange(n).repeat(T), t_index, torch.Generator().manual_seed(seed), batch_size)
        return torch.cat([nats.view(T, n).T, self._prior_term(x0)[:, None]], 1)

    def _likelihood_schedule(self):
        """(beta_t, alpha-bar_t) in float64, alpha-bar the cumulative product of the scheduler's betas
        in float64, so that the bound's posterior variances are consistent to float64 precision (the
        float32 cumulative product is off by ~1e-4 relative in 1 - alpha-bar at small t)."""
        import torch

        betas = self.network.scheduler("ddpm").betas.double()
        return betas, torch.cumprod(1 - betas, 0)

    def _prior_term(self, x0):
        """L_T = KL(q(x_T|x_0) || N(0, I)) per image (nats), in closed form."""
        import torch

        ab_T = self._likelihood_schedule()[1][-1]
        return 0.5 * (ab_T * x0.pow(2) + (1 - ab_T) - 1 - torch.log(1 - ab_T)).flatten(1).sum(1)

    def _bound_terms(self, x0, image_index, t_index, generator, batch_size: int):
        """One term of the bound per evaluation (image x0[image_index[j]] at paper t = t_index[j]),
        in nats: -log p(x_0|x_1) at t = 1, KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) at t >= 2.

        Evaluations run in chunks of ``batch_size``, in order, each chunk drawing its noise
        eps [chunk, C, H, W] from ``generator``: x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps.
        """
        import torch

        net = self.network
        run = self.runner(BOUND_RUNTIME.backend, BOUND_RUNTIME.precision, mode=BOUND_RUNTIME.mode)
        betas, ab = self._likelihood_schedule()  # index i = paper's t = i + 1
        ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        out = torch.empty(len(t_index), dtype=torch.float64)
        with torch.inference_mode():
            for start in range(0, len(t_index), batch_size):
                i = t_index[start:start + batch_size] - 1
                x = x0[image_index[start:start + batch_size]]
                eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
                view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
                x_t = view(ab[i].sqrt()) * x + view((1 - ab[i]).sqrt()) * eps
                # only the network runs on the device; the bound's arithmetic stays in float64 on the CPU
                pred = run(x_t.float(), i).cpu().double()
                x0_hat, _ = self._x0_and_eps(pred, x_t, ab[i], net.config.prediction_type)
                # t >= 2: equal variances, so only the means differ, and only through x_0
                coef_x0 = ab_prev[i].sqrt() * betas[i] / (1 - ab[i])
                posterior_var = (1 - ab_prev[i]) / (1 - ab[i]) * betas[i]
                kl = (0.5 * view(coef_x0.pow(2) / posterior_var.clamp_min(1e-300)) * (x - x0_hat).pow(2)).flatten(1).sum(1)
                # t = 1: discretized Gaussian decoder with sigma_1^2 = beta_1, mean x0_hat
                first = i == 0
                if first.any():
                    log_p = discretized_gaussian_log_likelihood(x[first], x0_hat[first], 0.5 * torch.log(betas[0]))
                    kl[first] = -log_p.flatten(1).sum(1)
                out[start:start + len(i)] = kl
        return out


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) for x on the 256-level grid in [-1, 1] under N(mean, exp(log_scale)^2) integrated over
    each pixel's bin of width 2/255; the end bins extend to -inf and +inf.

    Exact in the tails too (no floor on the probability, which would make the bound too small):
    log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))), mirrored to the
    lower tail when the bin lies above the mean.
    """
    import torch
    from torch.special import log_ndtr

    inv_std = torch.exp(-log_scale)
    upper = (x - mean + 1 / 255) * inv_std
    lower = (x - mean - 1 / 255) * inv_std
    mirror = lower > 0
    a, b = torch.where(mirror, -upper, lower), torch.where(mirror, -lower, upper)
    log_b = log_ndtr(b)
    inner = log_b + torch.log(-torch.expm1(log_ndtr(a) - log_b))
    return torch.where(x < -0.999, log_ndtr(upper), torch.where(x > 0.999, log_ndtr(-lower), inner))


@genlab.hookimpl
def register_models(register):
    register(DDPM)
