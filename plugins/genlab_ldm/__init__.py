"""genlab's latent diffusion: a first-stage autoencoder, then diffusion on its latents.

"Latent Diffusion: best of both" — compress with an autoencoder (VAE-like, but with a very small
KL weight so reconstructions stay sharp), model the latents with diffusion, decode.

This module stays light (no torch at import); the networks load on first use, on the model's device.
The sampler's UNet runs through ``genlab.runtime`` (options ``backend`` and ``precision``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

import genlab
from genlab import Capability, Model, Samples, runtime, unwrap
from genlab.errors import GenlabError
from genlab.schedules import set_timesteps

WEIGHTS = Path(__file__).parent / "weights"


def decoder_runner(owner, first_stage, device, backend: str = "auto"):
    """``first_stage.decode`` (latents -> images in [0, 1]) as ``genlab.runtime`` runs it for ``owner``,
    always in float32: bf16 moved the bundled decoder's pixels by up to 0.02. The decoder is most of a
    few-step sample's time; ONNX Runtime decoded 64 latents of the bundled first stage in 0.092 s
    against PyTorch's 0.133 (one thread), the same images to 2e-6."""
    import torch

    from .first_stage import Decoder

    if getattr(owner, "_decoder_module", (None, None))[0] is not first_stage:
        owner._decoder_module = (first_stage, Decoder(first_stage).eval())
    c, side = first_stage.config, first_stage.latent_size

    def example(batch):
        return (torch.zeros(batch, c.latent_channels, side, side),)

    return runtime.network_runner(owner, f"first-stage-{side}", owner._decoder_module[1], example, ["latents"],
                                  device=device, backend=backend, precision="fp32")



class LDMAutoencoder(Model):
    model_id = "ldm-autoencoder"
    family = "autoencoder"
    training_objective = "L1 reconstruction plus a 1e-6-weighted KL (or a VQ commitment loss)"
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
            return self.network.posterior(images.float().to(self.device))[0].cpu()

    def latent_shape(self):
        return (self.network.config.latent_channels, self.network.latent_size, self.network.latent_size)

    def image_shape(self):
        c = self.network.config
        return (c.in_channels, c.image_size, c.image_size)

    def posterior(self, images):
        import torch

        with torch.inference_mode():
            mean, std = (v.cpu() for v in self.network.posterior(images.float().to(self.device)))
        if self.network.config.regularizer != "kl":
            return mean, None
        return mean, 2 * std.clamp_min(1e-12).log()

    def decode(self, latents, *, backend: str = "auto"):
        """Images in [0, 1] for latents; ``backend`` as the samplers take it (the decoder runs in fp32)."""
        return decoder_runner(self, self.network, self.device, backend)(latents.float().to(self.device)).cpu()

    def reconstruct(self, images):
        return self.decode(self.encode(images))

    def reconstruction_metrics(self, images) -> dict:
        """MSE, PSNR and SSIM of reconstructions of images in [0, 1]."""
        from genlab.metrics import reconstruction_metrics

        return reconstruction_metrics(images, self.reconstruct(images))


class LDM(Model):
    model_id = "ldm"
    family = "latent-diffusion"
    training_objective = "simple MSE on the noise added to first-stage latents z ~ q(z|x), prompts dropped 10%"
    description = (
        "Latent diffusion with text conditioning: the first-stage autoencoder compresses a digit to a "
        "4x8x8 latent, a UNet denoises latents guided by the prompt through cross-attention, the "
        "decoder turns the result back into pixels."
    )
    capabilities = frozenset({Capability.SAMPLE, Capability.PROMPT, Capability.ATTENTION, Capability.DECODE})
    default_weights = WEIGHTS / "ldm-mnist-5k"

    class Options(genlab.Options):
        prompt: str = Field("a thick seven", max_length=200, description=(
            "What to draw: a digit, optionally thick/thin and upright/slanted; {digit} cycles through 0-9"))
        guidance: float = Field(3.0, ge=0.0, le=20.0, description="Classifier-free guidance scale (1 = plain conditional)")
        sampler: Literal["dpm-solver++", "ddim", "ddpm"] = Field(
            "dpm-solver++", description="Scheduler for the latent reverse process (DPM-Solver++ at 10 steps matches DDIM at 20)")
        steps: int = Field(20, ge=1, le=1000, description="Denoising steps; NFE is twice this with guidance")
        backend: runtime.Backend = runtime.backend_field()
        precision: runtime.Precision = runtime.precision_field()

    # precision=auto keeps fp32: on the bundled LDM (DPM-Solver++ 10, guidance 1, N = 1,000, seeds 0-2,
    # benchmarks/sampler_fid.py) OpenVINO bf16 gave FID 25.65 ± 0.29 against 25.06 ± 0.18 in fp32,
    # higher on every seed by 0.38-0.73 (benchmarks/results/fid-ldm-1.0-dpm-solver++-10.json)
    bf16_harmless = False

    def __init__(self, weights=None):
        import threading

        super().__init__(weights)
        # attention maps swap the UNet's attention processors while they run: one call at a time
        self._lock = threading.Lock()

    @classmethod
    def network_class(cls):
        from .network import LatentDiffusion

        return LatentDiffusion

    @classmethod
    def create_network(cls, first_stage_weights: str | None = None, calibration_dataset: str = "mnist-5k",
                       calibration_images: int = 2000, **config):
        """A new LDM around a trained first stage; the latent scale and caption bands are measured on
        ``calibration_dataset``'s train split here, and saved in the config."""
        import torch

        from genlab.datasets import load_dataset, to_unit

        from . import captions
        from .first_stage import FirstStage
        from .network import LatentDiffusion

        if first_stage_weights is None:
            return LatentDiffusion(**config)
        first_stage = LDMAutoencoder(weights=first_stage_weights).network
        device = next(first_stage.parameters()).device  # the model's device: a GPU where there is one
        data = load_dataset(calibration_dataset, "train")
        with torch.no_grad():
            z = torch.cat([first_stage.sample_latent(to_unit(batch).to(device), torch.Generator().manual_seed(0)).cpu()
                           for batch in data.images[:calibration_images].split(250)])
        config.setdefault("scale_factor", round(float(1 / z.std()), 5))
        config.setdefault("band_edges", captions.band_edges(captions.measure(data.images.numpy())))
        config.setdefault("vocabulary", captions.vocabulary())
        network = LatentDiffusion(first_stage_config=dict(first_stage.config), latent_channels=z.shape[1],
                                  latent_size=z.shape[-1], **config)
        network.first_stage.load_state_dict(first_stage.state_dict())
        assert isinstance(network.first_stage, FirstStage)
        return network

    def training_loss(self, network, batch, generator=None):
        from genlab.datasets import to_unit

        from .network import caption_batch

        net = unwrap(network)
        prompts = caption_batch(batch["images"], batch["labels"], net.config.band_edges, generator)
        return network(to_unit(batch["images"]), prompts, generator=generator), {}

    # ----- prompts -------------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> tuple[str, list[str]]:
        """The prompt as the model will read it, and notes on what was changed or ignored."""
        from . import captions

        notes = []
        text = " ".join(prompt.split())
        if not text:
            notes.append("empty prompt: sampling unconditionally")
            return "", notes
        net = self.network
        if net.config.text_encoder == "joint":
            known = set(net.config.vocabulary or captions.vocabulary())
            words = text.lower().replace(",", " , ").split()
            unknown = sorted({w for w in words if w not in known})
            if unknown:
                notes.append(f"words the model never saw are ignored: {', '.join(unknown)}")
            # unknown words go before the prompt is cut to length, so a long prompt keeps its digit word
            words = [w for w in words if w in known]
            text = " ".join(words)
            room = net.config.max_prompt_tokens - (1 if net.config.start_token else 0)  # [CLS] takes one
            if len(words) > room:
                notes.append(f"prompt cut to its first {room} words")
        if captions.parse_prompt(text)["digit"] is None:
            notes.append("no digit 0-9 in the prompt (write '7' or 'seven'): the digit is left to chance")
        return text, notes

    # ----- sampling ------------------------------------------------------------------------------
    def _reverse(self, count, seed, opts, attention=False, decode=True):
        with self._lock:
            return self._reverse_unlocked(count, seed, opts, attention, decode)

    def runner(self, backend: str = "auto", precision: str = "auto"):
        """The conditional UNet as ``genlab.runtime`` runs it: ``runner(*net.denoiser_inputs(z, t, cond))``."""
        net = self.network
        return runtime.network_runner(self, f"ldm-{net.config.latent_size}", net.denoiser(), net.denoiser_example,
                                      net.denoiser_input_names(), device=self.device, backend=backend,
                                      precision=precision, bf16_harmless=self.bf16_harmless,
                                      probe_inputs=net.denoiser_probe_inputs)

    def _reverse_unlocked(self, count, seed, opts, attention, decode=True):
        """(images, nfe, notes, prompt, attention recorder, runner); with ``decode=False``, (the noise it
        started from, the latents it ended at) instead, for ``sample_latents``."""
        import torch

        from .attention import AttentionRecorder

        net = self.network
        if "{digit}" in opts.prompt:  # a template: each sample asks for the next digit, 0 to 9 in turn
            filled = [opts.prompt.replace("{digit}", str(i % 10)) for i in range(count)]
            checked = [self.check_prompt(p) for p in filled]
            sample_prompts, notes = [c[0] for c in checked], checked[0][1]
            prompt = opts.prompt
        else:
            prompt, notes = self.check_prompt(opts.prompt)
            sample_prompts = [prompt] * count
        if opts.steps > net.config.num_train_timesteps:
            raise GenlabError(f"steps={opts.steps} is more than the model's T={net.config.num_train_timesteps}")
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
        scheduler = net.scheduler(opts.sampler)
        set_timesteps(scheduler, opts.steps, opts.sampler)  # before the runner: a refused grid costs no probe
        # attention maps are recorded by PyTorch attention processors: that needs the torch backend
        run = self.runner("torch", "fp32") if attention else self.runner(opts.backend, opts.precision)
        c = net.config
        z = runtime.randn((count, c.latent_channels, c.latent_size, c.latent_size), generator, device=self.device)
        noise = z
        z = z * scheduler.init_noise_sigma
        guided = opts.guidance != 1.0 and c.conditioning != "none"
        prompts = sample_prompts + ([""] * count if guided else [])
        recorder = AttentionRecorder(net.unet, batch=count) if attention else None
        step_kwargs = {"generator": generator} if opts.sampler in ("ddpm", "ddim") else {}
        # the decoder runs the way the UNet was asked to (attention maps: PyTorch), in fp32
        decoder = self.decoder("torch" if attention else opts.backend) if decode else None
        try:
            images = self._denoise(net, run, scheduler, z, cond_prompts=prompts, guided=guided, opts=opts,
                                   step_kwargs=step_kwargs, decoder=decoder)
        finally:
            if recorder is not None:
                recorder.close()
        nfe = opts.steps * (2 if guided else 1)
        if not decode:
            return noise.cpu(), images.cpu()
        return images.cpu(), nfe, notes, prompt, recorder, run

    @staticmethod
    def _denoise(net, run, scheduler, z, *, cond_prompts, guided, opts, step_kwargs, decoder=None):
        import torch

        c = net.config
        with torch.inference_mode():
            cond = net.condition(cond_prompts)
            times = torch.zeros(len(cond_prompts), dtype=torch.long, device=z.device)
            for t in scheduler.timesteps:
                z_in = torch.cat([z, z]) if guided else z
                eps = run(*net.denoiser_inputs(scheduler.scale_model_input(z_in, t), times.fill_(int(t)), cond))
                if guided:  # eps_u + w (eps_c - eps_u); w = 1 is the plain conditional prediction
                    eps_c, eps_u = eps.chunk(2)
                    eps = eps_u + opts.guidance * (eps_c - eps_u)
                z = scheduler.step(eps, t, z, **step_kwargs).prev_sample
            return z / c.scale_factor if decoder is None else decoder(z / c.scale_factor)

    def sample(self, count, *, seed=0, options=None) -> Samples:
        opts = self.parse_options(options)
        start = time.perf_counter()
        images, nfe, notes, prompt, _, run = self._reverse(count, seed, opts)
        return Samples(images=images, nfe=nfe, seconds=time.perf_counter() - start,
                       info={"prompt": prompt, "notes": notes, **runtime.describe_choice(run, self.device)})

    def sample_latents(self, count, *, seed=0, options=None):
        """(noise, latents) on the CPU: the seeded noise the reverse process starts from and the
        first-stage latents it ends at, before decoding (in the first stage's units, as its ``encode``
        gives them); ``sample`` with the same seed and options decodes these latents. What a student
        distilled from this model's sampler trains on (genlab_flow's ``flow-distill``)."""
        return self._reverse(count, seed, self.parse_options(options), decode=False)

    def attention_maps(self, *, seed=0, options=None) -> dict:
        """One sample and, per prompt token, its cross-attention map over the image (summed over
        heads, layers and steps, then normalised so the tokens' maps sum to 1 at every position)."""
        opts = self.parse_options(options)
        if self.network.config.conditioning not in ("crossattn", "hybrid"):
            raise GenlabError(f"this checkpoint conditions by {self.network.config.conditioning}: it has no cross-attention to show")
        if "{digit}" in opts.prompt:
            opts = opts.model_copy(update={"prompt": opts.prompt.replace("{digit}", "7")})
        images, nfe, notes, prompt, recorder, _ = self._reverse(1, seed, opts, attention=True)
        tokens = self.network.tokenizer.convert_ids_to_tokens(
            self.network.tokenizer(prompt, truncation=True, max_length=self.network.config.max_prompt_tokens)["input_ids"])
        maps = recorder.token_maps(len(tokens), size=images.shape[-1]).cpu()
        return {"image": images[0], "tokens": tokens, "maps": maps, "nfe": nfe, "notes": notes}

    def latent_shape(self):
        c = self.network.config
        return (c.latent_channels, c.latent_size, c.latent_size)

    def image_shape(self):
        c = self.network.first_stage.config  # the images its first stage encodes and decodes
        return (c.in_channels, c.image_size, c.image_size)

    def decoder(self, backend: str = "auto"):
        """The first stage's decoder as ``genlab.runtime`` runs it (fp32): ``decoder(z)``, z in its units."""
        return decoder_runner(self, self.network.first_stage, self.device, backend)

    def decode(self, latents):
        return self.decoder()(latents.float().to(self.device) / self.network.config.scale_factor).cpu()

    def prompt_metrics(self, *, per_prompt: int = 20, seed: int = 0, options=None) -> dict:
        """Digit accuracy over prompts "0".."9", and attribute accuracy over "a thick/thin D" and
        "an upright/a slanted D": the attribute measured on the sample (with the bands the training
        captions used) must match the one asked for."""
        from tqdm.auto import tqdm

        from genlab.features import classify

        from . import captions

        base = self.parse_options(options).model_dump()
        edges = self.network.config.band_edges
        digit_hits, attribute_hits = [], {"thickness": [], "slant": []}
        for digit in tqdm(range(10), desc="prompt accuracy", unit="digit", leave=False):
            images = self.sample(per_prompt, seed=seed + digit, options={**base, "prompt": str(digit)}).images
            digit_hits += (classify(images) == digit).tolist()
            for attribute, words in (("thickness", captions.THICKNESS_WORDS), ("slant", captions.SLANT_WORDS)):
                for band in (0, 2):
                    word = words[band]
                    article = "an" if word[0] in "aeiou" else "a"
                    prompt = f"{article} {word} {captions.DIGIT_WORDS[digit]}"
                    images = self.sample(per_prompt, seed=seed + 100 * (band + 1) + digit,
                                         options={**base, "prompt": prompt}).images
                    measured = captions.bands(captions.measure(images.numpy()), edges)[attribute]
                    attribute_hits[attribute] += (measured == band).tolist()
        mean = lambda hits: sum(hits) / len(hits)
        return {
            "prompt_accuracy": mean(digit_hits),
            "attribute_accuracy": {k: mean(v) for k, v in attribute_hits.items()},
            "attribute_chance": 1 / 3,
            "samples": len(digit_hits) + sum(len(v) for v in attribute_hits.values()),
            "options": {k: v for k, v in base.items() if k != "prompt"},
            "attention": self.attention_localization(seed=seed, options=base),
        }

    def attention_localization(self, *, seed: int = 0, options=None) -> dict | None:
        """Does the digit token's cross-attention fall on the strokes? Over prompts "D" and "a thick
        <word>" for every digit: the mean stroke AUC and contrast of the digit token's map (see
        ``genlab.metrics.stroke_localization``), and the same for the other tokens."""
        from genlab.metrics import stroke_localization

        from . import captions

        if self.network.config.conditioning not in ("crossattn", "hybrid"):
            return None
        base = self.parse_options(options).model_dump()
        special = set(self.network.tokenizer.all_special_tokens)  # [CLS] is a sink, not a word
        digit, other = [], []
        for d in range(10):
            for prompt in (str(d), f"a thick {captions.DIGIT_WORDS[d]}"):
                out = self.attention_maps(seed=seed + d, options={**base, "prompt": prompt})
                image = out["image"][0].cpu().numpy()
                for token, heat in zip(out["tokens"], out["maps"].cpu().numpy()):
                    if token in special:
                        continue
                    (digit if token in (str(d), captions.DIGIT_WORDS[d]) else other).append(
                        stroke_localization(heat, image))

        def avg(rows, key):
            return sum(r[key] for r in rows) / len(rows) if rows else None

        return {"digit_token_auc": avg(digit, "auc"), "digit_token_contrast": avg(digit, "contrast"),
                "other_tokens_auc": avg(other, "auc"), "maps": len(digit)}


@genlab.hookimpl
def register_models(register):
    register(LDMAutoencoder)
    register(LDM)
