"""An env's ``spec`` across the process boundary: described as plain data, rebuilt on the host.

The server describes its env's :class:`gymnasium.envs.registration.EnvSpec` with
:func:`describe_spec`; the host rebuilds an equal-looking spec with :func:`rebuild_spec`.
Only plain values cross (whatever the codec cannot carry is dropped), and nothing named in
the description is imported on the host: an entry point is a string there.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import EnvSpec, WrapperSpec

from shmbench.errors import EncodeError
from shmbench.wire.codec import Codec

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


def rebuild_spec(fields: dict | None) -> EnvSpec | None:
    """An EnvSpec from :func:`describe_spec`'s output (no entry point is imported)."""
    if not isinstance(fields, dict):
        return None
    try:
        wrappers = tuple(WrapperSpec(name, ep, kwargs) for name, ep, kwargs in fields.get("additional_wrappers", []))
        return EnvSpec(
            id=fields["id"],
            entry_point=fields.get("entry_point"),
            reward_threshold=fields.get("reward_threshold"),
            nondeterministic=fields.get("nondeterministic", False),
            max_episode_steps=fields.get("max_episode_steps"),
            order_enforce=fields.get("order_enforce", True),
            disable_env_checker=fields.get("disable_env_checker", False),
            kwargs=fields.get("kwargs") or {},
            additional_wrappers=wrappers,
            vector_entry_point=fields.get("vector_entry_point"),
        )
    except Exception:
        return None
