"""Likelihood baselines: what a model must beat for its bits/dim to mean it learned something.

An independent histogram per pixel knows where ink usually is and nothing else (no strokes, no
correlations between pixels); a generative model that does not beat it has learned less than a
per-pixel count.
"""

from __future__ import annotations

import math

import numpy as np

SMOOTHING = 1.0  # add-one (Laplace): every value of every pixel counts as seen once more


def pixel_histogram_bpd(train_uint8, heldout_uint8, *, smoothing: float = SMOOTHING) -> dict:
    """-log2 P(x) per dimension of held-out 8-bit images under independent per-pixel histograms.

    For each pixel position, P(value) = (count of the value there in ``train_uint8`` + smoothing)
    / (training images + 256 smoothing); an image's probability is the product over its pixels.
    These are exact probabilities of the 8-bit values (no dequantization). Images: uint8 arrays or
    tensors [N, ...] of one shape. Returns ``{"bpd", "bpd_stderr" (over the held-out images),
    "method", "convention", "images", "train_images", "smoothing"}``.
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing must be positive (an unseen value would get probability 0), got {smoothing}")
    train = np.asarray(train_uint8, dtype=np.int64).reshape(len(train_uint8), -1)
    heldout = np.asarray(heldout_uint8, dtype=np.int64).reshape(len(heldout_uint8), -1)
    if train.shape[1] != heldout.shape[1]:
        raise ValueError(f"training images have {train.shape[1]} pixels, held-out images {heldout.shape[1]}")
    n, dims = train.shape
    counts = np.zeros((dims, 256))
    np.add.at(counts, (np.broadcast_to(np.arange(dims), train.shape), train), 1.0)
    log_p = np.log2(counts + smoothing) - math.log2(n + 256 * smoothing)  # [dims, 256]
    per_image = -log_p[np.arange(dims), heldout].mean(axis=1)  # bits/dim of each held-out image
    return {
        "bpd": float(per_image.mean()),
        "bpd_stderr": float(per_image.std(ddof=1) / math.sqrt(len(per_image))) if len(per_image) > 1 else 0.0,
        "method": (f"independent per-pixel histogram of the {n} training images, add-{smoothing:g} smoothing; "
                   "exact probabilities of the 8-bit values"),
        "convention": "discrete",
        "images": len(per_image),
        "train_images": n,
        "smoothing": smoothing,
    }
