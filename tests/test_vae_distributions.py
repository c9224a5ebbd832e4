"""The VAE decoders' distributions against independent computations: quadrature, high-precision
references (mpmath), scipy's logistic, and sums over the 256 values."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import logistic

from genlab_vae import VAE
from genlab_vae import distributions as D
from genlab_vae.network import VAENetwork

LOGITS = [-50.0, -32.0, -20.0, -16.0, -5.0, -1.0, -0.01, -1e-4, 0.0, 1e-7, 0.005, 0.3, 2.0, 16.0, 20.0, 32.0, 50.0]


def density(eta):
    return lambda x: math.exp(float(D.cb_log_prob(torch.tensor(x, dtype=torch.float64), torch.tensor(eta, dtype=torch.float64))))


def quad01(f, eta):
    """∫_0^1 f, with break points where the density changes fast (within a few 1/|eta| of an end)."""
    points = sorted({min(1.0, k / abs(eta)) for k in (1, 4, 16)} | {max(0.0, 1 - k / abs(eta)) for k in (1, 4, 16)}) if eta else None
    return integrate.quad(f, 0, 1, points=points, limit=200, epsabs=1e-12, epsrel=1e-10)[0]


@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_density_integrates_to_one(eta):
    assert quad01(density(eta), eta) == pytest.approx(1.0, abs=1e-8)


def test_torchs_continuous_bernoulli_does_not_integrate_to_one_at_extreme_logits():
    """The reason for our own: torch clamps the probability at float32 epsilon (so this test shows
    the quadrature above can fail)."""
    torch_cb = torch.distributions.ContinuousBernoulli(logits=torch.tensor(-20.0))
    mass = integrate.quad(lambda x: math.exp(float(torch_cb.log_prob(torch.tensor(x)))), 0, 1, points=[0.05, 0.2], limit=200)[0]
    assert mass == pytest.approx(0.80, abs=0.01)


def reference_log_prob(x, eta):
    """log C(eta) + x eta - log(1 + e^eta) at 50 digits, C = eta / tanh(eta / 2) (2 at 0)."""
    mpmath.mp.dps = 50
    e, x = mpmath.mpf(eta), mpmath.mpf(x)
    log_c = mpmath.log(e / mpmath.tanh(e / 2)) if eta != 0 else mpmath.log(2)
    return float(log_c + x * e - mpmath.log1p(mpmath.exp(e)))


def test_continuous_bernoulli_log_prob_matches_a_high_precision_reference():
    xs = [0.0, 1e-3, 0.25, 0.5, 0.9, 1.0]
    grid = [(x, eta) for x in xs for eta in LOGITS + [-100.0, -1e-9, 1e-9, 100.0]]
    x = torch.tensor([g[0] for g in grid], dtype=torch.float64)
    eta = torch.tensor([g[1] for g in grid], dtype=torch.float64)
    expected = torch.tensor([reference_log_prob(*g) for g in grid], dtype=torch.float64)
    torch.testing.assert_close(D.cb_log_prob(x, eta), expected, atol=1e-12, rtol=1e-12)
    # float32 logits (as the network gives them) lose only float32 rounding
    torch.testing.assert_close(D.cb_log_prob(x.float(), eta.float()).double(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_mean_cdf_and_icdf_agree_with_the_density(eta):
    f = density(eta)
    e = torch.tensor(eta, dtype=torch.float64)
    assert float(D.cb_mean(e)) == pytest.approx(quad01(lambda x: x * f(x), eta), abs=1e-9)
    for x in (0.1, 0.5, 0.97):
        by_quadrature = integrate.quad(f, 0, x, points=[p for p in (1 / abs(eta) if eta else 0.5,) if 0 < p < x],
                                       limit=200, epsabs=1e-12)[0]
        assert float(D.cb_cdf(torch.tensor(x, dtype=torch.float64), e)) == pytest.approx(by_quadrature, abs=1e-9)
    u = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    torch.testing.assert_close(D.cb_cdf(D.cb_icdf(u, e.expand(9)), e.expand(9)), u, atol=1e-9, rtol=0)


def test_continuous_bernoulli_has_finite_gradients_at_and_near_zero():
    eta = torch.tensor([0.0, 1e-8, -0.0099, 0.0101, -30.0], requires_grad=True)
    (D.cb_log_prob(torch.full((5,), 0.3), eta).sum() + D.cb_mean(eta).sum()).backward()
    assert torch.isfinite(eta.grad).all()
    # d/d eta of log p at eta = 0 is x - 1/2 (log C is even in eta)
    assert float(eta.grad[0]) == pytest.approx(0.3 - 0.5 + 1 / 12, abs=1e-6)  # + d mean / d eta = 1/12


def test_continuous_bernoulli_samples_have_its_mean():
    eta = torch.tensor([-40.0, -3.0, 0.0, 4.0]).repeat(50_000, 1)
    u = torch.rand(eta.shape, generator=torch.Generator().manual_seed(0))
    draws = D.cb_icdf(u, eta)
    assert draws.min() >= 0 and draws.max() <= 1
    torch.testing.assert_close(draws.mean(0), D.cb_mean(eta[0]), atol=4e-3, rtol=0)


# ----- 8-bit decoders -------------------------------------------------------------------------------
def mixture_params(components, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logit_pi = torch.randn(batch, 1, components, 2, 2, generator=g)
    mean = torch.tensor([-1.3, -1.0, -0.2, 0.999, 1.4])[torch.randint(0, 5, (batch, 1, components, 2, 2), generator=g)]
    log_scale = torch.tensor([-9.0, -6.0, -3.0, 0.0, 2.0])[torch.randint(0, 5, (batch, 1, components, 2, 2), generator=g)]
    return torch.cat([logit_pi, mean, log_scale], 2).view(batch, 3 * components, 2, 2).double()


@pytest.mark.parametrize("components", [1, 3])
def test_discretized_logistic_mixture_is_a_distribution_over_the_256_values(components):
    probs = D.logistic_mixture_probs(mixture_params(components), components)
    assert probs.shape == (3, 1, 256, 2, 2) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(2), torch.ones(3, 1, 2, 2, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_the_256_probabilities_at_once_are_the_log_probs_of_each_value(dtype, tolerance):
    components = 3
    params = mixture_params(components, batch=40, seed=3).to(dtype)  # 40 > one chunk of 32
    probs = D.logistic_mixture_probs(params, components)
    each = torch.stack([D.logistic_mixture_log_prob(torch.full((40, 1, 2, 2), v), params.double(), components).exp()
                        for v in range(256)], dim=2)
    assert probs.dtype == dtype
    torch.testing.assert_close(probs.double(), each, atol=tolerance, rtol=0)


def test_the_mixtures_mean_and_draws_from_its_edges_are_those_of_its_256_probabilities():
    components = 3
    params = mixture_params(components, batch=40, seed=4)
    probs = D.logistic_mixture_probs(params, components)
    torch.testing.assert_close(D.logistic_mixture_mean(params, components), D.expected_level(probs), atol=1e-12, rtol=0)
    draws = D.logistic_mixture_sample(params, components, torch.Generator().manual_seed(5))
    assert torch.equal(draws, D.sample_levels(probs, torch.Generator().manual_seed(5)))  # the same uniforms
    assert draws.shape == (40, 1, 2, 2) and len(draws.unique()) > 10


def test_discretized_logistic_mixture_log_prob_matches_scipy():
    components = 3
    params = mixture_params(components, batch=4, seed=1)
    levels = torch.tensor([0, 1, 128, 254, 255])[torch.randint(0, 5, (4, 1, 2, 2), generator=torch.Generator().manual_seed(2))]
    got = D.logistic_mixture_log_prob(levels, params, components)
    p = params.view(4, 3, components, 2, 2).numpy()
    weights = np.exp(p[:, 0]) / np.exp(p[:, 0]).sum(1, keepdims=True)
    scale = np.exp(np.clip(p[:, 2], math.log(1 / 255 / 8), 3.0))
    v = levels[:, 0].numpy()[:, None]
    c = 2 * v / 255 - 1
    upper = np.where(v == 255, 1.0, logistic.cdf(c + 1 / 255, loc=p[:, 1], scale=scale))
    lower = np.where(v == 0, 0.0, logistic.cdf(c - 1 / 255, loc=p[:, 1], scale=scale))
    expected = np.log((weights * (upper - lower)).sum(1))
    torch.testing.assert_close(got[:, 0], torch.from_numpy(expected), atol=1e-9, rtol=1e-9)


def test_categorical_log_prob_is_the_log_softmax_of_the_value():
    logits = torch.randn(2, 256, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = torch.randint(0, 256, (2, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    got = D.categorical_log_prob(levels, logits)
    for b, i, j in [(0, 0, 0), (1, 2, 1)]:
        column = logits[b, :, i, j]
        v = int(levels[b, 0, i, j])
        assert float(got[b, 0, i, j]) == pytest.approx(float(column[v] - torch.logsumexp(column, 0)), abs=1e-12)


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "categorical"])
def test_8bit_decoders_give_bits_per_dim_of_exact_probabilities(likelihood):
    torch.manual_seed(0)
    net = VAENetwork(image_size=8, latent_dim=3, channels=(4, 8), hidden=16, likelihood=likelihood, components=2).eval()
    model = VAE.from_network(net)
    images = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    images[:, :, :3] = 0  # background, as MNIST's
    out = model.bits_per_dim(images, k=3, seed=0)
    # the same IWAE bound by hand, on x / 255 (no dequantization noise drawn, no +8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        log_p = net.iwae_bound(images.float() / 255, 3, g)
    assert out["bpd"] == pytest.approx(float(-log_p.mean() / 64 / math.log(2)), rel=1e-5)
    assert out["convention"] == "discrete" and "exact probabilities of the 8-bit values" in out["method"]
    assert "dequantiz" not in out["method"].replace("no dequantization", "")
    # the decoder's probabilities over the 256 values of a pixel sum to 1
    with torch.no_grad():
        probs = net._value_probs(net.decode(torch.randn(2, 3)))
    torch.testing.assert_close(probs.sum(2), torch.ones(2, 1, 8, 8), atol=1e-5, rtol=0)
    # samples are 8-bit values, seeded
    a, b = model.sample(3, seed=1, options={"output": "sample"}).images, model.sample(3, seed=1, options={"output": "sample"}).images
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a * 255, (a * 255).round())


def test_bernoulli_vae_reports_the_dequantized_convention():
    torch.manual_seed(0)
    net = VAENetwork(image_size=8, latent_dim=2, channels=(4, 8), hidden=8, likelihood="bernoulli").eval()
    images = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    out = VAE.from_network(net).bits_per_dim(images, k=2)
    assert out["convention"] == "dequantized" and "(x + u) / 256" in out["method"]
