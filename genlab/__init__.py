"""genlab: see and measure how generative image models differ.

Plugins register models and datasets through pluggy hooks (see ``genlab.hookspecs``); everything
else (the CLI, the Gradio app, the eval runner) reads them from the registry.
"""

__version__ = "0.1.0"

from .datasets import dequantize, load_dataset, to_unit  # noqa: E402
from .errors import CapabilityError, GenlabError, ModelError, UnknownDatasetError, UnknownModelError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .models import MAX_SEED, Capability, Model, Options, Samples, unwrap  # noqa: E402
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
    "MAX_SEED", "Capability", "CapabilityError", "GenlabError", "Model", "ModelError", "Options", "Samples",
    "UnknownDatasetError", "UnknownModelError", "dequantize", "get_dataset_spec", "get_datasets",
    "get_feature_extractor", "get_model", "get_model_class", "get_models", "hookimpl", "load_dataset",
    "plugin_failures", "to_unit", "unwrap",
]
