"""A stand-in plugin whose hook takes an argument genlab does not pass."""

import genlab


@genlab.hookimpl
def register_models(registrar):
    pass
