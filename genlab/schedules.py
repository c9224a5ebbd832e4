"""What diffusion plugins share about diffusers' noise schedulers."""

from __future__ import annotations

from .errors import GenlabError


def set_timesteps(scheduler, steps: int, sampler: str) -> None:
    """``scheduler.set_timesteps(steps)``, refusing in one sentence a grid with repeated timesteps.

    A solver whose grid is clipped (DPM-Solver++ with ``lambda_min_clipped``) or as fine as the
    training schedule rounds some of ``steps`` timesteps to the same integer; diffusers' multistep
    solvers then divide by a zero step and return NaN images, so such a request is an error that
    names the most steps this schedule takes.
    """
    scheduler.set_timesteps(steps)
    if _distinct(scheduler, steps):
        return
    low, high = 1, steps  # the grid of `low` steps is distinct, that of `high` is not
    while high - low > 1:
        middle = (low + high) // 2
        scheduler.set_timesteps(middle)
        low, high = (middle, high) if _distinct(scheduler, middle) else (low, middle)
    scheduler.set_timesteps(low)  # leave the scheduler usable
    raise GenlabError(f"{sampler} takes at most {low} steps with this model's noise schedule, got {steps}; "
                      "ddim and ddpm take up to its T")


def _distinct(scheduler, steps: int) -> bool:
    timesteps = [int(t) for t in scheduler.timesteps]
    return len(set(timesteps)) == len(timesteps) == steps
