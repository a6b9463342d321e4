"""gymnasium's factories reach shmbench: ``shmbench.register`` puts a remote env in gymnasium's registry.

Training frameworks build their envs through ``gymnasium.make(id)`` and
``gymnasium.make_vec(id, n)`` (RLlib's env runners, most others), never through
``shmbench.make``. :func:`register` gives such a framework an id of its own:

>>> shmbench.register("Remote-CartPole-v1", "CartPole-v1", runtime="bwrap")      # doctest: +SKIP
>>> env = gymnasium.make("Remote-CartPole-v1")          # a RemoteEnvironmentClient  # doctest: +SKIP
>>> envs = gymnasium.make_vec("Remote-CartPole-v1", 8)  # a ShmVectorEnv             # doctest: +SKIP

The registered spec's entry points are the host's own (nothing is looked up by name), the
env checker and the order-enforcing wrapper stay off (the remote env has its own, inside
its server), and ``gymnasium.make_vec`` uses ``vector_entry_point`` by default: one
ShmVectorEnv, its envs in parallel servers. ``vectorization_mode="sync"``/``"async"`` make
gymnasium's own vector envs of separate remote envs instead, one server each.
"""

from __future__ import annotations

from typing import Any

import gymnasium

from shmbench.host.env import RemoteEntryPoint, merge_env_kwargs
from shmbench.host.vector import RemoteVectorEntryPoint

__all__ = ["register", "SHMBENCH_OPTIONS", "VECTOR_OPTIONS"]

#: the keyword arguments that are shmbench's own (every other one goes to the env)
SHMBENCH_OPTIONS = frozenset(
    {
        "runtime",
        "image",
        "binds",
        "environment",
        "copy",
        "wait",
        "timeout",
        "factory",
        "benchmark",
        "allow_pickle",
        "start_timeout",
        "wakeup",
        "limits",
        "stall_timeout",
    }
)
#: shmbench's options that only a vector env takes
VECTOR_OPTIONS = frozenset({"num_workers", "autoreset_mode"})


def register(new_id: str, env_id: str | None = None, *, env_kwargs: dict | None = None, **make_kwargs: Any) -> None:
    """Register ``new_id`` with gymnasium as ``env_id`` served by shmbench.

    Args:
        new_id: the id to register (``"Remote-CartPole-v1"``, ``"ns/Name-v0"``).
        env_id: what the server makes (a registered id or ``"module:attr"``); None with a
            ``factory=`` or ``benchmark=`` in ``make_kwargs``.
        env_kwargs: the env's keyword arguments, whatever their names.
        **make_kwargs: shmbench's options (``runtime``, ``image``, ``binds``, ``limits``...;
            ``num_workers`` and ``autoreset_mode`` for ``make_vec``), and more keyword
            arguments for the env.
    """
    if not isinstance(new_id, str) or not new_id:
        raise TypeError("new_id must be a non-empty string")
    if env_id is None and make_kwargs.get("factory") is None and make_kwargs.get("benchmark") is None:
        raise TypeError("give an env_id, a factory or a benchmark")
    options = {k: v for k, v in make_kwargs.items() if k in SHMBENCH_OPTIONS}
    vector_only = {k: v for k, v in make_kwargs.items() if k in VECTOR_OPTIONS}
    kwargs = merge_env_kwargs(
        env_kwargs, {k: v for k, v in make_kwargs.items() if k not in SHMBENCH_OPTIONS and k not in VECTOR_OPTIONS}
    )
    gymnasium.register(
        id=new_id,
        entry_point=RemoteEntryPoint(env_id, options),
        vector_entry_point=RemoteVectorEntryPoint(env_id, {**options, **vector_only}),
        kwargs=kwargs,
        disable_env_checker=True,  # the remote env has gymnasium's checker inside its server
        order_enforce=False,
    )
