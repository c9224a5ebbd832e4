"""genlab's DDPM sampler on every backend and precision against diffusers' stock DDIMPipeline: same
weights, steps, batch and initial noise, timed A/B/A/B in one run.

    python -m benchmarks.ddpm_sampling [--weights DIR] [--steps 50] [--batch 64] [--repeats 3] [--threads 1]

Prints, per variant (plain PyTorch fp32, bf16 autocast, ONNX Runtime, OpenVINO fp32 and bf16, and
``auto``: what the probe picked for this machine), images/s, the ratio to the pipeline (> 1: genlab is
faster), the UNet's GFLOP/s over the whole sampler and its fraction of this CPU's peak (a 3x3 conv
measured now, in the variant's precision), and how far its samples are from the pipeline's.
"""

from __future__ import annotations

import argparse

from . import common

VARIANTS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
            ("auto", "auto")]


def main(argv=None):
    import torch
    from genlab_ddpm.network import Denoiser

    from genlab import get_model, runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="DDPM checkpoint folder (default: the bundled one)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = get_model("ddpm", weights=args.weights)
    unet = model.network
    c = unet.config
    runs = {"diffusers DDIMPipeline": common.ddim_pipeline(unet, args.steps, args.batch, args.seed)}
    for backend, precision in VARIANTS:
        if backend in runtime.GRAPH_BACKENDS and not runtime.installed(backend):
            continue
        options = {"sampler": "ddim", "steps": args.steps, "eta": 0.0, "backend": backend, "precision": precision}
        runs[f"genlab {backend} {precision}"] = (lambda o=options: model.sample(args.batch, seed=args.seed, options=o).images)
    print(f"DDIM, {args.steps} steps, batch {args.batch}, {c.prediction_type}-prediction, {c.beta_schedule} betas, "
          f"medians of {args.repeats} interleaved repeats, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load {common.load()}", flush=True)
    timed = common.interleaved(runs, args.repeats)
    peaks = common.measured_peaks(torch.get_num_threads())
    work = common.flops(Denoiser(unet), (torch.zeros(args.batch, c.in_channels, c.sample_size, c.sample_size),
                                         torch.full((args.batch,), 500, dtype=torch.long))) * args.steps
    chosen = model.sample(1, seed=0, options={"sampler": "ddim", "steps": 2}).info
    reference = timed["diffusers DDIMPipeline"]
    print(f"UNet: {work / args.steps / 1e9:.2f} GFLOP per call; peaks now: {peaks} GFLOP/s; auto chose "
          f"{chosen['backend']} {chosen['precision']}")
    for name, row in timed.items():
        bf16 = name.endswith("bf16") or (name.endswith("auto auto") and chosen["precision"] == "bf16")
        gflops = work / row["median"] / 1e9
        peak = peaks["bf16 conv" if bf16 else "fp32 conv"]
        diff = "" if row is reference else f"   max |diff| vs pipeline {float((row['result'] - reference['result']).abs().max()):.1e}"
        print(f"{name:<28} {args.batch / row['median']:7.1f} images/s  {reference['median'] / row['median']:5.2f}x  "
              f"{gflops:6.1f} GFLOP/s = {gflops / peak:4.0%} of {'bf16' if bf16 else 'fp32'} conv peak{diff}")
    print(f"load after: {common.load()}")


if __name__ == "__main__":
    main()
