"""Recompute a report row's FID at equal N from its own sample shards, without genlab's metric code.

    python -m benchmarks.recompute_fid RUN_FOLDER ROW_LABEL [--n 500] [--seeds 0,1,2]

RUN_FOLDER is where `genlab eval SUITE --out RUN_FOLDER` wrote its samples/ (they are not committed
with a report: redraw them with the suite, which is seeded).

Reads the row's seeded shards (uint8 images, in order), takes the first N of each seed, draws the
seed's reference digits as the runner does (the mnist-5k train split, permuted by the seed, first N)
and the floor's held-out digits, and computes the Fréchet distance of the bundled MNIST classifier's
128-d features with numpy and scipy.linalg.sqrtm (mean and covariance with N - 1). The classifier is
the feature extractor genlab's numbers name; the estimator is written out here, so an error in
genlab's FID code would show as a disagreement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import linalg


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def features(images) -> np.ndarray:
    import torch

    from genlab.features import load_classifier

    net = load_classifier()
    with torch.inference_mode():
        return torch.cat([net.features(batch.float() / 255.0) for batch in images.split(250)]).double().numpy()


def shards(folder: Path):
    import torch
    from safetensors.torch import load_file

    paths = sorted(folder.glob("shard-*.safetensors"))
    if not paths:
        raise SystemExit(f"no sample shards in {folder}: give the folder `genlab eval` wrote them to")
    return torch.cat([load_file(str(p))["images"] for p in paths])


def main(argv=None) -> None:
    import torch

    from genlab import load_dataset
    from genlab.evals.runner import _slug  # how the runner names a row's samples/ folder (not metric code)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("row")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folder", default=None, help="the samples/ folder to read (default: the row's newest)")
    args = parser.parse_args(argv)
    slug = _slug(args.row)
    folders = ([Path(args.report) / "samples" / args.folder] if args.folder else
               sorted((Path(args.report) / "samples").glob(f"{slug}-*"), key=lambda p: p.stat().st_mtime))
    if not folders:
        raise SystemExit(f"no samples of {args.row!r} under {args.report}/samples")
    train = load_dataset("mnist-5k", "train", seed=0)
    heldout = features(load_dataset("mnist-5k", "heldout", seed=0).images[: args.n])
    rows, floors = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        reference = features(train.images[order[: args.n]])
        sample = features(shards(folders[-1] / f"seed-{seed}")[: args.n])
        rows.append(frechet(sample, reference))
        floors.append(frechet(heldout, reference))
    print(f"{args.row} ({folders[-1].name}), N = {args.n}: FID {np.mean(rows):.2f} ± {np.std(rows, ddof=1):.2f} "
          f"(per seed {', '.join(f'{v:.2f}' for v in rows)}); floor {np.mean(floors):.2f} ± {np.std(floors, ddof=1):.2f} "
          f"(per seed {', '.join(f'{v:.2f}' for v in floors)}); "
          f"ratio {np.mean(rows) / np.mean(floors):.3f}")


if __name__ == "__main__":
    main()
