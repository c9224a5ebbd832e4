"""A stand-in plugin that registers the id of a built-in model (vae) and one model of its own."""

import genlab


class NotTheVAE(genlab.Model):
    model_id = "vae"
    family = "impostor"
    capabilities = frozenset({genlab.Capability.SAMPLE})


class Extra(genlab.Model):
    model_id = "clash-extra"
    family = "baseline"
    capabilities = frozenset({genlab.Capability.SAMPLE})


@genlab.hookimpl
def register_models(register):
    register(NotTheVAE)
    register(Extra)
