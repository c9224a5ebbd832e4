"""What the benchmarks share: the machine and its load, interleaved timing, diffusers' own sampling
loops on genlab's weights (the baselines), FLOP counting and the CPU's peaks.

Nothing here is asserted anywhere: benchmarks print and write numbers, tests never time anything.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# peaks of the project's 2-core machine (AMD EPYC, AVX-512 with AVX512_BF16), from
# ../shared/measurements/cpu-speed-2026-11.md, GFLOP/s at 1 and 2 threads; the bench also measures its own
FILE_PEAKS = {"fp32 conv": {1: 240, 2: 460}, "fp32 matmul": {1: 103, 2: 199}, "bf16 matmul": {1: 402, 2: 744}}


def load() -> str:
    """The load averages, as uptime prints them."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"
    except OSError:
        return "unknown"


def machine() -> dict:
    import torch

    from genlab import runtime

    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    return {"cpu": runtime.cpu_model(), "cpus": os.cpu_count(), "isa": isa, "platform": platform.platform(),
            "torch": torch.__version__, "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def interleaved(functions: dict, repeats: int, warmup: bool = True) -> dict:
    """Seconds per call of each function, timed A/B/C, A/B/C, ... ``repeats`` times (load then falls
    on every side alike), after one untimed call each: {name: {"median", "all", "result"}}."""
    results = {name: fn() if warmup else None for name, fn in functions.items()}
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(t), "all": t, "result": results[name]} for name, t in times.items()}


# ----- diffusers' own loops on genlab's weights (the baselines) -----------------------------------
def ddim_pipeline(unet, steps: int, batch: int, seed: int):
    """diffusers' stock DDIMPipeline on the DDPM's UNet (its memory format as diffusers leaves it)."""
    import torch
    from diffusers import DDIMPipeline

    pipeline = DDIMPipeline(unet=unet, scheduler=unet.scheduler("ddim"))
    pipeline.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator().manual_seed(seed)
        out = pipeline(batch_size=batch, generator=generator, num_inference_steps=steps, eta=0.0, output_type="np").images
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    return run


def ddpm_pipeline(unet, sampler: str, steps: int, batch: int, seed: int):
    """diffusers' stock DDPMPipeline, which runs whatever scheduler it is given: here genlab's own
    (DPM-Solver++ for the DDPM's best FID)."""
    import torch
    from diffusers import DDPMPipeline

    pipeline = DDPMPipeline(unet=unet, scheduler=unet.scheduler(sampler))
    pipeline.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator().manual_seed(seed)
        out = pipeline(batch_size=batch, generator=generator, num_inference_steps=steps, output_type="np").images
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    return run


def ldm_loop(net, *, prompt: str, guidance: float, sampler: str, steps: int, batch: int, seed: int):
    """The latent loop as diffusers' text-to-image pipelines write it, on the LDM's own networks:
    prompts through the text encoder, UNet2DConditionModel + scheduler with classifier-free guidance,
    then the first-stage decoder. Plain PyTorch fp32, the way diffusers runs it."""
    import torch

    prompts = [prompt.replace("{digit}", str(i % 10)) for i in range(batch)]
    guided = guidance != 1.0

    def run():
        generator = torch.Generator().manual_seed(seed)
        scheduler = net.scheduler(sampler)
        scheduler.set_timesteps(steps)
        c = net.config
        device = next(net.unet.parameters()).device  # noise drawn on the CPU, as genlab draws it
        z = torch.randn((batch, c.latent_channels, c.latent_size, c.latent_size), generator=generator).to(device)
        z = z * scheduler.init_noise_sigma
        kwargs = {"generator": generator} if sampler in ("ddpm", "ddim") else {}
        with torch.no_grad():
            cond = net.condition(prompts + ([""] * batch if guided else []))
            for t in scheduler.timesteps:
                z_in = torch.cat([z, z]) if guided else z
                eps = net.unet(z_in, t, encoder_hidden_states=cond["encoder_hidden_states"],
                               encoder_attention_mask=cond["mask"]).sample
                if guided:
                    eps_c, eps_u = eps.chunk(2)
                    eps = eps_u + guidance * (eps_c - eps_u)
                z = scheduler.step(eps, t, z, **kwargs).prev_sample
            return net.first_stage.decode(z / c.scale_factor)

    return run


# ----- FLOPs and peaks ------------------------------------------------------------------------
def flops(module, inputs: tuple) -> int:
    """FLOPs of one forward (convolutions, matmuls, attention: what torch.utils.flop_counter counts)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def measured_peaks(threads: int, repeats: int = 5) -> dict:
    """GFLOP/s of the kernels the measurements file calls peaks, measured now (same load as the rest):
    a 3x3 convolution 64->64 on 56x56, batch 32, channels-last, in fp32 and under bf16 autocast."""
    import torch

    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(32, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    work = 2 * 9 * 64 * 64 * 56 * 56 * 32
    out = {}
    for name, precision in (("fp32 conv", None), ("bf16 conv", torch.bfloat16)):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=precision, enabled=precision is not None):
                conv(x)
        run()
        best = min(_timed(run) for _ in range(repeats))
        out[name] = round(work / best / 1e9, 1)
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
