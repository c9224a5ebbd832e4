"""The DDPM plugin on a tiny seeded UNet: forward process, samplers, inversion, likelihood, errors."""

import math
import types

import numpy as np
import pytest
import torch

from genlab import GenlabError
from genlab_ddpm import DDPM, discretized_gaussian_log_likelihood
from genlab_ddpm.network import DenoisingUNet

T = 50


def tiny_net(**kw):
    torch.manual_seed(0)
    config = dict(sample_size=8, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                  num_train_timesteps=T)
    return DenoisingUNet(**{**config, **kw}).eval()


@pytest.fixture
def model():
    net = tiny_net()
    with torch.no_grad():  # a freshly initialised UNet predicts loud noise; a trained one is smoother
        net.conv_out.weight.mul_(0.1)
    return DDPM.from_network(net)


class AnalyticDenoiser(torch.nn.Module):
    """The exact noise predictor for Gaussian data N(mu, s^2 I) under the tiny net's schedule: a
    stand-in for a perfectly trained model, for which DDIM's ODE is smooth, as it is for real ones."""

    def __init__(self, schedule_net, mu=0.2, s=0.5):
        super().__init__()
        self.schedule_net, self.config, self.mu, self.s = schedule_net, schedule_net.config, mu, s
        self.alphas_cumprod = schedule_net.alphas_cumprod

    def scheduler(self, *args, **kwargs):
        return self.schedule_net.scheduler(*args, **kwargs)

    def forward(self, x, t):
        ab = self.alphas_cumprod.float().to(x.device)[t]
        ab = ab.view(-1, 1, 1, 1) if ab.dim() else ab  # t: one step, or one per image
        return types.SimpleNamespace(sample=(1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab))


def images(n=4, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_closed_form_forward_process_matches_iterating_single_steps(model):
    x0 = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    t = 30
    one_shot = torch.cat([model.noise(x0, t, seed=s) for s in range(4000)]) * 2 - 1
    # iterate q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) with independent noise
    ab = model.network.alphas_cumprod.float()
    betas = 1 - ab / torch.cat([torch.ones(1), ab[:-1]])
    g = torch.Generator().manual_seed(1)
    x = (x0 * 2 - 1).repeat(4000, 1, 1, 1)
    for s in range(t):
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * torch.randn(x.shape, generator=g)
    for a, b in ((one_shot, x),):
        torch.testing.assert_close(a.mean(0), b.mean(0), atol=0.1, rtol=0)  # 4.5 standard errors
        torch.testing.assert_close(a.std(0), b.std(0), atol=0.05, rtol=0)
    torch.testing.assert_close(x.mean(0), ab[t - 1].sqrt() * (x0[0] * 2 - 1), atol=0.07, rtol=0)
    torch.testing.assert_close(x.var(0).mean(), 1 - ab[t - 1], atol=0.03, rtol=0)


def test_schedule_curves_are_monotone(model):
    curves = model.schedule_curves()
    assert len(curves["t"]) == T
    assert all(a > b for a, b in zip(curves["alpha_bar"], curves["alpha_bar"][1:]))
    assert curves["snr"][0] > 1 > curves["snr"][-1]


@pytest.mark.parametrize("sampler, steps", [("ddpm", T), ("ddpm", 10), ("ddim", 10), ("dpm-solver++", 5)])
def test_every_sampler_runs_and_reports_nfe(model, sampler, steps):
    result = model.sample(3, seed=0, options={"sampler": sampler, "steps": steps})
    assert result.images.shape == (3, 1, 8, 8) and result.nfe == steps
    assert torch.isfinite(result.images).all() and result.images.min() >= 0 and result.images.max() <= 1


def test_ddim_with_eta_zero_is_deterministic_given_the_noise(model):
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a = model.decode(x_T, steps=10)
    b = model.decode(x_T, steps=10)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    opts = {"sampler": "ddim", "steps": 10, "eta": 1.0}
    noisy = [model.sample(2, seed=0, options=opts).images for _ in range(2)]
    torch.testing.assert_close(noisy[0], noisy[1])  # seeded, so still reproducible


def test_ddim_inversion_round_trips_within_tolerance():
    model = DDPM.from_network(AnalyticDenoiser(tiny_net()))
    x = images()
    errors = {refine: float((model.decode(model.encode(x, 25, refine), 25) - x).abs().max()) for refine in (0, 2)}
    assert errors[2] < 0.005  # the stated tolerance: 0.5% of the pixel range, 25 steps, 2 refinements
    assert errors[0] > errors[2]  # plain inversion is first-order; the fixed-point refinement fixes it
    torch.testing.assert_close(model.reconstruct(x, steps=25), model.decode(model.encode(x, 25), 25))


def test_trajectory_yields_intermediate_states_and_x0_predictions(model):
    frames = list(model.trajectory(2, seed=0, options={"sampler": "ddim", "steps": 10}, record_every=3))
    assert [f["step"] for f in frames] == [1, 4, 7, 10]
    assert frames[0]["t"] > frames[-1]["t"]
    assert frames[-1]["x_t"].shape == frames[-1]["x0_hat"].shape == (2, 1, 8, 8)
    torch.testing.assert_close(frames[-1]["x_t"], model.sample(2, seed=0, options={"sampler": "ddim", "steps": 10}).images)


def test_image_to_image_keeps_the_image_at_low_strength(model):
    x = images()
    for sampler, steps in [("ddim", T), ("dpm-solver++", T - 1)]:
        light = model.edit(x, strength=0.05, options={"sampler": sampler, "steps": steps})
        heavy = model.edit(x, strength=1.0, options={"sampler": sampler, "steps": steps})
        assert (light - x).abs().mean() < (heavy - x).abs().mean()


def test_dpm_solver_refuses_a_grid_of_every_timestep_in_one_sentence(model):
    # such a grid has repeated timesteps, which diffusers' DPM-Solver++ turns into NaN
    with pytest.raises(GenlabError, match=f"dpm-solver\\+\\+ takes at most {T - 1} steps with this model's noise schedule, got {T}"):
        model.sample(1, options={"sampler": "dpm-solver++", "steps": T})
    assert not model.sample(1, options={"sampler": "dpm-solver++", "steps": T - 1}).images.isnan().any()


def test_interpolation_starts_and_ends_at_the_images():
    model = DDPM.from_network(AnalyticDenoiser(tiny_net()))
    x = images(2)
    path = model.interpolate(x[0], x[1], steps=5, ddim_steps=25)
    assert path.shape == (5, 1, 8, 8)
    assert float((path[0] - x[0]).abs().max()) < 0.005 and float((path[-1] - x[1]).abs().max()) < 0.005
    assert float((path[2] - x[0]).abs().mean()) > 0.05  # the middle is somewhere else


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "invalid option steps=0"),
    ({"steps": T + 1}, f"steps={T + 1} is more than the model's T={T}"),
    ({"sampler": "euler"}, "invalid option sampler='euler'"),
    ({"eta": 1.5}, "invalid option eta=1.5"),
])
def test_bad_options_are_clear_errors(model, options, message):
    with pytest.raises(GenlabError, match=message):
        model.sample(1, options=options)


@pytest.mark.parametrize("prediction_type, schedule", [("epsilon", "linear"), ("v", "cosine")])
def test_training_loss_for_both_parameterizations(prediction_type, schedule):
    net = tiny_net(prediction_type=prediction_type, beta_schedule=schedule).train()
    batch = {"images": (images(8) * 255).to(torch.uint8)}
    loss, _ = DDPM.from_network(net).training_loss(net, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_v_prediction_recovers_x0_and_noise():
    x0, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    ab = torch.tensor([0.9, 0.5, 0.1])
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    x0_hat, eps_hat = DDPM._x0_and_eps(v, x_t, ab, "v")
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.3, -3.0), (-0.99, -1.0), (0.0, 0.5)):
        p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.tensor(log_scale, dtype=torch.float64)).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)


def test_bits_per_dim_of_a_zero_network_matches_an_independent_computation():
    """With the network's output forced to 0 (predicts no noise), every term of the bound has a
    closed-form expectation; compute it with numpy and compare to the Monte-Carlo estimate."""
    net = tiny_net()
    with torch.no_grad():
        net.conv_out.weight.zero_()
        net.conv_out.bias.zero_()
    model = DDPM.from_network(net)
    x = torch.full((200, 1, 8, 8), 128, dtype=torch.uint8)
    x[:, :, :4] = 0
    out = model.bits_per_dim(x, seed=0, batch_size=200)

    ab = net.alphas_cumprod.numpy()
    betas = 1 - ab / np.concatenate([[1.0], ab[:-1]])
    x0 = (x[0].double().numpy() / 255) * 2 - 1
    D = x0.size
    prior = 0.5 * np.sum(ab[-1] * x0**2 + (1 - ab[-1]) - 1 - np.log(1 - ab[-1]))
    # x0_hat = x_t / sqrt(ab_t), so x0 - x0_hat = -sqrt((1 - ab_t) / ab_t) eps and E||eps||^2 = D
    kl = 0.0
    for i in range(1, T):
        coef = np.sqrt(ab[i - 1]) * betas[i] / (1 - ab[i])
        var = (1 - ab[i - 1]) / (1 - ab[i]) * betas[i]
        kl += 0.5 * coef**2 * (1 - ab[i]) / ab[i] * D / var
    # decoder: mean x1 / sqrt(ab_1), a Gaussian around x0 with std sqrt((1 - ab_1) / ab_1); integrate numerically
    from scipy.stats import norm

    sigma1 = np.sqrt(betas[0])
    spread = np.sqrt((1 - ab[0]) / ab[0])
    grid = np.linspace(-6, 6, 4001)
    weights = norm.pdf(grid) * (grid[1] - grid[0])
    decoder = 0.0
    for value in np.unique(x0):
        mean = value + spread * grid
        hi = np.where(value > 0.999, 1.0, norm.cdf((value + 1 / 255 - mean) / sigma1))
        lo = np.where(value < -0.999, 0.0, norm.cdf((value - 1 / 255 - mean) / sigma1))
        decoder += -np.sum(weights * np.log(np.clip(hi - lo, 1e-12, None))) * np.sum(x0 == value)
    expected = (prior + kl + decoder) / (D * math.log(2))
    assert out["bpd"] == pytest.approx(expected, rel=0.02)


# ----- the unbiased bound estimator on a tiny trained model (T = 100) ---------------------------------
def brute_force_bound(model, x_uint8, seed):
    """Every term of the bound, one image and one t at a time, from the diffusers scheduler's betas and
    torch.distributions / mpmath: noise drawn per t for all images, t = 1..T, from one generator."""
    import mpmath

    net = model.network
    betas = net.scheduler("ddpm").betas.double()
    ab = torch.from_numpy(np.cumprod(1 - betas.numpy()))
    T = len(betas)
    x0 = x_uint8.double() / 255 * 2 - 1
    g = torch.Generator().manual_seed(seed)
    Normal, kl = torch.distributions.Normal, torch.distributions.kl_divergence
    total = kl(Normal(ab[-1].sqrt() * x0, (1 - ab[-1]).sqrt()), Normal(0.0, 1.0)).flatten(1).sum(1)  # L_T
    for t in range(1, T + 1):
        i = t - 1
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * eps
        with torch.no_grad():
            # channels-last as the model runs it, so that float32 rounding in the network is the same
            out = net(x_t.float().contiguous(memory_format=torch.channels_last), torch.full((len(x0),), i)).sample.double()
        if net.config.prediction_type == "v":  # v = sqrt(ab) eps - sqrt(1 - ab) x0
            x0_hat = ab[i].sqrt() * x_t - (1 - ab[i]).sqrt() * out
        else:
            x0_hat = (x_t - (1 - ab[i]).sqrt() * out) / ab[i].sqrt()
        if t == 1:  # discretized Gaussian decoder, sigma^2 = beta_1, over bins of width 2/255, at 30 digits
            mpmath.mp.dps = 30
            sd = mpmath.sqrt(mpmath.mpf(float(betas[0])))

            def log_bin(v, mean):
                a = -mpmath.inf if v < -0.999 else (mpmath.mpf(v) - 1 / mpmath.mpf(255) - mean) / sd
                b = mpmath.inf if v > 0.999 else (mpmath.mpf(v) + 1 / mpmath.mpf(255) - mean) / sd
                return float(mpmath.log(mpmath.ncdf(-a) - mpmath.ncdf(-b)))  # = Phi(b) - Phi(a), exact in either tail

            for n in range(len(x0)):
                total[n] -= sum(log_bin(v, m) for v, m in zip(x0[n].flatten().tolist(), x0_hat[n].flatten().tolist()))
            continue
        # q(x_{t-1} | x_t, x_0) against p(x_{t-1} | x_t): posterior means from x_0 and from x0_hat
        var = (1 - ab[i - 1]) / (1 - ab[i]) * betas[i]
        def posterior_mean(x_start):
            return (ab[i - 1].sqrt() * betas[i] * x_start + (1 - betas[i]).sqrt() * (1 - ab[i - 1]) * x_t) / (1 - ab[i])
        total += kl(Normal(posterior_mean(x0), var.sqrt()), Normal(posterior_mean(x0_hat), var.sqrt())).flatten(1).sum(1)
    return total / (x0[0].numel() * math.log(2))


@pytest.fixture(scope="module")
def trained_tiny(tiny_ddpm_dir):
    from genlab.datasets import load_dataset

    return DDPM(weights=tiny_ddpm_dir), load_dataset("digits", "heldout", seed=0).images[:20]


def test_bound_with_every_term_exact_is_the_brute_force_sum(trained_tiny):
    model, x = trained_tiny
    assert model.num_train_timesteps == 100
    out = model.bits_per_dim(x, seed=3, exact_terms=100, batch_size=len(x))
    expected = brute_force_bound(model, x, seed=3)
    assert out["bpd"] == pytest.approx(float(expected.mean()), rel=1e-6)
    assert out["bpd_stderr"] == pytest.approx(float(expected.std() / math.sqrt(len(x))), rel=1e-4)
    assert out["method"].startswith("variational bound, all 100 terms") and out["convention"] == "discrete"
    assert "no dequantization" in out["method"]
    # exact_terms + strata >= T is the same computation
    assert model.bits_per_dim(x, seed=3, exact_terms=60, strata=40, batch_size=len(x))["bpd"] == out["bpd"]


def test_bound_of_a_v_prediction_cosine_model_is_the_brute_force_sum():
    # the bundled DDPM's parametrisation: x0_hat from v, betas from the cosine schedule
    net = tiny_net(prediction_type="v", beta_schedule="cosine")
    with torch.no_grad():
        net.conv_out.weight.mul_(0.1)
    model = DDPM.from_network(net)
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = model.bits_per_dim(x, seed=5, exact_terms=T, batch_size=len(x))
    assert out["bpd"] == pytest.approx(float(brute_force_bound(model, x, seed=5).mean()), rel=1e-6)


def test_stratified_bound_is_unbiased_for_the_all_terms_sum(trained_tiny):
    """Mean over seeds of the stratified estimate against the mean of the all-terms sum over seeds:
    within the estimator's stated error, and within 4 standard errors measured from the seeds."""
    import statistics

    model, x = trained_tiny
    seeds = range(8)
    full = [model.bits_per_dim(x, seed=100 + s, exact_terms=100)["bpd"] for s in seeds]
    runs = [model.bits_per_dim(x, seed=s, exact_terms=10, strata=10) for s in seeds]
    sampled = [r["bpd"] for r in runs]
    assert runs[0]["evaluations_per_image"] == 20 and "t=11..100 from 10 strata" in runs[0]["method"]
    gap = abs(statistics.mean(sampled) - statistics.mean(full))
    assert gap < runs[0]["bpd_stderr"]
    # the stated error covers the spread over seeds on the same images
    assert statistics.stdev(sampled) < 1.5 * statistics.mean(r["bpd_stderr"] for r in runs)
    spread = math.sqrt(statistics.variance(sampled) / len(seeds) + statistics.variance(full) / len(seeds))
    assert gap < 4 * spread
    # the check can fail: the old estimator (10 evenly spaced terms scaled by ~10) is far off
    profile = model.term_profile(x, seed=0)
    chosen = torch.linspace(1, 99, 10).round().long()
    old = (profile[:, 0] + profile[:, 100] + 99 / 10 * profile[:, chosen].sum(1)) / (64 * math.log(2))
    assert abs(float(old.mean()) - statistics.mean(full)) > 10 * runs[0]["bpd_stderr"]


def test_term_profile_columns_sum_to_the_all_terms_bound(trained_tiny):
    model, x = trained_tiny
    profile = model.term_profile(x[:5], seed=1)
    assert profile.shape == (5, 101)
    total = profile.sum(1) / (64 * math.log(2))
    assert float(total.mean()) == pytest.approx(model.bits_per_dim(x[:5], seed=1, exact_terms=100)["bpd"], rel=1e-9)
    assert float(profile[:, 1].mean()) > float(profile[:, 50].mean())  # the small-t terms are the large ones


def test_bound_estimator_rejects_a_budget_it_cannot_use(trained_tiny):
    model, x = trained_tiny
    with pytest.raises(GenlabError, match="exact_terms"):
        model.bits_per_dim(x, exact_terms=0)
    # no strata and too few exact terms would silently drop the rest of the bound
    with pytest.raises(GenlabError, match="strata=0 needs exact_terms="):
        model.bits_per_dim(x, exact_terms=3, strata=0)
