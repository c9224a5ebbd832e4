"""Image-quality numbers that several parts of genlab share."""

from __future__ import annotations


FAILED_ROUND_TRIP_DB = 20.0  # a round trip below this PSNR visibly changes the digit


def reconstruction_metrics(original, reconstructed) -> dict:
    """MSE, PSNR (dB) and SSIM of float images [N, C, H, W] in [0, 1] (SSIM by scikit-image), means
    over images, plus the per-image MSE's median, 99th percentile and maximum and how many round trips
    fail (PSNR below 20 dB): a mean can hide a few images that do not come back at all."""
    import numpy as np
    import torch
    from skimage.metrics import structural_similarity

    mse = (reconstructed - original).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    per_image = mse.double()
    distribution = {
        "mse_median": float(per_image.median()), "mse_p99": float(torch.quantile(per_image, 0.99)),
        "mse_max": float(per_image.max()), "failures": int((psnr < FAILED_ROUND_TRIP_DB).sum()),
        "failure_psnr_db": FAILED_ROUND_TRIP_DB, "images": len(per_image),
    }
    a = original.detach().cpu().numpy()
    b = reconstructed.detach().cpu().numpy()
    # 7x7 windows need images of at least 7 pixels a side; tiny ones use the largest odd window that fits
    window = min(7, min(a.shape[-2:]) - (1 - min(a.shape[-2:]) % 2))
    ssim = np.mean([structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=window)
                    for x, y in zip(a, b)])
    return {"mse": float(mse.mean()), "psnr": float(psnr.mean()), "ssim": float(ssim), **distribution}


def stroke_localization(heat, image, threshold: float = 0.5) -> dict:
    """How well an attention map [H, W] picks out a digit's strokes (pixels of ``image`` above ``threshold``).

    ``auc``: the chance that a random stroke pixel gets more attention than a random background pixel
    (ROC AUC; 0.5 = no spatial preference, 1 = every stroke pixel above every background pixel).
    ``contrast``: mean attention on strokes over mean attention on the background.
    """
    import numpy as np

    heat = np.asarray(heat, dtype=np.float64).ravel()
    ink = np.asarray(image).ravel() > threshold
    if ink.all() or not ink.any():
        return {"auc": 0.5, "contrast": 1.0}
    on, off = heat[ink], heat[~ink]
    greater = (on[:, None] > off[None, :]).mean()
    ties = (on[:, None] == off[None, :]).mean()
    return {"auc": float(greater + 0.5 * ties), "contrast": float(on.mean() / max(off.mean(), 1e-12))}
