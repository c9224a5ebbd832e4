"""Paths between two latents, shared by every family that interpolates in a latent space."""

from __future__ import annotations

from .errors import GenlabError


def interpolate_latents(a, b, steps: int, method: str = "slerp"):
    """Points from a to b: linear (lerp) or along the great circle (slerp, keeps Gaussian norms typical)."""
    import torch

    t = torch.linspace(0, 1, steps).unsqueeze(1)
    if method == "lerp":
        return (1 - t) * a + t * b
    if method != "slerp":
        raise GenlabError(f"unknown interpolation {method!r}; valid: lerp, slerp")
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-8)
    omega = torch.arccos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    if omega.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
