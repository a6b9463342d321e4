"""An env's ``spec`` across the process boundary: described as plain data, rebuilt on the host.

The server describes its env's :class:`gymnasium.envs.registration.EnvSpec` with
:func:`describe_spec`; the host rebuilds a spec with :func:`rebuild_spec` that reads like
the native one (id, kwargs, max_episode_steps, reward_threshold...) but runs nothing the
container named: ``gymnasium.make(env.spec)`` calls the entry point the *host* provides
(one that makes the same remote env again through shmbench), its kwargs are strict JSON
(anything else the server reported is dropped), and the server's additional wrappers --
already applied inside the remote env -- are not listed, since gymnasium would import
their entry points by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gymnasium.envs.registration import EnvSpec

from shmbench.errors import EncodeError, ExperimentError
from shmbench.wire.codec import Codec
from shmbench.wire.strict_json import strict_json

__all__ = ["describe_spec", "rebuild_spec"]


def describe_spec(env: Any, codec: Codec) -> dict | None:
    """Plain data for ``env.spec`` (None when the env has none)."""
    spec = getattr(env, "spec", None)
    if spec is None:
        return None

    def plain(value: Any) -> Any:
        try:
            codec.encode(value)
            return value
        except EncodeError:
            return None

    ep = spec.entry_point
    if callable(ep):
        ep = f"{getattr(ep, '__module__', '?')}:{getattr(ep, '__qualname__', repr(ep))}"
    return {
        "id": spec.id,
        "entry_point": ep,
        "reward_threshold": plain(spec.reward_threshold),
        "nondeterministic": bool(spec.nondeterministic),
        "max_episode_steps": spec.max_episode_steps,
        "order_enforce": bool(spec.order_enforce),
        "disable_env_checker": bool(spec.disable_env_checker),
        "kwargs": {k: v for k, v in spec.kwargs.items() if plain(v) is not None or v is None},
        "additional_wrappers": [
            [
                w.name,
                w.entry_point if isinstance(w.entry_point, str) else repr(w.entry_point),
                {k: v for k, v in (w.kwargs or {}).items() if plain(v) is not None or v is None},
            ]
            for w in spec.additional_wrappers
        ],
        "vector_entry_point": spec.vector_entry_point if isinstance(spec.vector_entry_point, str) else None,
    }


def _strict(value: Any) -> Any:
    try:
        return strict_json(value, where="spec")
    except ExperimentError:
        return None


def rebuild_spec(
    fields: dict | None,
    entry_point: Callable[..., Any] | None = None,
    vector_entry_point: Callable[..., Any] | None = None,
) -> EnvSpec | None:
    """An EnvSpec from :func:`describe_spec`'s output whose entry points are the host's
    (``entry_point``, ``vector_entry_point``: see the module docstring); None for no or a
    malformed description."""
    if not isinstance(fields, dict):
        return None
    try:
        kwargs = fields.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            return None
        plain = {
            k: _strict(v) for k, v in kwargs.items() if isinstance(k, str) and (v is None or _strict(v) is not None)
        }
        mes = fields.get("max_episode_steps")
        threshold = fields.get("reward_threshold")
        return EnvSpec(
            id=str(fields["id"]),
            entry_point=entry_point,
            reward_threshold=threshold if isinstance(threshold, (int, float)) else None,
            nondeterministic=bool(fields.get("nondeterministic", False)),
            max_episode_steps=mes if type(mes) is int else None,
            order_enforce=bool(fields.get("order_enforce", True)),
            disable_env_checker=bool(fields.get("disable_env_checker", False)),
            kwargs=plain,
            additional_wrappers=(),
            vector_entry_point=vector_entry_point,
        )
    except Exception:
        return None
