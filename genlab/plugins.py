"""Plugin discovery: the pluggy manager, entry points, and a record of plugins that failed.

Core never imports a plugin by path. Every plugin, the in-tree ones under ``plugins/`` included,
is found through the ``genlab`` entry-point group. pluggy's ``load_setuptools_entrypoints`` stops
at the first plugin that fails to import, so entry points are loaded one by one here and each
failure is recorded (name + reason) while the others keep working. The in-tree plugins load first.

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
from .errors import describe

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
load_order: list[str] = []  # plugin names in the order they were registered: the first one keeps a clashing id
_loaded = False

# The in-tree plugins (plugins/) register before any third-party one, so an id a third-party
# plugin also claims stays the built-in model's and the clash is recorded against the newcomer.
IN_TREE_MODULES = ("genlab_vae", "genlab_ddpm", "genlab_ldm")
HOOK_NAMES = tuple(sorted(n for n in dir(hookspecs) if n.startswith("register_")))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) while importing" if exc.code is not None else "called sys.exit()"
    return describe(exc)


def record_failure(name: str, reason: str) -> None:
    failures.append(PluginFailure(name, reason))


def unknown_hooks(plugin) -> list[str]:
    """Hook names ``plugin`` implements that genlab does not define (a typo such as register_modles)."""
    names = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec() and any(impl.plugin is plugin and not impl.optionalhook
                                         for impl in caller.get_hookimpls()):
            names.append(caller.name)
    return names


def drop(name: str, reason: str) -> None:
    """Unregister a plugin that cannot work (even a half-registered one) and record why."""
    if pm.get_plugin(name) is not None:
        pm.unregister(name=name)
    if name in load_order:
        load_order.remove(name)
    record_failure(name, reason)


def check_hooks(name: str, plugin) -> bool:
    """Drop ``plugin`` if it implements a hook genlab does not have; pluggy's ``check_pending``
    would otherwise fail every command for one plugin's typo."""
    unknown = unknown_hooks(plugin)
    if unknown:
        drop(name, f"implements unknown hook {unknown[0]!r}; genlab's hooks are {', '.join(HOOK_NAMES)}")
        return False
    return True


def _in_tree(entry_point) -> bool:
    dist = getattr(entry_point, "dist", None)
    return (dist is not None and dist.name == "genlab") or entry_point.module.split(".")[0] in IN_TREE_MODULES


def load_plugins() -> None:
    """Register the default plugins and every allowed entry point, once.

    Whatever a plugin does wrong (an import error, sys.exit() at import, a hook genlab does not
    define, a hook with the wrong arguments, an entry-point name already taken) is recorded
    against that plugin, and the others load."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        load_order.append(module_name)

    allowed = os.environ.get(ENV_VAR)
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    entry_points = [*importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), *source_tree_entry_points()]
    values: dict[str, str] = {}  # entry-point name -> the module it loaded
    for entry_point in sorted(entry_points, key=lambda ep: not _in_tree(ep)):  # stable: in-tree first
        name = entry_point.name
        if allowed_names is not None and name not in allowed_names:
            continue
        if pm.is_blocked(name):
            continue
        if values.get(name) == entry_point.value:
            continue  # the same plugin seen twice (two paths to one installation)
        if name in values or pm.get_plugin(name) is not None:
            record_failure(name, f"entry point {name!r} = {entry_point.value!r} was not loaded: the name is "
                                 f"already taken by {values.get(name, name)!r}; rename one of the two")
            continue
        values[name] = entry_point.value
        try:
            plugin = entry_point.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
            record_failure(name, _describe(exc))
            continue
        try:
            pm.register(plugin, name=name)
        except (Exception, SystemExit) as exc:  # e.g. a hook with arguments genlab does not pass
            drop(name, describe(exc))
            continue
        load_order.append(name)
        check_hooks(name, plugin)


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
    load_order.clear()
    _loaded = False
