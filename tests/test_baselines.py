"""The per-pixel histogram likelihood baseline against a hand computation."""

import math

import numpy as np
import pytest

from genlab.evals.baselines import pixel_histogram_bpd


def test_histogram_baseline_matches_a_hand_computation():
    train = np.array([[0, 255], [0, 10], [7, 255]], dtype=np.uint8)
    heldout = np.array([[0, 10], [3, 255]], dtype=np.uint8)
    out = pixel_histogram_bpd(train, heldout)
    # add-one: P(v at pixel d) = (count + 1) / (3 + 256)
    first = -(math.log2(3 / 259) + math.log2(2 / 259)) / 2  # 0 seen twice at pixel 0, 10 once at pixel 1
    second = -(math.log2(1 / 259) + math.log2(3 / 259)) / 2  # 3 never seen at pixel 0, 255 twice at pixel 1
    assert out["bpd"] == pytest.approx((first + second) / 2, rel=1e-12)
    assert out["bpd_stderr"] == pytest.approx(abs(first - second) / 2, rel=1e-12)  # std (ddof 1) / sqrt(2)
    assert out["images"] == 2 and out["train_images"] == 3 and out["convention"] == "discrete"
    assert "add-1 smoothing" in out["method"] and "per-pixel histogram" in out["method"]


def test_histogram_baseline_takes_image_tensors_and_other_smoothing():
    import torch

    train = torch.tensor([[[[0, 1]]], [[[0, 2]]]], dtype=torch.uint8)  # [N, C, H, W]
    heldout = torch.tensor([[[[0, 2]]]], dtype=torch.uint8)
    out = pixel_histogram_bpd(train, heldout, smoothing=0.5)
    expected = -(math.log2(2.5 / 130) + math.log2(1.5 / 130)) / 2
    assert out["bpd"] == pytest.approx(expected, rel=1e-12) and out["bpd_stderr"] == 0.0


def test_histogram_baseline_rejects_mismatched_images_and_no_smoothing():
    with pytest.raises(ValueError, match="pixels"):
        pixel_histogram_bpd(np.zeros((2, 4), np.uint8), np.zeros((1, 5), np.uint8))
    with pytest.raises(ValueError, match="smoothing"):
        pixel_histogram_bpd(np.zeros((2, 4), np.uint8), np.zeros((1, 4), np.uint8), smoothing=0)
