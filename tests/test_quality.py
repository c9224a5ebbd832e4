"""Sample-quality math against independent computations and hand-computed values."""

import numpy as np
import pytest
import torch

from genlab.evals.quality import density_coverage, fid_infinity, frechet_distance, quality_from_features


@pytest.mark.parametrize("n, dim", [(50, 16), (40, 128)])  # more images than dimensions, and fewer
def test_frechet_distance_matches_torch_fidelitys_eigenvalue_route(n, dim):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(n, dim)))
    b = torch.from_numpy(rng.normal(0.3, 1.5, size=(n + 7, dim)))
    reference = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert frechet_distance(a, b) == pytest.approx(reference["frechet_inception_distance"], rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_infinity_removes_the_small_sample_bias():
    # two unit Gaussians whose means are 1.5 apart in each of 8 dimensions: the true FID is 8 * 1.5^2 = 18
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2000, 8)), rng.normal(1.5, 1.0, size=(2000, 8))
    at_100 = frechet_distance(a[:100], b[:100])
    result = fid_infinity(a, b, n_min=100, n_max=2000, draws=3, seed=0)
    assert at_100 > 18.2  # biased upward at small N (by about 2 * 8 / 100)
    assert result["fid_inf"] == pytest.approx(18.0, abs=0.3)
    assert result["slope"] > 0 and result["sizes"][0] == 100 and result["sizes"][-1] == 2000


REAL = np.arange(10, dtype=np.float32)[:, None]  # ten points on a line, 1 apart


def test_density_and_coverage_of_identical_disjoint_and_collapsed_sets():
    # k = 2: the radius of each real point is the distance to its 2nd neighbour: 1 inside, 2 at the ends.
    # identical: every sample lies in its own point's ball, and samples 1 and 8 also in the end points'
    # balls (distance 1 < 2): 12 hits / (k * 10 samples) = 0.6; every real point is covered.
    assert density_coverage(REAL, REAL, k=2) == pytest.approx({"density": 0.6, "coverage": 1.0})
    # disjoint: no sample in any ball, no real point covered
    assert density_coverage(REAL, REAL + 100, k=2) == pytest.approx({"density": 0.0, "coverage": 0.0})
    # collapsed onto the point 5: each sample is only in 5's own ball (1 / k = 0.5), and only 5 is covered
    collapsed = np.full((10, 1), 5.0, dtype=np.float32)
    assert density_coverage(REAL, collapsed, k=2) == pytest.approx({"density": 0.5, "coverage": 0.1})


def test_a_collapsed_model_scores_perfect_precision_but_little_coverage():
    real = torch.arange(100, dtype=torch.float32)[:, None]
    collapsed = torch.full((100, 1), 50.0)  # every sample the same typical digit
    metrics = quality_from_features({"f": collapsed}, {"f": real})
    assert metrics["precision"] == 1.0  # inside a real neighbourhood: precision cannot tell
    # k = 5: only the real points 48..52 (within 3 of 50) have a sample inside their ball
    assert metrics["coverage"] == pytest.approx(0.05) and metrics["recall"] < 0.1
    spread = quality_from_features({"f": real + 0.25}, {"f": real})
    assert spread["coverage"] == 1.0 and spread["precision"] == 1.0


def test_reconstruction_metrics_show_the_round_trips_a_mean_hides():
    from genlab.metrics import reconstruction_metrics

    original = torch.zeros(10, 1, 8, 8)
    reconstructed = original.clone()
    reconstructed[:8] += 0.001  # eight near-perfect round trips: MSE 1e-6, 60 dB
    reconstructed[8:] += torch.tensor([0.2, 0.5]).view(2, 1, 1, 1)  # two failures: 14 dB and 6 dB
    metrics = reconstruction_metrics(original, reconstructed)
    assert metrics["mse_median"] == pytest.approx(1e-6, rel=1e-3)
    assert metrics["mse_max"] == pytest.approx(0.25, rel=1e-6)
    assert metrics["failures"] == 2 and metrics["images"] == 10
    assert metrics["mse"] == pytest.approx((8e-6 + 0.04 + 0.25) / 10, rel=1e-4)
