"""genlab's flow-matching family: straight-line flows from noise to digits, sampled in a few ODE steps.

Convention (rectified flow, Liu et al. 2023, in the data-at-0 direction of Esser et al. 2024):
x_t = (1 - t) x_0 + t eps with t in [0, 1], t = 0 the data and t = 1 the noise; the network predicts
the velocity v = dx_t/dt = eps - x_0 and is trained by its mean squared error. Sampling integrates
dx/dt = v(x, t) from t = 1 down to 0 on a uniform grid of ``steps`` steps. Euler costs one network
evaluation (NFE) per step. Heun costs two per step except the last, which ends at t = 0 and is
taken as an Euler step, as Karras et al. (2022) do: the evaluation it saves is a large share of a
2-4 NFE budget. Heun with n steps costs 2n - 1 NFE. At every step, x̂_0 = x_t - t v is the model's
current guess of the clean image.

Three models, one family:
- ``flow``: the base flow (1-rectified flow), trained on independent (data, noise) pairs. Its paths
  bend where they cross, so it needs several steps.
- ``flow-reflow``: a few-step variant, 2-rectified flow. The base flow's ODE maps seeded noises to
  samples; a student, starting from the base weights, is trained on those (noise, sample) pairs.
  Their straight lines rarely cross, so one Euler step lands near where the teacher's many steps do.
- ``flow-distill``: the few-step variant with the better teacher: the LDM (the bundled diffusion model
  at its best) maps seeded noises to latents with its own sampler, prompted "0".."9" in turn; a
  class-conditional student, starting from the base weights, learns those straight lines given the
  digit (the LDM without a prompt is a poor teacher, so the digit is part of the map). It asks the
  registry for the LDM and uses its ``sample_latents``.

The flow moves pixels (scaled to [-1, 1]) or, when trained with ``first_stage_model``, the latents of
a registered autoencoder (the bundled weights: the LDM's first stage, 4x8x8), which it asks genlab's
registry for, as any other plugin would; only genlab's public API is used here.

The ODE is integrated here rather than with diffusers' FlowMatch schedulers: those end their grid
at sigma = 1/T and then jump to 0 (at 2 steps, one of the two is spent between 0.001 and 0), and
they do not invert. tests/test_flow.py checks the Euler loop against FlowMatchEulerDiscreteScheduler.

The velocity network runs through ``genlab.runtime`` (options ``backend`` and ``precision``, as the
DDPM's and LDM's UNets): a probe picks plain PyTorch, ONNX Runtime or OpenVINO on this machine, in
float32. ``solve`` called without a runner evaluates the network directly, in the input's dtype
(the tests' float64 checks), and the teacher's reflow pairs are made by PyTorch fp32, so training
data do not depend on the machine's probe.

This module imports no torch at import time, so listing plugins stays fast.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Literal

from pydantic import Field

import genlab
from genlab import Capability, GenlabError, Model, Samples, runtime, unwrap

WEIGHTS = Path(__file__).parent / "weights"
# a reflow student's (noise, sample) pairs, by network: beside it, not on it, so the EMA copy and the
# snapshots that deepcopy the network do not copy ~40 MB of pairs each time
REFLOW_PAIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
SAMPLERS = ("euler", "heun")


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations per image of ``steps`` ODE steps: Heun's last step is an Euler step."""
    return steps if sampler == "euler" else 2 * steps - 1


def time_grid(steps: int, start: float = 1.0):
    """``steps + 1`` evenly spaced times from ``start`` down to 0."""
    import torch

    return torch.linspace(start, 0.0, steps + 1, dtype=torch.float64).tolist()


def slerp(a, b, steps: int):
    """``steps`` points on the great circle from a to b (flat tensors), ends included; a line if they are parallel."""
    import torch

    t = torch.linspace(0, 1, steps).unsqueeze(1)
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-8)
    omega = torch.arccos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    if omega.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def weights_digest(folder) -> str:
    """sha256 over the safetensors files of a weights folder: the same digest means the same weights."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def held_pairs(network, model_id: str, setting: str) -> tuple:
    """The teacher pairs a student network was made with, or one sentence: weights loaded from a
    checkpoint hold none (they are made by ``create_network``, in memory)."""
    pairs = REFLOW_PAIRS.get(unwrap(network))
    if pairs is None:
        raise GenlabError(f"this {model_id} network holds no teacher pairs: train it from a config with "
                          f"{setting} (weights loaded from a checkpoint are for sampling)")
    return pairs


def autoencoder(model_id: str, weights: str | None = None):
    """The registered model whose latents a flow moves, or one sentence saying why it cannot be used."""
    try:
        model = genlab.get_model(model_id, weights=weights)
    except GenlabError as exc:
        raise GenlabError(f"this flow moves the latents of model {model_id}, which is unavailable here: {exc}") from None
    if not (model.can(Capability.ENCODE) and model.can(Capability.DECODE)):
        raise GenlabError(f"model {model_id} cannot both encode and decode, so a flow cannot move its latents: "
                          "give first_stage_model a model that can (ldm-autoencoder)")
    return model


class Flow(Model):
    model_id = "flow"
    family = "flow-matching"
    training_objective = "MSE between the predicted velocity and eps - x_0 at x_t = (1 - t) x_0 + t eps, t ~ U[0, 1]"
    description = (
        "Flow matching (1-rectified flow): a UNet learns the velocity that carries noise to digits along "
        "straight lines; sampling solves that ODE with Euler or Heun steps, each step 1 or 2 network "
        "evaluations. Trained on the LDM first stage's latents."
    )
    capabilities = frozenset({
        Capability.SAMPLE, Capability.TRAJECTORY, Capability.FORWARD_PROCESS, Capability.ENCODE, Capability.DECODE,
        Capability.RECONSTRUCT, Capability.INTERPOLATE, Capability.IMAGE_TO_IMAGE,
    })
    # the forward process is shown on a grid of this many times in (0, 1]: t = k / forward_grid
    forward_grid = 1000
    default_weights = WEIGHTS / "flow-mnist-5k"
    # encode, decode and interpolate: the same deterministic ODE in both directions
    inversion_sampler, inversion_steps = "heun", 16

    class Options(genlab.Options):
        sampler: Literal["euler", "heun"] = Field(
            "heun", description="ODE solver: euler, 1 network evaluation per step; heun, 2 per step but the last")
        steps: int = Field(8, ge=1, le=1000, description="ODE steps from noise to digit; NFE = steps (euler), 2 steps - 1 (heun)")
        backend: runtime.Backend = runtime.backend_field()
        precision: runtime.Precision = runtime.precision_field()

    # whether precision=auto may choose bf16: only where FID at N = 1,000 showed it harmless (not measured)
    bf16_harmless = False

    def __init__(self, weights=None):
        super().__init__(weights)
        self._autoencoder = None

    @classmethod
    def network_class(cls):
        from .network import VelocityUNet

        return VelocityUNet

    @classmethod
    def create_network(cls, first_stage_model: str | None = None, first_stage_weights: str | None = None,
                       calibration_dataset: str = "mnist-5k", calibration_images: int = 2000, **config):
        """A new velocity UNet: on pixels, or, with ``first_stage_model``, on that model's latents, whose
        shape and unit-variance scale are measured here on ``calibration_dataset``'s train split."""
        import torch

        from .network import VelocityUNet

        if first_stage_model is None:
            return VelocityUNet(**config)
        first_stage = autoencoder(first_stage_model, first_stage_weights)
        data = genlab.load_dataset(calibration_dataset, "train")
        with torch.inference_mode():
            z = torch.cat([first_stage.encode(genlab.to_unit(batch)) for batch in data.images[:calibration_images].split(250)])
        config.update(sample_size=z.shape[-1], in_channels=z.shape[1], first_stage_model=first_stage_model,
                      first_stage_weights=first_stage_weights, first_stage_digest=weights_digest(first_stage.weights),
                      scale_factor=round(float(1 / z.std()), 5))
        return VelocityUNet(**config)

    # ----- the space the flow moves: pixels in [-1, 1] or scaled latents --------------------------
    def first_stage(self):
        """The autoencoder whose latents this flow moves, or None for a pixel-space flow."""
        c = self.network.config
        if c.first_stage_model is None:
            return None
        if self._autoencoder is None:
            model = autoencoder(c.first_stage_model, c.first_stage_weights)
            if c.first_stage_digest and weights_digest(model.weights) != c.first_stage_digest:
                raise GenlabError(
                    f"the weights of {c.first_stage_model} at {model.weights} are not the ones this flow was trained "
                    "on: restore them, or train the flow again on these")
            self._autoencoder = model
        return self._autoencoder

    def to_space(self, images, *, generator=None, draw: bool = False):
        """Images in [0, 1] -> what the flow moves, on the model's device: pixels in [-1, 1], or latents
        times the scale factor (the posterior mean, or with ``draw`` a draw from q(z|x) where the
        autoencoder gives one; the autoencoder takes and gives CPU tensors, as every model does)."""
        import torch

        first_stage = self.first_stage()
        if first_stage is None:
            return images.float().to(self.device) * 2 - 1
        z = None
        if draw:
            try:
                mean, logvar = first_stage.posterior(images.float())
                if logvar is not None:
                    z = mean + (0.5 * logvar).exp() * runtime.randn(mean.shape, generator, device=mean.device)
            except NotImplementedError:
                pass
        if z is None:
            z = first_stage.encode(images.float())
        # a copy outside inference mode: training backpropagates
        return z.to(self.device).clone() * self.network.config.scale_factor

    def from_space(self, x, backend: str = "auto"):
        """What the flow moves -> images in [0, 1], on the CPU; a first stage whose ``decode`` takes a
        ``backend`` (ldm-autoencoder's) decodes the way the flow's sampler was asked to run."""
        import inspect

        first_stage = self.first_stage()
        if first_stage is None:
            return ((x + 1) / 2).clamp(0, 1).cpu()
        takes_backend = "backend" in inspect.signature(first_stage.decode).parameters
        return first_stage.decode(x.cpu() / self.network.config.scale_factor,
                                  **({"backend": backend} if takes_backend else {})).clamp(0, 1)

    def latent_shape(self):
        c = self.network.config  # the noise the ODE starts from
        return (c.in_channels, c.sample_size, c.sample_size)

    def image_shape(self):
        first_stage = self.first_stage()
        return self.latent_shape() if first_stage is None else first_stage.image_shape()

    # ----- forward process: the straight line from x_0 to noise ---------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.forward_grid  # t = k / forward_grid, k = 1..forward_grid: the app's slider

    def schedule_curves(self) -> dict:
        """The coefficients of x_t = (1 - t) x_0 + t eps at t = k / grid: signal 1 - t, noise t (not
        variance-preserving: x_t's norm dips mid-way), alpha-bar = the signal's share of x_t's variance
        for unit-variance data, (1 - t)^2 / ((1 - t)^2 + t^2), and SNR = (1 - t)^2 / t^2."""
        grid = self.forward_grid
        t = [k / grid for k in range(1, grid + 1)]
        signal, noise = [1 - s for s in t], t
        return {"t": list(range(1, grid + 1)), "signal": signal, "noise": noise,
                "alpha_bar": [a * a / (a * a + b * b) for a, b in zip(signal, noise)],
                "snr": [a * a / (b * b) for a, b in zip(signal, noise)]}

    def noise(self, images, t: int, *, seed: int = 0):
        """x_t = (1 - t) x_0 + t eps at t = ``t`` / grid, in the flow's space (the latents, for a latent
        flow), shown as an image: decoded by the first stage; images in [0, 1]."""
        import torch

        if not 1 <= t <= self.forward_grid:
            raise GenlabError(f"t={t} is outside 1..{self.forward_grid}")
        s = t / self.forward_grid
        with torch.inference_mode():
            x0 = self.to_space(images)
            eps = runtime.randn(x0.shape, torch.Generator().manual_seed(seed), device=x0.device)
            return self.from_space((1 - s) * x0 + s * eps)

    # ----- training ------------------------------------------------------------------------------
    def training_loss(self, network, batch, generator=None):
        import torch

        x0 = self.to_space(genlab.to_unit(batch["images"]), generator=generator, draw=True)
        eps = runtime.randn(x0.shape, generator, device=x0.device)
        return self.flow_loss(network, x0, eps, generator)

    @staticmethod
    def flow_loss(network, x0, eps, generator=None, labels=None):
        """Mean squared error of the predicted velocity against eps - x0 at x_t = (1 - t) x0 + t eps
        (``labels``: the classes of a class-conditional flow)."""
        import torch
        from torch.nn import functional as F

        from .network import TIME_SCALE

        net = unwrap(network)
        device = next(net.parameters()).device
        x0, eps = x0.to(device), eps.to(device)
        if net.config.time_sampling == "logit-normal":
            t = torch.sigmoid(torch.randn(len(x0), generator=generator))
        else:
            t = torch.rand(len(x0), generator=generator)
        t = t.to(device)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        labels = None if labels is None else labels.to(device)
        # the wrapped network: gradients sync across processes
        velocity = network(x_t, t * TIME_SCALE, class_labels=labels).sample
        return F.mse_loss(velocity, eps - x0), {}

    # ----- the ODE -------------------------------------------------------------------------------
    def runner(self, backend: str = "auto", precision: str = "auto"):
        """The velocity network as ``genlab.runtime`` runs it: ``runner(x_t, t)`` with t a float tensor [B]."""
        import torch

        from .network import Velocity

        net = self.network
        if getattr(self, "_velocity_module", (None, None))[0] is not net:
            self._velocity_module = (net, Velocity(net).eval())
        shape = self.latent_shape()
        classes = getattr(net.config, "num_classes", None)  # a class-conditional flow takes labels as a third input

        def example(batch):
            labels = (torch.zeros(batch, dtype=torch.long),) if classes else ()
            return torch.zeros(batch, *shape), torch.full((batch,), 0.5), *labels

        def probe_inputs(batch, generator):
            # what sampling feeds the network: x_t of unit scale, t across (0, 1]
            labels = (torch.randint(classes, (batch,), generator=generator),) if classes else ()
            return torch.randn(batch, *shape, generator=generator), torch.rand(batch, generator=generator), *labels

        names = ["sample", "t"] + (["labels"] if classes else [])
        return runtime.network_runner(self, f"flow-{shape[-1]}" + (f"-c{classes}" if classes else ""),
                                      self._velocity_module[1], example, names,
                                      device=self.device, backend=backend, precision=precision,
                                      bf16_harmless=self.bf16_harmless, probe_inputs=probe_inputs)

    def _velocity(self, x, t: float, run=None, labels=None):
        import torch

        times = torch.full((len(x),), float(t), device=x.device)
        if run is None:
            return self.network.velocity(x, times.to(x.dtype), *(() if labels is None else (labels,)))
        return run(x, times, *(() if labels is None else (labels,))).to(x.device)

    def _step(self, x, t: float, s: float, sampler: str, run=None, labels=None):
        """One step of the ODE from time t to s: (x_s, the velocity at (x, t))."""
        v = self._velocity(x, t, run, labels)
        x_next = x + (s - t) * v
        if sampler == "heun" and s > 0:  # the step that ends at t = 0 stays Euler (see the module docstring)
            x_next = x + (s - t) * 0.5 * (v + self._velocity(x_next, s, run, labels))
        return x_next, v

    def solve(self, x, steps: int, sampler: str, start: float = 1.0, run=None, labels=None):
        """x at time ``start`` carried to t = 0 in ``steps`` steps (in the flow's space), the network run
        by ``run`` (a ``runner``), or called directly in x's dtype; ``labels`` for a class-conditional flow."""
        grid = time_grid(steps, start)
        for t, s in zip(grid[:-1], grid[1:]):
            x, _ = self._step(x, t, s, sampler, run, labels)
        return x

    def labels(self, count: int, opts):
        """The classes to draw ``count`` samples of, or None: the base flow is unconditional."""
        return None

    def _noise(self, count: int, seed: int):
        import torch

        # drawn on the CPU, then moved: a seed gives the same noise on every device
        return runtime.randn((count, *self.latent_shape()), torch.Generator().manual_seed(seed), device=self.device)

    def trajectory(self, count: int = 1, *, seed: int = 0, options=None, record_every: int = 1):
        """Solve the ODE from noise, yielding a dict per recorded step: ``{"step", "steps", "t", "x_t",
        "x0_hat", "nfe"}`` (images in [0, 1]; t is the time x_t has reached; nfe the network evaluations
        so far); the last one is the sample."""
        import torch

        opts = self.parse_options(options)
        run = self.runner(opts.backend, opts.precision)
        x = self._noise(count, seed)
        labels = self.labels(count, opts)
        grid = time_grid(opts.steps)
        with torch.inference_mode():
            for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
                x_next, v = self._step(x, t, s, opts.sampler, run, labels)
                if i == opts.steps - 1 or (record_every and i % record_every == 0):
                    yield {"step": i + 1, "steps": opts.steps, "t": round(s, 4), "nfe": nfe(opts.sampler, i + 1)
                           + (opts.sampler == "heun" and i < opts.steps - 1),  # nfe() counts the last Heun step as one
                           "x_t": self.from_space(x_next, opts.backend), "x0_hat": self.from_space(x - t * v, opts.backend)}
                x = x_next

    def sample(self, count, *, seed=0, options=None) -> Samples:
        import torch

        opts = self.parse_options(options)
        start = time.perf_counter()
        run = self.runner(opts.backend, opts.precision)
        with torch.inference_mode():
            images = self.from_space(self.solve(self._noise(count, seed), opts.steps, opts.sampler, run=run,
                                                labels=self.labels(count, opts)), opts.backend)
        return Samples(images=images, nfe=nfe(opts.sampler, opts.steps), seconds=time.perf_counter() - start,
                       info={"sampler": opts.sampler, "steps": opts.steps, **runtime.describe_choice(run, self.device)})

    # ----- ODE inversion: the flow's encoder ------------------------------------------------------
    def encode(self, images, steps: int | None = None, sampler: str | None = None, refine: int = 2):
        """Images in [0, 1] to the noise that ``decode`` (same steps and sampler) carries back to them.

        Each decoding step (t -> s) is undone in turn: an Euler step backwards from x_s, then ``refine``
        fixed-point iterations x_t <- x_t + (x_s - step(x_t)) that make the decoding step land on x_s
        (each costs the step's NFE once more), so decode(encode(x)) is close to exact."""
        import torch

        steps, sampler = self._inversion(steps, sampler)
        run = self.runner()
        grid = time_grid(steps)
        with torch.inference_mode():
            x = self.to_space(images)
            for t, s in reversed(list(zip(grid[:-1], grid[1:]))):
                target = x
                x = x - (s - t) * self._velocity(x, s, run)
                for _ in range(refine):
                    x = x + (target - self._step(x, t, s, sampler, run)[0])
        return x.cpu()

    def decode(self, latents, steps: int | None = None, sampler: str | None = None):
        """Noise (the flow's latent) to images in [0, 1] by the deterministic ODE."""
        import torch

        steps, sampler = self._inversion(steps, sampler)
        run = self.runner()
        with torch.inference_mode():
            return self.from_space(self.solve(latents.float().to(self.device), steps, sampler, run=run))

    def _inversion(self, steps, sampler):
        steps = self.inversion_steps if steps is None else steps
        sampler = self.inversion_sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise GenlabError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if not 1 <= steps <= 1000:
            raise GenlabError(f"steps={steps} must be between 1 and 1000")
        return steps, sampler

    def reconstruct(self, images, steps: int | None = None):
        """Invert to noise and decode back; the round-trip error measures how faithful inversion is."""
        return self.decode(self.encode(images, steps), steps)

    def interpolate(self, start, end, steps: int = 8, method: str = "slerp"):
        """Slerp (or lerp) between the inverted noises of two images, each point decoded by the ODE."""
        import torch

        if method not in ("slerp", "lerp"):
            raise GenlabError(f"unknown interpolation {method!r}; valid: lerp, slerp")
        noises = self.encode(torch.stack([start, end]))
        a, b = noises[0].flatten(), noises[1].flatten()
        if method == "slerp":
            path = slerp(a, b, steps)
        else:
            w = torch.linspace(0, 1, steps).unsqueeze(1)
            path = (1 - w) * a + w * b
        return self.decode(path.view(steps, *noises.shape[1:]))

    # ----- image to image (SDEdit) ---------------------------------------------------------------
    def edit(self, images, *, strength: float = 0.5, seed: int = 0, options=None):
        """Move images in [0, 1] to t = strength along a straight line to seeded noise and solve the
        ODE back to t = 0 (SDEdit), with the sampler's step size: round(steps x strength) steps, at least 1."""
        import torch

        if not 0 < strength <= 1:
            raise GenlabError(f"strength={strength} must be in (0, 1]")
        opts = self.parse_options(options)
        with torch.inference_mode():
            x0 = self.to_space(images)
            eps = runtime.randn(x0.shape, torch.Generator().manual_seed(seed), device=x0.device)
            x = (1 - strength) * x0 + strength * eps
            steps = max(1, round(opts.steps * strength))
            return self.from_space(self.solve(x, steps, opts.sampler, start=strength,
                                              run=self.runner(opts.backend, opts.precision)), opts.backend)

    # ----- the teacher's side of reflow ----------------------------------------------------------
    def pairs(self, count: int, *, seed: int = 0, sampler: str = "heun", steps: int = 8, batch_size: int = 500):
        """(noises, where the ODE carries them) in the flow's space, seeded: the coupling reflow trains on."""
        import torch

        noises, ends = [], []
        run = self.runner("torch", "fp32")  # training data: the same on every machine, whatever its probe picks
        with torch.inference_mode():
            for i, start in enumerate(range(0, count, batch_size)):
                noise = self._noise(min(batch_size, count - start), seed * 1_000_003 + i)
                noises.append(noise)
                ends.append(self.solve(noise, steps, sampler, run=run))
        return torch.cat(noises).cpu(), torch.cat(ends).cpu()  # held for training: in CPU memory


class FlowReflow(Flow):
    model_id = "flow-reflow"
    training_objective = ("the flow's velocity MSE on (noise, sample) pairs that the base flow's ODE made "
                          "(2-rectified flow), starting from the base weights")
    description = (
        "Few-step flow (2-rectified flow): the base flow's ODE pairs seeded noises with the samples it "
        "makes, and this copy of it is trained on those pairs, straightening its paths so that one "
        "Euler step (1 network evaluation) makes a digit."
    )
    default_weights = WEIGHTS / "flow-reflow-mnist-5k"

    class Options(Flow.Options):
        sampler: Literal["euler", "heun"] = Field(
            "euler", description="ODE solver: euler, 1 network evaluation per step; heun, 2 per step but the last")
        steps: int = Field(1, ge=1, le=1000, description="ODE steps from noise to digit; NFE = steps (euler), 2 steps - 1 (heun)")

    @classmethod
    def create_network(cls, teacher_weights: str | None = None, pairs: int = 20000, pair_sampler: str = "heun",
                       pair_steps: int = 8, pair_seed: int = 1, time_sampling: str = "uniform"):
        """A student for 2-rectified flow: the teacher's architecture and weights, and ``pairs`` (noise,
        sample) pairs made by the teacher's ODE (``pair_sampler``, ``pair_steps``, seeded by ``pair_seed``).
        The pairs are held in memory, not saved: a resumed run makes the same ones again. The CPU time
        they took is recorded in the network's config (``reflow``)."""
        import inspect

        from .network import VelocityUNet

        if pair_sampler not in SAMPLERS:
            raise ValueError(f"unknown pair_sampler {pair_sampler!r}; valid: {', '.join(SAMPLERS)}")
        if pairs < 1:  # one setting per sentence: the trainer names the setting a message is about
            raise ValueError(f"pairs must be at least 1, got {pairs}")
        if pair_steps < 1:
            raise ValueError(f"pair_steps must be at least 1, got {pair_steps}")
        teacher = Flow(weights=teacher_weights)
        started = time.process_time()
        noises, ends = teacher.pairs(pairs, seed=pair_seed, sampler=pair_sampler, steps=pair_steps)
        cpu_seconds = time.process_time() - started
        accepted = inspect.signature(VelocityUNet.__init__).parameters
        config = {k: v for k, v in teacher.network.config.items() if k in accepted}
        config.update(time_sampling=time_sampling, reflow={
            "teacher_weights": str(teacher.weights), "teacher_digest": weights_digest(teacher.weights), "pairs": pairs,
            "sampler": pair_sampler, "steps": pair_steps, "nfe_per_pair": nfe(pair_sampler, pair_steps),
            "seed": pair_seed, "cpu_seconds": round(cpu_seconds, 1),
        })
        network = VelocityUNet(**config)
        network.load_state_dict(teacher.network.state_dict())
        REFLOW_PAIRS[network] = (noises, ends)
        return network

    def training_loss(self, network, batch, generator=None):
        import torch

        noises, ends = held_pairs(network, self.model_id, "teacher_weights")
        index = torch.randint(len(noises), (len(batch["images"]),), generator=generator)
        return self.flow_loss(network, ends[index], noises[index], generator)


class FlowDistill(Flow):
    model_id = "flow-distill"
    training_objective = ("the flow's velocity MSE on (noise, latent) pairs that the LDM's sampler made from "
                          "the same noise, digit by digit (rectified-flow distillation), starting from the base flow")
    description = (
        "Few-step flow distilled from the latent diffusion model: the LDM's DPM-Solver++ (10 steps) carries "
        "seeded noises to digits 0-9; a class-conditional copy of the base flow learns the straight line "
        "from each noise to its digit's latent, so 1 to 4 Euler steps make a digit of the LDM's quality."
    )
    # the straight lines lead from noise to one digit each: sampling, its steps and the forward process;
    # encoding an image would need its digit (inversion, interpolation and editing are the base flow's)
    capabilities = frozenset({Capability.SAMPLE, Capability.TRAJECTORY, Capability.FORWARD_PROCESS})
    default_weights = WEIGHTS / "flow-distill-mnist-5k"
    classes = 10

    class Options(Flow.Options):
        sampler: Literal["euler", "heun"] = Field(
            "euler", description="ODE solver: euler, 1 network evaluation per step; heun, 2 per step but the last")
        steps: int = Field(4, ge=1, le=1000, description="ODE steps from noise to digit; NFE = steps (euler), 2 steps - 1 (heun)")
        digit: int = Field(-1, ge=-1, le=9, description="The digit to draw; -1: 0 to 9 in turn, as the LDM's {digit} prompt")

    # what the base flow does by ODE inversion needs an image's digit here: one sentence, not a traceback
    def encode(self, images, *args, **kwargs):
        self.require(Capability.ENCODE)

    def decode(self, latents, *args, **kwargs):
        self.require(Capability.DECODE)

    def reconstruct(self, images, *args, **kwargs):
        self.require(Capability.RECONSTRUCT)

    def interpolate(self, start, end, *args, **kwargs):
        self.require(Capability.INTERPOLATE)

    def edit(self, images, *args, **kwargs):
        self.require(Capability.IMAGE_TO_IMAGE)

    def labels(self, count: int, opts):
        import torch

        labels = torch.arange(count) % self.classes if opts.digit < 0 else torch.full((count,), opts.digit)
        return labels.to(self.device)

    @classmethod
    def create_network(cls, teacher_model: str = "ldm", teacher_weights: str | None = None,
                       teacher_options: dict | None = None, init_weights: str | None = None, pairs: int = 20000,
                       pair_seed: int = 1, pair_batch: int = 500, time_sampling: str = "uniform"):
        """A class-conditional student of ``teacher_model``'s sampler: the base flow's architecture and
        weights (``init_weights``, default the bundled base flow) with a class embedding that starts at
        zero, and ``pairs`` (noise, latent, digit) triples: the teacher (``sample_latents``, prompts "0"
        to "9" in turn, ``teacher_options``, PyTorch fp32) carries each seeded noise to a first-stage
        latent, which the flow's scale puts in its space. Held in memory, not saved: a resumed run makes
        the same ones again; their CPU time is recorded in the network's config (``reflow``)."""
        import inspect

        import torch

        from .network import VelocityUNet

        if pairs < 1:  # one setting per sentence: the trainer names the setting a message is about
            raise ValueError(f"pairs must be at least 1, got {pairs}")
        if pair_batch < 1:
            raise ValueError(f"pair_batch must be at least 1, got {pair_batch}")
        options = {"prompt": "{digit}", "guidance": 1.0, "sampler": "dpm-solver++", "steps": 10, **(teacher_options or {})}
        if "{digit}" not in options["prompt"]:
            raise ValueError(f"teacher_options' prompt must hold {{digit}} (each pair's class), got {options['prompt']!r}")
        try:
            teacher = genlab.get_model(teacher_model, weights=teacher_weights)
        except GenlabError as exc:
            raise ValueError(f"teacher_model {teacher_model} is unavailable here: {exc}") from None
        if not hasattr(teacher, "sample_latents"):
            raise ValueError(f"teacher_model {teacher_model} gives no latents (sample_latents): choose ldm")
        options.update(backend="torch", precision="fp32")  # training data: the same on every machine
        teacher.parse_options(options)  # a wrong option is one sentence now, not after the first batch
        base = Flow(weights=init_weights)
        first_stage = base.first_stage()
        if first_stage is None:
            raise ValueError("init_weights must be a flow on the first stage's latents (the teacher's space)")
        started = time.process_time()
        noises, ends, labels = [], [], []
        for i, start in enumerate(range(0, pairs, pair_batch)):
            count = min(pair_batch, pairs - start)
            noise, latents = teacher.sample_latents(count, seed=pair_seed * 1_000_003 + i, options=options)
            noises.append(noise)
            ends.append(latents * base.network.config.scale_factor)
            labels.append(torch.arange(count) % 10)  # the teacher's {digit}: 0 to 9 in turn within each call
        cpu_seconds = time.process_time() - started
        # the teacher's latents must be the flow's first stage's: decoded by both, they are the same images
        probe = ends[0][:8] / base.network.config.scale_factor
        mine = first_stage.decode(probe).clamp(0, 1)
        theirs = teacher.decode(probe * teacher.network.config.scale_factor).clamp(0, 1)
        if not torch.allclose(mine, theirs, atol=1e-4):
            raise ValueError(f"teacher_model {teacher_model}'s first stage is not the one init_weights' flow moves")
        accepted = inspect.signature(VelocityUNet.__init__).parameters
        config = {k: v for k, v in base.network.config.items() if k in accepted}
        config.update(time_sampling=time_sampling, num_classes=cls.classes, reflow={
            "teacher_model": teacher_model, "teacher_weights": str(teacher.weights),
            "teacher_digest": weights_digest(teacher.weights), "teacher_options": options,
            "init_weights": str(base.weights), "init_digest": weights_digest(base.weights), "pairs": pairs,
            "nfe_per_pair": options["steps"] * (2 if options.get("guidance", 1.0) != 1.0 else 1),
            "seed": pair_seed, "cpu_seconds": round(cpu_seconds, 1),
        })
        network = VelocityUNet(**config)
        missing, unexpected = network.load_state_dict(base.network.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("class_embedding") for k in missing), (missing, unexpected)
        with torch.no_grad():  # at zero the student starts as the base flow, whatever the digit
            network.class_embedding.weight.zero_()
        REFLOW_PAIRS[network] = (torch.cat(noises), torch.cat(ends), torch.cat(labels))
        return network

    def training_loss(self, network, batch, generator=None):
        import torch

        noises, ends, labels = held_pairs(network, self.model_id, "teacher_model")
        index = torch.randint(len(noises), (len(batch["images"]),), generator=generator)
        return self.flow_loss(network, ends[index], noises[index], generator, labels=labels[index])


@genlab.hookimpl
def register_models(register):
    register(Flow)
    register(FlowReflow)
    register(FlowDistill)
