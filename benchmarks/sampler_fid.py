"""Does a faster way of running a sampler change what it samples? Classifier FID at N = 1,000 of each
backend/precision against plain PyTorch fp32 (which matches diffusers' own loops within 1e-4).

    python -m benchmarks.sampler_fid --model ddpm [--weights DIR] --options '{"sampler": "dpm-solver++", "steps": 20}' \\
        --variants torch:fp32,openvino:bf16 [--n 1000] [--seeds 0,1,2]

For every seed, each variant draws N samples (batches of 250, seeded as the eval runner seeds them:
seed * 100003 + batch) and is scored against the same N training digits (the eval's reference draw
for that seed) with the bundled MNIST classifier's features (``genlab.evals.runner.fidelity_metrics``).
Prints FID per seed and mean ± standard deviation over seeds, and the mean |difference| of the
variant's images from fp32's; writes the same to ``benchmarks/results/fid-<model>-<setting>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from . import common


def main(argv=None) -> dict:
    import torch

    from genlab import get_model
    from genlab.datasets import load_dataset, to_uint8
    from genlab.evals.runner import fidelity_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--options", default="{}", help="JSON sampling options")
    parser.add_argument("--variants", default="torch:fp32,auto:auto", help="backend:precision,...")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = json.loads(args.options)
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    model = get_model(args.model, weights=args.weights)
    train = load_dataset("mnist-5k", "train")
    rows: dict = {f"{b} {p}": {"fid": [], "seconds": [], "runs_on": None, "mean_abs_diff_vs_first": []} for b, p in variants}
    started = time.perf_counter()
    print(f"{args.model} {options}, N={args.n}, seeds {seeds}, {torch.get_num_threads()} thread(s), load {common.load()}",
          flush=True)
    for seed in seeds:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        reference = train.images[order[:args.n]]
        first = None
        for backend, precision in variants:
            name = f"{backend} {precision}"
            start = time.perf_counter()
            batches, made, info = [], 0, {}
            while made < args.n:
                count = min(args.batch, args.n - made)
                result = model.sample(count, seed=seed * 100_003 + len(batches),
                                      options={**options, "backend": backend, "precision": precision})
                batches.append(result.images)
                info = result.info
                made += count
            images = torch.cat(batches)
            seconds = time.perf_counter() - start
            fid = fidelity_metrics(to_uint8(images), reference, "mnist-classifier", seed=seed)["fid"]
            row = rows[name]
            row["fid"].append(round(fid, 2))
            row["seconds"].append(round(seconds, 1))
            row["runs_on"] = {k: info[k] for k in ("backend", "precision", "mode") if k in info}
            if first is None:
                first = images
            else:
                row["mean_abs_diff_vs_first"].append(round(float((images - first).abs().mean()), 4))
            print(f"  seed {seed} {name:<22} ({row['runs_on']}): FID {fid:6.2f}  ({seconds:.0f} s, load {common.load()})",
                  flush=True)
    summary = {"model": args.model, "weights": str(model.weights), "options": options, "n": args.n, "seeds": seeds,
               "threads": torch.get_num_threads(), "variants": rows, "wall_seconds": round(time.perf_counter() - started),
               "command": "python -m benchmarks.sampler_fid " + " ".join(argv or __import__("sys").argv[1:])}
    for name, row in rows.items():
        fids = row["fid"]
        row["mean"] = round(statistics.fmean(fids), 2)
        row["std"] = round(statistics.stdev(fids), 2) if len(fids) > 1 else None
        print(f"{name:<22} FID {row['mean']:.2f} ± {row['std'] if row['std'] is not None else 'n/a'} over {len(fids)} seed(s)")
    setting = "-".join(f"{v}" for k, v in options.items() if k != "prompt").replace(" ", "") or "default"
    path = args.out or str(common.RESULTS / f"fid-{args.model}-{setting}.json")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
