"""The plugin manager: built-in backends, then third-party ones, then extras."""

from __future__ import annotations

import importlib
import sys
from typing import Iterable, List

import pluggy

from af2cpu_plugin.hooks import hookspecs

ENTRY_POINT_GROUP = "af2cpu.backends"

#: Built-in backends, registered under the names our setup.cfg gives their
#: entry points, so pluggy's entry point loader skips those entry points
#: (``has_plugin(ep.name)``) instead of registering the module a second time.
BUILTIN_PLUGINS = {
    "jax": "af2cpu_plugin.hooks.jax_backend",
    "cpu": "af2cpu_plugin.hooks.cpu_backend",
}


def _warn_shadowed_entry_points() -> None:
    """Say so when another distribution's entry point reuses a built-in's name."""
    import importlib.metadata

    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken metadata must not stop the CLI
        return
    for ep in eps:
        ours = BUILTIN_PLUGINS.get(ep.name)
        if ours is not None and ep.value.split(":")[0] != ours:
            print(
                f"af2cpu: warning: entry point {ep.name!r} = {ep.value} is ignored: "
                f"{ep.name!r} is a built-in backend",
                file=sys.stderr,
            )


def get_plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with af2cpu's hookspecs and every backend plugin.

    Registers the built-ins directly (they work without installed metadata,
    e.g. from a source tree), then the ``af2cpu.backends`` entry points of
    installed distributions, then ``extra_plugins`` (modules or objects with
    ``@hookimpl`` functions; handy for tests and embedding).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name, module_name in BUILTIN_PLUGINS.items():
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, name=name)
    _warn_shadowed_entry_points()
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    return pm


def backend_names(pm: pluggy.PluginManager) -> List[str]:
    """Every backend the registered plugins provide, de-duplicated, in registration order."""
    names: List[str] = []
    # pluggy calls the most recently registered plugin first.
    for result in reversed(pm.hook.af2cpu_backends()):
        for name in result or ():
            if name not in names:
                names.append(str(name))
    return names


def merged(results) -> dict:
    """Merge a collected hook's dicts; the plugin registered last wins."""
    out: dict = {}
    for result in reversed(results):
        if result:
            out.update(result)
    return out
