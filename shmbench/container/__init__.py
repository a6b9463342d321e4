"""The seed's class names, where the seed's code imports them: a compatibility face.

``from shmbench.container import RemoteRunner`` (and the other names below) keeps working;
new code imports from the layers themselves (``shmbench.experiments.runner``,
``shmbench.runtimes``...). Imported lazily, so the container side pulls in nothing it does
not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "RemoteEnvironmentServer": "shmbench.server",
    "RemoteEnvironmentClient": "shmbench.host.env",
    "RemoteRunner": "shmbench.experiments.runner",
    "RemoteRunnerServer": "shmbench.experiments.runner",
    "Runtime": "shmbench.runtimes.base",
    "ProcessRuntime": "shmbench.runtimes.process",
    "BwrapRuntime": "shmbench.runtimes.bwrap",
    "ApptainerRuntime": "shmbench.runtimes.apptainer",
    "get_runtime": "shmbench.runtimes.selection",
    "probe_all": "shmbench.runtimes.selection",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shmbench.container' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
