"""Plugin discovery: the pluggy manager, entry points, and a record of plugins that failed.

Core never imports a plugin by path. Every plugin, the in-tree ones under ``plugins/`` included,
is found through the ``genlab`` entry-point group. pluggy's ``load_setuptools_entrypoints`` stops
at the first plugin that fails to import, so entry points are loaded one by one here and each
failure is recorded (name + reason) while the others keep working.

``GENLAB_PLUGINS`` restricts loading: a comma-separated list of entry-point names (``vae,ddpm``);
set but empty, no third-party or in-tree plugin loads at all.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "genlab"
ENV_VAR = "GENLAB_PLUGINS"

# Core's own registrations (built-in datasets, the bundled MNIST feature extractor) are ordinary
# hookimpl modules, so a plugin can add to them exactly as these do.
DEFAULT_PLUGINS = ("genlab.datasets", "genlab.features")


@dataclass(frozen=True)
class PluginFailure:
    name: str
    reason: str


pm = pluggy.PluginManager("genlab")
pm.add_hookspecs(hookspecs)
failures: list[PluginFailure] = []
_loaded = False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_plugins() -> None:
    """Register the default plugins and every allowed entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)

    allowed = os.environ.get(ENV_VAR)
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for entry_point in [*importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), *source_tree_entry_points()]:
        if allowed_names is not None and entry_point.name not in allowed_names:
            continue
        if pm.get_plugin(entry_point.name) is not None or pm.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=entry_point.name)
        except Exception as exc:  # a broken plugin must not take the others down
            failures.append(PluginFailure(entry_point.name, _describe(exc)))
    pm.check_pending()


def source_tree_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``[project.entry-points.genlab]`` table of the source tree genlab is imported from, as
    entry points, when genlab itself is not installed (a Hugging Face Space, or a checkout put on
    ``sys.path`` by ``app.py``); they then load through the same loop as installed ones. Empty when
    genlab is installed (its entry points are already in the metadata) or no pyproject.toml is there."""
    import tomllib
    from pathlib import Path

    try:
        importlib.metadata.distribution("genlab")
        return []
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        table = tomllib.loads(pyproject.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return []
    return [importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
            for name, value in table.items()]


def plugin_names() -> list[str]:
    load_plugins()
    return [name for name, _ in pm.list_name_plugin() if name not in DEFAULT_PLUGINS]


def reset() -> None:
    """Forget every plugin and failure (tests use this to start from a clean registry)."""
    global _loaded
    for name, plugin in list(pm.list_name_plugin()):
        pm.unregister(plugin, name=name)
    failures.clear()
    _loaded = False
