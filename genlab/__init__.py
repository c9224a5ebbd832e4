"""genlab: see and measure how generative image models differ.

Plugins register models and datasets through pluggy hooks (see ``genlab.hookspecs``); everything
else (the CLI, the Gradio app, the eval runner) reads them from the registry.
"""

__version__ = "0.1.0"

from .errors import CapabilityError, GenlabError, UnknownDatasetError, UnknownModelError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .models import Capability, Model, Options, Samples, unwrap  # noqa: E402
from .registry import (  # noqa: E402
    get_dataset_spec,
    get_datasets,
    get_feature_extractor,
    get_model,
    get_model_class,
    get_models,
    plugin_failures,
)

__all__ = [
    "Capability", "CapabilityError", "GenlabError", "Model", "Options", "Samples",
    "UnknownDatasetError", "UnknownModelError", "get_dataset_spec", "get_datasets",
    "get_feature_extractor", "get_model", "get_model_class", "get_models", "hookimpl",
    "plugin_failures", "unwrap",
]
