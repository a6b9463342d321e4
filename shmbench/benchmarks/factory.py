"""What a MAKE request builds: one env (or agent) from the host's plain description.

The server builds its envs with :func:`make_env`, and :class:`~shmbench.experiments.runner.
LocalRunner` builds its env in the host's own process with the same function from the same
description, so a local and a remote run of one experiment construct their env by the same
code. Only data arrives here; what runs is decided on this side (see :func:`make_env`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["make_env"]


def make_env(spec: dict) -> Any:
    """Build one env from a MAKE description.

    In order: a whitelisted agent description (``agent``), a cloudpickled factory (only ever
    sent by the host, which the server trusts), a whitelisted benchmark description
    (``benchmark``), ``module:attr`` (a class or factory, imported here in the container), or
    a registered gymnasium id (``env_id``) built with ``kwargs`` -- from its registered spec
    when the host re-makes an env from its ``spec`` (``from_spec``), as ``spec.make()`` does
    natively (no out-of-date-version warning, which only a make by id string raises).
    """
    import gymnasium

    kwargs = dict(spec.get("kwargs") or {})
    if spec.get("agent") is not None:
        from shmbench.agents import make_agent

        return make_agent(spec["agent"])
    if spec.get("factory") is not None:
        import cloudpickle

        return cloudpickle.loads(spec["factory"])()
    if spec.get("benchmark") is not None:
        from shmbench.benchmarks import make_benchmark_env

        b = spec["benchmark"]
        return make_benchmark_env(b["benchmark"], b.get("config"), b.get("seed"))
    env_id = spec["env_id"]
    if env_id.startswith("shmbench/"):
        import shmbench.benchmarks  # noqa: F401  (registers the shmbench ids)
    if ":" in env_id:
        module_name, _, attr = env_id.partition(":")
        module = importlib.import_module(module_name)
        target = getattr(module, attr, None)
        if target is not None and callable(target):
            return target(**kwargs)
    if spec.get("from_spec") and env_id in gymnasium.registry:
        return gymnasium.make(gymnasium.registry[env_id], **kwargs)
    return gymnasium.make(env_id, **kwargs)
