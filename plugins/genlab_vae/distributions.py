"""The VAE decoders' per-pixel distributions, written from the logits so that they stay exact where
torch's own implementations lose precision.

- The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) on [0, 1] with logit eta:
  p(x) = C(eta) exp(x eta) / (1 + exp(eta)), C(eta) = eta / tanh(eta / 2) (-> 2 at eta = 0).
  ``torch.distributions.ContinuousBernoulli`` clamps the probability at float32 epsilon, so below a
  logit of about -16 its normaliser is wrong and the density no longer integrates to 1 (0.80 at
  -20, 0.50 at -32); a trained MNIST decoder puts most background pixels there.
- Distributions over the 256 values of an 8-bit pixel (exact probabilities, no dequantization):
  a mixture of discretized logistics (Salimans et al. 2017, PixelCNN++) and a 256-way categorical.

All functions work per pixel and broadcast; log-probabilities are in nats. The formulas run in
float64 wherever the tensors' device has it (``wide``).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from genlab.runtime import rand  # CPU generators, then moved: a seed means the same on every device

LOG_2 = math.log(2.0)
# |eta| under which Taylor series replace the closed forms (0/0 at eta = 0): the series of log C
# and of the mean are exact to ~1e-14 there; the cdf's first-order one to ~eta^2, hence its own limit
SERIES_BELOW = 1e-2
CDF_SERIES_BELOW = 1e-6


def wide(t):
    """``t`` in float64; on Apple MPS, which has no float64, in float32 (the only difference there)."""
    return t.float() if t.device.type == "mps" else t.double()


# ----- continuous Bernoulli -----------------------------------------------------------------------
def _small_and_safe(eta, below: float = SERIES_BELOW):
    """(mask of |eta| < below, eta with those entries moved away from 0): the closed-form branch
    never sees 0, so neither its value nor its gradient is NaN where the series is used."""
    small = eta.abs() < below
    return small, torch.where(small, torch.full_like(eta, below), eta)


def cb_log_norm(logits):
    """log C(eta) of the continuous Bernoulli, computed in float64: log|eta| - log tanh(|eta| / 2),
    with log tanh(a / 2) = log(-expm1(-a)) - log1p(exp(-a)); log 2 + y^2/3 - 7 y^4/90 (y = eta/2) near 0."""
    eta = wide(logits)
    small, safe = _small_and_safe(eta)
    a = safe.abs()
    closed = a.log() - torch.log(-torch.expm1(-a)) + torch.log1p(torch.exp(-a))
    y2 = (eta / 2).pow(2)
    series = LOG_2 + y2 / 3 - 7 * y2.pow(2) / 90
    return torch.where(small, series, closed).to(logits.dtype)


def cb_log_prob(x, logits):
    """log p(x) of the continuous Bernoulli for x in [0, 1]: log C(eta) + x eta - softplus(eta)."""
    eta = wide(logits)
    return (cb_log_norm(eta) + wide(x) * eta - F.softplus(eta)).to(logits.dtype)


def cb_mean(logits):
    """E[x] = 1 / (1 - exp(-eta)) - 1 / eta (1/2 + eta/12 - eta^3/720 near 0)."""
    eta = wide(logits)
    small, safe = _small_and_safe(eta)
    closed = -1.0 / torch.expm1(-safe) - 1.0 / safe
    series = 0.5 + eta / 12 - eta.pow(3) / 720
    return torch.where(small, series, closed).to(logits.dtype)


def cb_cdf(x, logits):
    """F(x) = expm1(x eta) / expm1(eta) (= x at eta = 0)."""
    eta = wide(logits)
    x = wide(x)
    small, safe = _small_and_safe(eta, CDF_SERIES_BELOW)
    # for eta > 0 divide through by exp(eta) so that nothing overflows
    closed = torch.where(safe > 0, torch.exp((x - 1) * safe) * -torch.expm1(-x * safe) / -torch.expm1(-safe),
                         torch.expm1(x * safe) / torch.expm1(safe))
    series = x + eta * x * (x - 1) / 2
    return torch.where(small, series, closed).to(logits.dtype)


def cb_icdf(u, logits):
    """The inverse of ``cb_cdf``: x = log1p(u expm1(eta)) / eta, written as
    1 + log(u + (1 - u) exp(-eta)) / eta for eta > 0 so that nothing overflows."""
    eta = wide(logits)
    u = wide(u)
    small, safe = _small_and_safe(eta, CDF_SERIES_BELOW)
    closed = torch.where(safe > 0, 1 + torch.log(u + (1 - u) * torch.exp(-safe)) / safe,
                         torch.log1p(u * torch.expm1(safe)) / safe)
    series = u + eta * u * (1 - u) / 2
    return torch.where(small, series, closed).clamp(0, 1).to(logits.dtype)


# ----- 8-bit pixels -------------------------------------------------------------------------------
def to_levels(x):
    """Pixels in [0, 1] (x = value / 255) -> their 8-bit values 0..255 as long."""
    return (x * 255).round().clamp(0, 255).long()


def _log_sigmoid_difference(a, b):
    """log(sigmoid(a) - sigmoid(b)) for a > b, exact: a + log(-expm1(b - a)) - softplus(a) - softplus(b)."""
    return a + torch.log(-torch.expm1(b - a)) - F.softplus(a) - F.softplus(b)


def logistic_mixture_log_prob(levels, params, components: int):
    """log P(value) of 8-bit pixel values under a mixture of discretized logistics.

    ``params`` holds 3 * ``components`` channels per image channel: mixture logits, means (on the
    [-1, 1] scale of the values) and log scales. Value v in 0..255 sits at c = 2 v / 255 - 1 and owns
    the bin [c - 1/255, c + 1/255]; the bins of 0 and 255 extend to -inf and +inf, so the 256
    probabilities sum to 1 exactly. ``levels``: long [B, C, H, W]; ``params``: [B, 3 K C, H, W].
    """
    logit_pi, mean, log_scale = _split_mixture(params, components)
    c = (2.0 * levels.to(mean.dtype) / 255 - 1).unsqueeze(2)  # [B, C, 1, H, W]
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (c - mean + 1 / 255)
    lower = inv_scale * (c - mean - 1 / 255)
    v = levels.unsqueeze(2)
    log_p = torch.where(v == 0, F.logsigmoid(upper),
                        torch.where(v == 255, F.logsigmoid(-lower), _log_sigmoid_difference(upper, lower)))
    return torch.logsumexp(F.log_softmax(logit_pi, dim=2) + log_p, dim=2)


def _split_mixture(params, components: int):
    b, ck, h, w = params.shape
    channels = ck // (3 * components)
    p = params.view(b, channels, 3, components, h, w)
    # log scales kept between an eighth of a bin (narrower adds nothing but overflow risk) and
    # e^3 (far wider than the [-1, 1] range; wider still would round the bins' width to 0)
    return p[:, :, 0], p[:, :, 1], p[:, :, 2].clamp(min=math.log(1 / 255 / 8), max=3.0)


def _edge_cdfs(params, components: int, images: int = 8, edges: int = 4):
    """Per chunk of images: (mixture weights [b, C, K, H, W], the blocks of each component's z at
    the 255 inner bin edges c_v + 1/255, v = 0..254, a few edges at a time: [b, C, e, K, H, W]),
    z taken as (c_v - mean) + 1/255 as log_prob takes it (c_v - mean is small near the mean, where
    a narrow component's cdf is steep). Small blocks keep the working set in the core's cache: all
    255 edges at once are ~130 MB per 32 images, and the sums over them then run at memory speed
    (the mean took 7.7x as long on one core)."""
    c = 2.0 * torch.arange(255, dtype=params.dtype, device=params.device) / 255 - 1
    for part in params.split(images):
        logit_pi, mean, log_scale = _split_mixture(part, components)
        mean, inv_scale = mean.unsqueeze(2), torch.exp(-log_scale).unsqueeze(2)
        yield torch.softmax(logit_pi, dim=2), ((c[start:start + edges].view(1, 1, -1, 1, 1, 1) - mean + 1 / 255) * inv_scale
                                               for start in range(0, 255, edges))


def logistic_mixture_mean(params, components: int):
    """E[value] / 255 in [0, 1], exact: E[V] = sum over v = 1..255 of P(V >= v), the mixture's upper
    tail at the 255 inner bin edges (one sigmoid per edge and component, no 256 probabilities)."""
    return torch.cat([(weight * sum(torch.sigmoid(-z).sum(2) for z in blocks)).sum(2)
                      for weight, blocks in _edge_cdfs(params, components)]) / 255


def logistic_mixture_sample(params, components: int, generator=None):
    """One 8-bit value per pixel, as floats in [0, 1], by inverting the mixture's cdf: the value is
    the number of inner bin edges where the cdf is still below a uniform draw."""
    b, _, h, w = params.shape
    u = rand((b, params.shape[1] // (3 * components), 1, h, w), generator, device=params.device)
    levels = []
    for (weight, blocks), u_part in zip(_edge_cdfs(params, components), u.split(8)):
        weight = weight.unsqueeze(2)
        levels.append(sum(((weight * torch.sigmoid(z)).sum(3) < u_part).sum(2) for z in blocks))
    return torch.cat(levels).float() / 255


def logistic_mixture_probs(params, components: int):
    """P(value) for all 256 values: [B, C, 256, H, W], for the decoder's mean and draws.

    Each component's cdf is taken once at the 257 bin edges, not once per value (256 passes of
    ``logistic_mixture_log_prob``, 25x slower). A bin's mass is a difference of two cdfs below the
    component's mean and of two upper-tail probabilities above it: both terms are then small, so
    the difference keeps its precision where 1 - cdf would round away (tested against log_prob)."""
    chunks = []
    for part in params.split(32):  # [32, 5 components, 257 edges, 28, 28] at most: ~130 MB of float32
        logit_pi, mean, log_scale = _split_mixture(part, components)
        weight = torch.softmax(logit_pi, dim=2)
        # edge v is the bin's lower end c_v - 1/255, taken as (c_v - mean) - 1/255 like log_prob does:
        # c_v - mean is small near the mean, where a narrow component's cdf is steep
        c = (2.0 * torch.arange(257, dtype=part.dtype, device=part.device) / 255 - 1).view(1, 1, 1, 257, 1, 1)
        z = (c - mean.unsqueeze(3) - 1 / 255) * torch.exp(-log_scale).unsqueeze(3)  # [b, C, K, 257, H, W]
        below, above = torch.sigmoid(z), torch.sigmoid(-z)
        below[:, :, :, 0], below[:, :, :, -1] = 0, 1  # the end bins reach -inf and +inf
        above[:, :, :, 0], above[:, :, :, -1] = 1, 0
        mass = torch.where(z[:, :, :, :-1] > 0, above[:, :, :, :-1] - above[:, :, :, 1:],
                           below[:, :, :, 1:] - below[:, :, :, :-1])
        chunks.append((weight.unsqueeze(3) * mass).sum(2))
    return torch.cat(chunks)


def categorical_log_prob(levels, logits):
    """log P(value) under a 256-way categorical per pixel; ``logits``: [B, 256 C, H, W]."""
    b, _, h, w = logits.shape
    log_p = F.log_softmax(logits.view(b, -1, 256, h, w), dim=2)
    return log_p.gather(2, levels.unsqueeze(2)).squeeze(2)


def categorical_probs(logits):
    b, _, h, w = logits.shape
    return F.softmax(logits.view(b, -1, 256, h, w), dim=2)


def expected_level(probs):
    values = torch.arange(256, dtype=probs.dtype, device=probs.device).view(1, 1, 256, 1, 1)
    return (probs * values).sum(2) / 255


def sample_levels(probs, generator=None):
    """One 8-bit value per pixel drawn from probabilities [B, C, 256, H, W], as floats in [0, 1]."""
    u = rand((probs.shape[0], probs.shape[1], 1, *probs.shape[3:]), generator, device=probs.device)
    cdf = probs.cumsum(2)
    return (cdf < u).sum(2).clamp(max=255).float() / 255
