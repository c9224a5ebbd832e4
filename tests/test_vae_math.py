"""The VAE's math, checked against independent computations on a small seeded network."""

import math

import pytest
import torch

from genlab import GenlabError
from genlab.interpolation import interpolate_latents
from genlab_vae import VAE
from genlab_vae.network import VAENetwork


@pytest.fixture
def net():
    torch.manual_seed(0)
    return VAENetwork(image_size=8, latent_dim=3, channels=(4, 8), hidden=16).eval()


@pytest.fixture
def x():
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_closed_form_kl_matches_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[-0.5, 0.3, -2.0]])
    closed = VAENetwork.kl_per_dim(mu, logvar)[0]
    z = mu + (0.5 * logvar).exp() * torch.randn(400_000, 3, generator=g)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(closed, mc, atol=0.01, rtol=0.01)
    # and against torch.distributions' own closed form
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )[0]
    torch.testing.assert_close(closed, reference)


def test_gaussian_log_likelihood_matches_torch_distributions(net, x):
    out = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = torch.distributions.Normal(torch.sigmoid(out), net.log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(net.log_px_given_z(x, out), expected)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli"])
def test_bernoulli_kinds_match_torch_distributions(likelihood, x):
    torch.manual_seed(0)
    net = VAENetwork(image_size=8, latent_dim=3, channels=(4, 8), hidden=16, likelihood=likelihood)
    out = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    dist = (torch.distributions.ContinuousBernoulli if likelihood == "continuous-bernoulli"
            else torch.distributions.Bernoulli)(logits=out, validate_args=False)
    torch.testing.assert_close(net.log_px_given_z(x, out), dist.log_prob(x).flatten(1).sum(1))


def test_iwae_bound_tightens_as_k_grows_and_elbo_is_below_it(net, x):
    with torch.no_grad():  # a decoder that depends strongly on z: q(z|x) is far from p(z|x), a wide gap
        net.decoder[0].weight.mul_(5)

    def mean_bound(k, repeats=50):
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            return torch.stack([net.iwae_bound(x, k, g) for _ in range(repeats)]).mean(0)

    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        elbo = torch.stack([net.elbo(x, g)["elbo"] for _ in range(2000)]).mean(0)
    b1, b10, b100 = mean_bound(1), mean_bound(10), mean_bound(100)
    torch.testing.assert_close(b1, elbo, atol=0.0, rtol=0.01)  # k = 1 is the ELBO
    assert torch.all(b10 > b1) and torch.all(b100 > b10)
    assert torch.all(elbo <= b100)


def test_iwae_with_k1_is_exactly_one_sample_elbo_with_the_same_noise(net, x):
    with torch.no_grad():
        iwae = net.iwae_bound(x, 1, torch.Generator().manual_seed(3))
        mu, logvar = net.encode(x)
        eps = torch.randn((1, *mu.shape), generator=torch.Generator().manual_seed(3))[0]
        z = mu + (0.5 * logvar).exp() * eps
        elbo = net.log_px_given_z(x, net.decode(z)) + torch.distributions.Normal(0, 1).log_prob(z).sum(1) \
            - torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    torch.testing.assert_close(iwae, elbo, atol=1e-4, rtol=1e-5)


def test_reparameterization_carries_gradients_to_mean_and_variance():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    z = VAENetwork.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    (z ** 2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_bits_per_dim_is_the_nats_bound_converted(net):
    model = VAE.from_network(net)
    images = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    out = model.bits_per_dim(images, k=1, seed=0)
    # recompute by hand from the same generator stream
    g = torch.Generator().manual_seed(0)
    y = (images.float() + torch.rand(images.shape, generator=g)) / 256
    with torch.no_grad():
        log_p = net.iwae_bound(y, 1, g)
    expected = float(-log_p.mean() / 64 / math.log(2) + 8)
    assert out["bpd"] == pytest.approx(expected, rel=1e-5)
    assert out["images"] == 6 and out["k"] == 1


def test_bernoulli_decoder_is_evaluated_as_a_normalised_density(x):
    torch.manual_seed(0)
    net = VAENetwork(image_size=8, latent_dim=2, channels=(4, 8), hidden=8, likelihood="bernoulli")
    out = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    as_density = net.log_px_given_z(x, out, density=True)
    expected = torch.distributions.ContinuousBernoulli(logits=out).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(as_density, expected)
    # the normaliser C(lambda) >= 2 per pixel: the density is never below the cross-entropy + log 2
    assert torch.all(as_density >= net.log_px_given_z(x, out) + 64 * math.log(2) - 1e-3)
    images = (x[:2] * 255).to(torch.uint8)
    assert "continuous Bernoulli" in VAE.from_network(net).bits_per_dim(images, k=2)["method"]


def test_slerp_and_lerp_hit_the_endpoints_and_slerp_keeps_norm_for_orthogonal_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for method in ("lerp", "slerp"):
        path = interpolate_latents(a, b, 5, method)
        torch.testing.assert_close(path[0], a)
        torch.testing.assert_close(path[-1], b)
    slerp = interpolate_latents(a, b, 5, "slerp")
    torch.testing.assert_close(slerp.norm(dim=1), torch.ones(5))
    assert interpolate_latents(a, b, 5, "lerp")[2].norm() < 0.8  # lerp cuts the corner


def test_sampling_is_seeded_and_images_are_in_range(net):
    model = VAE.from_network(net)
    a = model.sample(4, seed=3).images
    b = model.sample(4, seed=3).images
    c = model.sample(4, seed=4).images
    assert a.shape == (4, 1, 8, 8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_active_units_count_dimensions_whose_posterior_mean_varies(net, x):
    model = VAE.from_network(net)
    with torch.no_grad():
        net.encoder[-1].weight[3:].zero_()  # logvar rows
        net.encoder[-1].weight[1].zero_()   # latent 1's mean ignores the input ...
        net.encoder[-1].bias[1] = 0.0       # ... and sits at the prior mean: collapsed
    diag = model.latent_diagnostics(torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(5)))
    assert diag["latent_dim"] == 3
    assert diag["activity"][1] == 0.0
    assert diag["active_units"] == sum(v > 0.01 for v in diag["activity"])
    assert diag["active_units"] <= 2


def test_bundled_weights_can_be_named_by_their_folder(tmp_path):
    from genlab_vae import BUNDLED, WEIGHTS

    assert VAE(weights="vae-mnist-5k").weights == WEIGHTS
    assert VAE().weights == WEIGHTS
    assert VAE(weights=tmp_path).weights == tmp_path  # a real folder is taken as given
    with pytest.raises(GenlabError, match="no checkpoint at no-such-set.*a bundled set: vae-dlogistic-mnist-5k, vae-mnist-5k"):
        VAE(weights="no-such-set").network
    assert BUNDLED == WEIGHTS.parent
