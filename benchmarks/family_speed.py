"""Images per second of each bundled family at its best-FID setting, on an otherwise idle machine.

    python -m benchmarks.family_speed --threads 2

The eval report measures speed while it works (other processes may share the machine); this is the
clean comparison behind "latent diffusion samples faster than pixel diffusion at its best FID".
Printed, never asserted.
"""

from __future__ import annotations

import argparse
import time

# each family's best setting in evals/reports/bundled (lowest mean FID)
BEST = {
    "vae": {},
    "ddpm": {"sampler": "dpm-solver++", "steps": 20},
    "ldm": {"prompt": "{digit}", "guidance": 1.0, "sampler": "dpm-solver++", "steps": 10},
}


def main() -> None:
    import torch

    from genlab import get_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speeds = {}
    for model_id, options in BEST.items():
        model = get_model(model_id)
        model.sample(8, seed=99, options=options)  # load weights, warm up
        start = time.perf_counter()
        for i in range(args.batches):
            model.sample(args.batch, seed=i, options=options)
        speeds[model_id] = args.batch * args.batches / (time.perf_counter() - start)
        print(f"{model_id:5s} {options}: {speeds[model_id]:,.1f} images/s")
    print(f"ldm / ddpm: {speeds['ldm'] / speeds['ddpm']:.2f}x; vae / ddpm: {speeds['vae'] / speeds['ddpm']:,.0f}x "
          f"({args.threads} threads, batch {args.batch})")


if __name__ == "__main__":
    main()
