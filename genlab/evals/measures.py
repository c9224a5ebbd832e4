"""Measurements beyond torch-fidelity's: memorization, interpolation smoothness, sharpness, latent usage.

Each takes tensors and returns plain numbers (and image indices), so the runner stays a loop and
every measure can be tested on small fixed inputs.
"""

from __future__ import annotations


def _flat(images):
    """uint8 or float images [N, C, H, W] -> float rows in [0, 1]."""
    import torch

    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    return x.flatten(1)


def nearest_distances(queries, pool, batch: int = 500):
    """(distance, index) of each query's nearest image in ``pool``, Euclidean in [0, 1] pixel space."""
    import torch

    pool_flat = _flat(pool)
    distances, indices = [], []
    for chunk in _flat(queries).split(batch):
        d = torch.cdist(chunk, pool_flat)
        best = d.min(1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def memorization(samples, train, heldout, *, closest: int = 8) -> dict:
    """Are samples closer to the training set than unseen real digits are?

    Each sample's distance to its nearest training image is compared with the same distance for
    held-out real images, which the model never saw: a model that copies its training data puts
    many samples below the held-out distribution (``copies``: the share of samples nearer than the
    held-out images' 1st percentile). Also returns the ``closest`` sample/training pairs.
    """
    import torch

    d_samples, nearest = nearest_distances(samples, train)
    d_heldout, _ = nearest_distances(heldout, train)
    threshold = float(torch.quantile(d_heldout, 0.01))
    order = torch.argsort(d_samples)[:closest]
    return {
        "sample_median": float(d_samples.median()),
        "heldout_median": float(d_heldout.median()),
        "ratio": float(d_samples.median() / d_heldout.median()),
        "copy_threshold": threshold,
        "copies": float((d_samples < threshold).float().mean()),
        "closest_pairs": [{"sample": int(i), "train": int(nearest[i]), "distance": float(d_samples[i])} for i in order],
    }


def path_smoothness(frames_features) -> dict:
    """A perceptual-path-length style measure of interpolation paths.

    ``frames_features``: [pairs, steps, D] features of the frames of each path. With eps = 1/(steps-1)
    the path length is sum_i |f_i+1 - f_i| and PPL = mean_i (|f_i+1 - f_i| / eps)^2 (Karras et al. 2019
    measure the same quantity with LPIPS at random t; here it is every step, in classifier features).
    ``largest_step`` is the largest single step's share of the path: 1/(steps-1) for a uniform walk,
    near 1 when the path jumps from one image to the other.
    """
    steps = frames_features.shape[1]
    eps = 1.0 / (steps - 1)
    step = (frames_features[:, 1:] - frames_features[:, :-1]).norm(dim=-1)  # [pairs, steps-1]
    length = step.sum(1)
    direct = (frames_features[:, -1] - frames_features[:, 0]).norm(dim=-1)
    return {
        "ppl": float(((step / eps) ** 2).mean()),
        "path_over_direct": float((length / direct.clamp_min(1e-8)).mean()),
        "largest_step": float((step.max(1).values / length.clamp_min(1e-8)).mean()),
        "pairs": int(frames_features.shape[0]),
        "steps": int(steps),
    }


def sharpness(images) -> float:
    """Mean squared horizontal and vertical pixel differences, images in [0, 1]: blur lowers it."""
    import torch

    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    dx = (x[..., :, 1:] - x[..., :, :-1]) ** 2
    dy = (x[..., 1:, :] - x[..., :-1, :]) ** 2
    return float(dx.mean() + dy.mean())


def latent_usage(mean, logvar=None, *, threshold: float = 0.01) -> dict:
    """Active units (Burda et al. 2016: Var_x E_q[z_d] > 0.01) and, given log-variances, the per-dimension
    KL(q(z_d|x) || N(0, 1)) averaged over images, in nats. ``mean``/``logvar``: [N, ...] posteriors."""
    mu = mean.flatten(1).float()
    activity = mu.var(0)
    out = {
        "latent_dim": int(mu.shape[1]),
        "active_units": int((activity > threshold).sum()),
        "activity": activity.tolist(),
    }
    if logvar is not None:
        lv = logvar.flatten(1).float()
        kl = 0.5 * (mu**2 + lv.exp() - 1 - lv)
        out["kl_per_dim"] = kl.mean(0).tolist()
        out["kl_total"] = float(kl.sum(1).mean())
    return out


def loss_stability(log: list[dict]) -> dict | None:
    """How calm a training run's loss curve was, from its logged losses (one batch each).

    Over the second half of the run: ``spikes`` (losses above 3x that half's median), the relative
    standard deviation, and ``late_over_mid`` (median of the last quarter over the second quarter's:
    below 1 means the loss was still falling). ``non_finite`` counts NaN/inf losses anywhere.
    """
    import math
    import statistics

    losses = [float(e["loss"]) for e in log if e.get("loss") is not None]
    if len(losses) < 8:
        return None
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) < 8:  # a run that mostly diverged: only the NaNs can be counted
        return {"logged": len(losses), "non_finite": len(losses) - len(finite), "spikes": None,
                "relative_std": None, "late_over_mid": None}
    half = finite[len(finite) // 2 :]
    quarter = len(finite) // 4
    median = statistics.median(half)
    return {
        "logged": len(losses),
        "non_finite": len(losses) - len(finite),
        "spikes": sum(v > 3 * median for v in half),
        "relative_std": statistics.stdev(half) / abs(statistics.fmean(half)),
        "late_over_mid": statistics.median(finite[-quarter:]) / statistics.median(finite[quarter : 2 * quarter]),
    }
