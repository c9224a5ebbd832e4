"""The eval's metric code against independent computations on small fixed inputs."""

import math

import numpy as np
import pytest
import torch

from genlab.evals.measures import latent_usage, loss_stability, memorization, path_smoothness


def _sqrtm_psd(a):
    """Square root of a symmetric PSD matrix by eigendecomposition (independent of scipy's sqrtm)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _closed_form_fid(mu1, s1, mu2, s2):
    root = _sqrtm_psd(s1)
    cross = _sqrtm_psd(root @ s2 @ root)  # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def test_fid_of_two_gaussians_matches_the_closed_form():
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    rng = np.random.default_rng(0)
    d = 4
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.25, 2.0])
    expected = _closed_form_fid(mu1, s1, mu2, s2)
    # from exact statistics: the formula itself
    exact = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert exact["frechet_inception_distance"] == pytest.approx(expected, rel=1e-6)
    # from 40,000 features per set: the estimate lands near the true distance
    f1 = torch.from_numpy(rng.multivariate_normal(mu1, s1, size=40_000))
    f2 = torch.from_numpy(rng.multivariate_normal(mu2, s2, size=40_000))
    estimated = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)
    assert estimated["frechet_inception_distance"] == pytest.approx(expected, rel=0.03)
    # a shifted mean adds exactly |shift|^2
    shifted = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu1 + 3.0, "sigma": s1}, False)
    assert shifted["frechet_inception_distance"] == pytest.approx(9.0 * d, rel=1e-6)


def _kernel(p, q, degree=3, coef0=1.0):
    return (p @ q.T / p.shape[1] + coef0) ** degree


def _unbiased_mmd2(x, y, degree=3, coef0=1.0):
    """MMD^2 with k(x, y) = (x.y / d + coef0)^degree, written out from the definition."""
    d = x.shape[1]
    def k(p, q):
        return (p @ q.T / d + coef0) ** degree

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = len(x)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return within - 2 * kxy.mean()


def test_kid_is_the_unbiased_mmd_and_averages_to_zero_for_one_distribution():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 6)) + 0.5
    # one subset holding every feature: torch-fidelity's KID is exactly the unbiased estimator
    one = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=1, kid_subset_size=50,
                                 kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=0, verbose=False)
    assert one["kernel_inception_distance_mean"] == pytest.approx(_unbiased_mmd2(x, y), rel=1e-6)
    # unbiased: over many independent pairs of sets from the same distribution the mean is ~0
    # (a biased estimator would be positive by about 2 E[k(x,x) - k(x,y)] / m)
    values = []
    for seed in range(200):
        r = np.random.default_rng(100 + seed)
        values.append(_unbiased_mmd2(r.normal(size=(20, 6)), r.normal(size=(20, 6))))
    values = np.array(values)
    assert abs(values.mean()) < 3 * values.std() / math.sqrt(len(values))
    # the biased estimator keeps the diagonal k(x, x) terms: it sits well above zero here
    biased = []
    for seed in range(200):
        r = np.random.default_rng(100 + seed)
        x, y = r.normal(size=(20, 6)), r.normal(size=(20, 6))
        biased.append(_kernel(x, x).mean() + _kernel(y, y).mean() - 2 * _kernel(x, y).mean())
    assert np.mean(biased) > 10 * abs(values.mean())


def test_memorization_flags_copies_and_not_fresh_digits():
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(200, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    heldout = (torch.rand(100, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    copies = train[:50].clone()
    copies[:, :, 0, 0] ^= 1  # one grey level off: still a copy
    copied = memorization(copies, train, heldout)
    assert copied["copies"] == 1.0 and copied["ratio"] < 0.01
    assert {p["train"] for p in copied["closest_pairs"]} <= set(range(50))
    assert all(p["train"] == p["sample"] for p in copied["closest_pairs"])
    fresh = memorization((torch.rand(100, 1, 8, 8, generator=g) * 255).to(torch.uint8), train, heldout)
    assert fresh["copies"] < 0.1 and 0.8 < fresh["ratio"] < 1.25


def test_path_smoothness_of_an_even_walk_and_of_a_jump():
    a, b = torch.zeros(3), torch.tensor([3.0, 4.0, 0.0])  # |b - a| = 5
    t = torch.linspace(0, 1, 11)[:, None]
    even = path_smoothness(((1 - t) * a + t * b)[None])
    assert even["path_over_direct"] == pytest.approx(1.0)
    assert even["largest_step"] == pytest.approx(0.1)
    assert even["ppl"] == pytest.approx(25.0)  # (|b - a| / 10 / (1/10))^2
    jump = torch.stack([a] * 5 + [b] * 6)[None]
    measured = path_smoothness(jump)
    assert measured["largest_step"] == pytest.approx(1.0) and measured["ppl"] == pytest.approx(25.0 * 10)
    detour = torch.stack([a, torch.tensor([0.0, 0.0, 5.0]), b])[None]
    assert path_smoothness(detour)["path_over_direct"] == pytest.approx((5 + math.sqrt(50)) / 5)


def test_latent_usage_counts_active_units_and_matches_torch_kl():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 0.5, 0.05, 0.0])
    logvar = torch.randn(500, 4, generator=g) * 0.1 - torch.tensor([2.0, 1.0, 0.0, 0.0])
    usage = latent_usage(mean, logvar)
    assert usage["latent_dim"] == 4 and usage["active_units"] == 2  # variances 1, 0.25, 0.0025, 0
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert usage["kl_per_dim"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert usage["kl_total"] == pytest.approx(float(expected.sum()), rel=1e-5)
    assert "kl_per_dim" not in latent_usage(mean)  # a deterministic encoder has activity only


def test_loss_stability_counts_spikes_and_nans():
    calm = [{"loss": 1.0 / (1 + i / 10)} for i in range(40)]
    assert loss_stability(calm)["spikes"] == 0 and loss_stability(calm)["late_over_mid"] < 1
    spiky = calm[:30] + [{"loss": 50.0}] + [{"loss": float("nan")}] + calm[32:]
    measured = loss_stability(spiky)
    assert measured["spikes"] == 1 and measured["non_finite"] == 1
    assert loss_stability(calm[:5]) is None
    diverged = calm[:5] + [{"loss": float("nan")}] * 35  # the run it exists to catch must not crash it
    assert loss_stability(diverged) == {"logged": 40, "non_finite": 35, "spikes": None,
                                        "relative_std": None, "late_over_mid": None}


def test_stroke_localization_is_the_roc_auc_of_the_map_as_a_stroke_detector():
    from sklearn.metrics import roc_auc_score

    from genlab.metrics import stroke_localization

    rng = np.random.default_rng(0)
    image = (rng.random((28, 28)) > 0.7).astype(float)
    heat = 0.3 * image + rng.random((28, 28))
    measured = stroke_localization(heat, image)
    assert measured["auc"] == pytest.approx(roc_auc_score(image.ravel() > 0.5, heat.ravel()))
    assert measured["contrast"] == pytest.approx(heat[image > 0.5].mean() / heat[image <= 0.5].mean())
    assert stroke_localization(image, image)["auc"] == 1.0
    assert stroke_localization(1 - image, image)["auc"] == 0.0
    assert stroke_localization(np.ones((28, 28)), image) == {"auc": 0.5, "contrast": 1.0}
