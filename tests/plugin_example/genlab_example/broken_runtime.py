"""A stand-in for a buggy third-party plugin: it loads and registers fine, then its model fails
when used (a RuntimeError from sample, sys.exit() from reconstruct)."""

import sys

import genlab


class Buggy(genlab.Model):
    model_id = "buggy"
    family = "baseline"
    description = "Registers fine, fails at run time."
    capabilities = frozenset({genlab.Capability.SAMPLE, genlab.Capability.RECONSTRUCT})

    def sample(self, count, *, seed=0, options=None):
        raise RuntimeError("boom in sample")

    def reconstruct(self, images):
        sys.exit(4)


@genlab.hookimpl
def register_models(register):
    register(Buggy)
