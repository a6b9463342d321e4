"""shmbench: RL environments in rootless containers, stepped from the host through shared memory.

>>> import shmbench
>>> env = shmbench.make("CartPole-v1")          # doctest: +SKIP
>>> obs, info = env.reset(seed=0)               # doctest: +SKIP

The public names are imported lazily so that the container side (``python -m
shmbench.server``) and tools that only need a submodule stay light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from shmbench.errors import *  # noqa: F403  (the error hierarchy is public)
from shmbench.errors import __all__ as _error_names

__version__ = "0.1.0"

_LAZY = {
    "make": "shmbench.host.env",
    "make_vec": "shmbench.host.vector",
    "register": "shmbench.host.registration",
    "RemoteEnvironmentClient": "shmbench.host.env",
    "ShmVectorEnv": "shmbench.host.vector",
    "Channel": "shmbench.transport.channel",
}

__all__ = ["__version__", *_LAZY, *_error_names]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shmbench' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
