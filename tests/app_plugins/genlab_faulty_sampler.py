"""A stand-in third-party plugin with a bug: it imports and registers fine, then raises at run time."""

import genlab


class FaultySampler(genlab.Model):
    model_id = "faulty-sampler"
    family = "baseline"
    description = "Registers like any model; every sample() call hits a bug in the plugin."
    capabilities = frozenset({genlab.Capability.SAMPLE})

    def sample(self, count, *, seed=0, options=None):
        raise ZeroDivisionError("division by zero in the plugin's sampler")

    def parameter_count(self) -> int:
        return 0


@genlab.hookimpl
def register_models(register):
    register(FaultySampler)
