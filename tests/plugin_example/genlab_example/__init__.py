"""A whole genlab plugin in one file: a baseline that samples uniform noise.

It has no weights to train (no ``network_class``: genlab counts 0 parameters and it reports 0 NFE),
which makes it the cheapest possible model for tests, and an honest ceiling row in a report: every
real model should beat it. The other modules here are stand-ins for broken plugins.
"""

import time

from pydantic import Field

import genlab


class UniformNoise(genlab.Model):
    model_id = "uniform-noise"
    family = "baseline"
    description = "Every pixel drawn independently from U[0, 1]: the score of knowing nothing."
    capabilities = frozenset({genlab.Capability.SAMPLE})

    class Options(genlab.Options):
        brightness: float = Field(1.0, ge=0.0, le=1.0, description="Upper end of the pixel range")

    def __init__(self, weights=None, image_size: int = 28):
        super().__init__(weights)
        self.image_size = image_size

    def sample(self, count, *, seed=0, options=None):
        import torch

        opts = self.parse_options(options)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        images = opts.brightness * torch.rand(count, 1, self.image_size, self.image_size, generator=generator)
        return genlab.Samples(images=images, nfe=0, seconds=time.perf_counter() - start)


@genlab.hookimpl
def register_models(register):
    register(UniformNoise)
