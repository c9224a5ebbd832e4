"""genlab's DDIM sampler against diffusers' stock DDIMPipeline: same weights, steps and batch, one run.

    python -m benchmarks.ddpm_sampling [--weights DIR] [--steps 50] [--batch 64] [--repeats 3]

Prints images/s for each and their ratio (genlab / diffusers; >= 1 means genlab is not slower),
and how far genlab's samples are from the pipeline's (same initial noise) in float32 and bf16.
"""

from __future__ import annotations

import argparse
import time


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` timed calls (after one warm-up): the least disturbed measurement."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None):
    import torch
    from diffusers import DDIMPipeline

    from genlab import get_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="DDPM checkpoint folder (default: the bundled one)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = get_model("ddpm", weights=args.weights)
    unet = model.network
    pipeline = DDIMPipeline(unet=unet, scheduler=unet.scheduler("ddim"))
    pipeline.set_progress_bar_config(disable=True)

    def stock():
        generator = torch.Generator().manual_seed(args.seed)
        out = pipeline(batch_size=args.batch, generator=generator, num_inference_steps=args.steps, eta=0.0,
                       output_type="np").images
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def ours(precision):
        return lambda: model.sample(args.batch, seed=args.seed, options={
            "sampler": "ddim", "steps": args.steps, "eta": 0.0, "precision": precision}).images

    print(f"DDIM, {args.steps} steps, batch {args.batch}, best of {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # the stock pipeline runs the network in its default memory format
    unet.to(memory_format=torch.contiguous_format)
    stock_seconds, stock_images = best_of(stock, args.repeats)
    unet.to(memory_format=torch.channels_last)
    rows = [("diffusers DDIMPipeline", stock_seconds, None)]
    for precision in ("fp32", "bf16"):
        seconds, images = best_of(ours(precision), args.repeats)
        rows.append((f"genlab sampler ({precision})", seconds, float((images - stock_images).abs().max())))
    for name, seconds, diff in rows:
        extra = "" if diff is None else f"   max |diff| vs pipeline {diff:.2e}"
        print(f"{name:<28} {args.batch / seconds:8.1f} images/s{extra}")
    best_ours = min(seconds for name, seconds, diff in rows[1:] if diff is not None and diff < 0.05)
    print(f"ratio genlab / diffusers: {stock_seconds / rows[1][1]:.2f} (fp32), "
          f"{stock_seconds / best_ours:.2f} (fastest within tolerance 0.05)")


if __name__ == "__main__":
    main()
