"""What the plugins registered: models, datasets and feature extractors, looked up by name.

Core owns names, aliases and duplicates; plugins only hand classes to ``register``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from . import plugins
from .errors import GenlabError, ModelError, PluginLoadError, UnknownDatasetError, UnknownModelError, choices, describe
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

    def clash(kind: str, name: str, first: str | None) -> None:
        plugins.record_failure(current_plugin, f"{kind} {name!r} is registered twice: first by plugin {first!r}, "
                                               f"then by {current_plugin!r}; kept the first")

    def register_model(model_class, aliases=()):
        if not (isinstance(model_class, type) and issubclass(model_class, Model)):
            raise GenlabError(f"register_models was given {model_class!r}, which is not a genlab.Model subclass")
        model_id = getattr(model_class, "model_id", None)
        if not isinstance(model_id, str) or not model_id.strip():
            raise GenlabError(f"{model_class.__name__} has no model_id: set model_id = \"some-name\" on the class")
        if model_id in reg.models or model_id in reg.aliases:
            first = reg.plugin_of.get(reg.aliases.get(model_id, model_id))
            return clash("model id", model_id, first)
        try:  # what `genlab plugins`, the app and the eval read from every class
            model_class.describe()
        except Exception as exc:
            return plugins.record_failure(current_plugin, f"model {model_id!r} was not registered: describe() "
                                                          f"raised {describe(exc)}; check its family and capabilities")
        reg.models[model_id] = model_class
        reg.plugin_of[model_id] = current_plugin
        for alias in aliases:
            if alias in reg.models or alias in reg.aliases:
                clash("model alias", alias, reg.plugin_of.get(reg.aliases.get(alias, alias)))
                continue
            reg.aliases[alias] = model_id

    def keep_first(kind: str, table: dict, owners: dict):
        def register(spec):
            if spec.name in table:
                return clash(kind, spec.name, owners[spec.name])
            table[spec.name] = spec
            owners[spec.name] = current_plugin
        return register

    plugins.load_plugins()
    for name, plugin in list(plugins.pm.list_name_plugin()):  # also those registered by hand (tests)
        plugins.check_hooks(name, plugin)
    order = {name: i for i, name in enumerate(plugins.load_order)}
    dataset_owners, extractor_owners = {}, {}
    for hook_name, register in (
        ("register_models", register_model),
        ("register_datasets", keep_first("dataset", reg.datasets, dataset_owners)),
        ("register_feature_extractors", keep_first("feature extractor", reg.feature_extractors, extractor_owners)),
    ):
        impls = getattr(plugins.pm.hook, hook_name).get_hookimpls()
        # in load order (core, in-tree, then third-party), whatever tryfirst/trylast a plugin asked for
        for impl in sorted(impls, key=lambda impl: order.get(impl.plugin_name, len(order))):
            current_plugin = impl.plugin_name
            try:
                impl.function(**({"register": register} if "register" in impl.argnames else {}))
            except (Exception, SystemExit) as exc:  # one plugin's bug must not hide the others
                plugins.record_failure(impl.plugin_name, f"{hook_name} raised {describe(exc)}")
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
        pass
    failed = next((f for f in plugins.failures if f.name == model_id), None)
    if failed is not None:
        raise PluginLoadError(f"model {model_id!r} is unavailable: plugin {failed.name!r} failed to load "
                              f"({failed.reason}); registered models: {choices(reg.models)}")
    others = sorted({f.name for f in plugins.failures})
    also = f" (plugins with failures: {', '.join(others)}; see `genlab plugins`)" if others else ""
    raise UnknownModelError(f"unknown model {model_id!r}; registered models: {choices(reg.models)}{also}")


def get_model(model_id: str, weights=None, device=None) -> Model:
    """An instance of a registered model; its weights load on first use, on ``device`` (a string or
    ``torch.device``; default ``GENLAB_DEVICE``, else CUDA, MPS or the CPU: ``genlab.runtime``)."""
    model_class = get_model_class(model_id)
    with guard(model_class.model_id, "start"):
        model = model_class(weights=weights)
    if device is not None:
        model.device = device  # checked: a device this machine lacks is one sentence
    return model


def plugin_of(model_id: str) -> str | None:
    """The plugin that registered ``model_id``."""
    return registry().plugin_of.get(registry().aliases.get(model_id, model_id))


@contextmanager
def guard(model_id: str, action: str):
    """Run a model's own code: anything but a GenlabError (the plugin's deliberate, user-facing
    message) or a Ctrl-C becomes a ``ModelError`` naming the model, its plugin and the error, so
    one plugin's bug is reported in one line and the caller can go on with the others."""
    try:
        yield
    except GenlabError:
        raise
    except (Exception, SystemExit) as exc:
        plugin = plugin_of(model_id)
        owner = f" (plugin {plugin})" if plugin and plugin != model_id else ""
        raise ModelError(f"model {model_id}{owner} failed to {action}: {describe(exc)}") from exc


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
