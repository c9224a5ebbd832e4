"""Image-quality numbers that several parts of genlab share."""

from __future__ import annotations


def reconstruction_metrics(original, reconstructed) -> dict:
    """MSE, PSNR (dB) and SSIM of float images [N, C, H, W] in [0, 1] (SSIM by scikit-image)."""
    import numpy as np
    import torch
    from skimage.metrics import structural_similarity

    mse = (reconstructed - original).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    a = original.detach().cpu().numpy()
    b = reconstructed.detach().cpu().numpy()
    # 7x7 windows need images of at least 7 pixels a side; tiny ones use the largest odd window that fits
    window = min(7, min(a.shape[-2:]) - (1 - min(a.shape[-2:]) % 2))
    ssim = np.mean([structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=window)
                    for x, y in zip(a, b)])
    return {"mse": float(mse.mean()), "psnr": float(psnr.mean()), "ssim": float(ssim)}
