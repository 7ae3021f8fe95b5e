"""Backend plugins for af2cpu, selected with ``af2cpu batch --backend NAME``.

A backend is a plain module or object with functions marked ``@hookimpl``
(see :mod:`af2cpu_plugin.hooks.hookspecs` for every hook), registered through
the ``af2cpu.backends`` entry point group::

    [options.entry_points]
    af2cpu.backends =
        mybackend = mypackage.af2cpu_backend

This package is installed as ``af2cpu_plugin.hooks``; never import it as a
top-level ``hooks`` package.
"""

from af2cpu_plugin.hooks.errors import UsageError
from af2cpu_plugin.hooks.hookspecs import PROJECT_NAME, hookimpl, hookspec

__all__ = ["PROJECT_NAME", "UsageError", "hookimpl", "hookspec"]
