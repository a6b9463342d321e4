"""Containers: runtimes that start servers, images, and the seed's class names.

``RemoteEnvironmentServer`` runs in the container, ``RemoteEnvironmentClient`` on the host;
``RemoteRunner`` / ``RemoteRunnerServer`` run whole experiments. Imported lazily, so the
container side pulls in nothing it does not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "RemoteEnvironmentServer": "shmbench.server",
    "RemoteEnvironmentClient": "shmbench.client",
    "RemoteRunner": "shmbench.runner",
    "RemoteRunnerServer": "shmbench.runner",
    "Runtime": "shmbench.container.runtime",
    "ProcessRuntime": "shmbench.container.runtime",
    "BwrapRuntime": "shmbench.container.bwrap",
    "ApptainerRuntime": "shmbench.container.apptainer",
    "get_runtime": "shmbench.container.select",
    "probe_all": "shmbench.container.select",
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
