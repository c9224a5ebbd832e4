"""What the plugins registered: models, datasets and feature extractors, looked up by name.

Core owns names, aliases and duplicates; plugins only hand classes to ``register``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import plugins
from .errors import GenlabError, UnknownDatasetError, UnknownModelError, choices
from .models import Capability, Model


@dataclass
class Registry:
    models: dict[str, type[Model]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)
    feature_extractors: dict = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)  # model id -> plugin name


_registry: Registry | None = None


def _build() -> Registry:
    reg = Registry()
    current_plugin = None  # set while a plugin's hook runs, so core knows who registered what

    def register_model(model_class, aliases=()):
        model_id = model_class.model_id
        if model_id in reg.models:
            raise GenlabError(f"model id {model_id!r} is registered twice")
        reg.models[model_id] = model_class
        reg.plugin_of[model_id] = current_plugin
        for alias in aliases:
            reg.aliases[alias] = model_id

    def register_dataset(spec):
        reg.datasets[spec.name] = spec

    def register_feature_extractor(spec):
        reg.feature_extractors[spec.name] = spec

    plugins.load_plugins()
    for hook_name, register in (
        ("register_models", register_model),
        ("register_datasets", register_dataset),
        ("register_feature_extractors", register_feature_extractor),
    ):
        for impl in getattr(plugins.pm.hook, hook_name).get_hookimpls():
            current_plugin = impl.plugin_name
            try:
                impl.function(**({"register": register} if "register" in impl.argnames else {}))
            except Exception as exc:  # one plugin's bug must not hide the others
                plugins.failures.append(
                    plugins.PluginFailure(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
                )
    return reg


def registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = _build()
    return _registry


def refresh() -> None:
    """Forget what was registered; the next lookup asks the plugins again."""
    global _registry
    _registry = None


def get_models(capability: Capability | str | None = None) -> dict[str, type[Model]]:
    models = registry().models
    if capability is None:
        return dict(models)
    return {k: v for k, v in models.items() if v.can(capability)}


def get_model_class(model_id: str) -> type[Model]:
    reg = registry()
    model_id = reg.aliases.get(model_id, model_id)
    try:
        return reg.models[model_id]
    except KeyError:
        raise UnknownModelError(f"unknown model {model_id!r}; registered models: {choices(reg.models)}") from None


def get_model(model_id: str, weights=None) -> Model:
    """An instance of a registered model; its weights load on first use."""
    return get_model_class(model_id)(weights=weights)


def get_datasets() -> dict:
    return dict(registry().datasets)


def get_dataset_spec(name: str):
    datasets = registry().datasets
    base = name.split(":", 1)[0] if ":" in name else name
    if base in datasets:
        return datasets[base]
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; registered datasets: {choices(datasets)} (or folder:PATH for your own images)"
    )


def get_feature_extractor(name: str):
    extractors = registry().feature_extractors
    try:
        return extractors[name]
    except KeyError:
        raise GenlabError(
            f"unknown feature extractor {name!r}; registered: {choices(extractors)}"
        ) from None


def plugin_failures() -> list[plugins.PluginFailure]:
    registry()
    return list(plugins.failures)
