"""The hooks a genlab plugin can implement. Hooks only register: nothing heavy happens here."""

import pluggy

hookspec = pluggy.HookspecMarker("genlab")
hookimpl = pluggy.HookimplMarker("genlab")


@hookspec
def register_models(register):
    """Register model classes: ``register(ModelClass, aliases=())``."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(DatasetSpec)``."""


@hookspec
def register_feature_extractors(register):
    """Register image feature extractors for FID/KID: ``register(FeatureExtractorSpec)``."""
