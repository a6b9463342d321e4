"""Baseline agents with DACBench's agent API: ``act``, ``train``, ``end_episode``.

A DACBench-style runner drives an agent like this::

    state, info = env.reset()
    reward = 0
    while True:
        action = agent.act(state, reward)
        next_state, reward, terminated, truncated, info = env.step(action)
        agent.train(next_state, reward)
        state = next_state
        if terminated or truncated:
            agent.end_episode(state, reward)
            break

The agents work on local envs and on shmbench's remote envs alike: they only read
``env.action_space``.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

__all__ = ["RandomAgent", "StaticAgent", "ActionSpaceHolder", "AGENT_TYPES", "derived_seed", "make_agent"]

# Mixed into an env-derived seed so the agent's stream differs from the env's own stream
# (both would otherwise be PCG64 seeded with the same integer).
_AGENT_STREAM = 0x5EED_A6E7


def derived_seed(env_seed: int) -> int:
    """The seed ``RandomAgent(env)`` picks for an env seeded with ``env_seed``."""
    return int(np.random.SeedSequence([env_seed, _AGENT_STREAM]).generate_state(1, np.uint32)[0])


class RandomAgent:
    """Acts uniformly at random in the env's action space, reproducibly.

    Sampling uses a private copy of ``env.action_space``, so the agent neither depends on
    nor disturbs the env's own space RNG.

    Args:
        env: the environment (only ``action_space`` is read, plus ``np_random_seed`` when
            ``seed`` is ``None``).
        seed: seeds the sampling. ``None`` derives a seed from the env's integer seed when it
            has one (so ``RandomAgent(env)`` on a seeded env is reproducible), else uses fresh
            entropy.

    As in DACBench, a one-dimensional Box action is returned as its single element.
    """

    def __init__(self, env: gymnasium.Env | ActionSpaceHolder, seed: int | None = None) -> None:
        self._space = copy.deepcopy(env.action_space)
        if seed is None:
            env_seed = _env_seed(env)
            if env_seed is not None:
                seed = derived_seed(env_seed)
        self.seed = seed
        self._space.seed(seed)
        self._scalar_box = isinstance(self._space, spaces.Box) and self._space.shape == (1,)

    def act(self, state: Any, reward: Any) -> Any:
        """A fresh random action (``state`` and ``reward`` are ignored)."""
        action = self._space.sample()
        return action[0] if self._scalar_box else action

    def train(self, next_state: Any, reward: Any) -> None:
        """Nothing to learn."""

    def end_episode(self, state: Any, reward: Any) -> None:
        """Nothing to do at the end of an episode."""


class StaticAgent:
    """Always takes the same action (DACBench's static baseline).

    Args:
        env: the environment; ``action`` is checked against its action space.
        action: the action to repeat.

    Raises:
        ValueError: when ``action`` is not in ``env.action_space`` (a typo would otherwise
            surface as an env error many steps into an experiment).
    """

    def __init__(self, env: gymnasium.Env | ActionSpaceHolder, action: Any) -> None:
        if not env.action_space.contains(action):
            raise ValueError(f"static action {action!r} is not in the action space {env.action_space}")
        self.action = action

    def act(self, state: Any, reward: Any) -> Any:
        """The static action (a copy when it is an array, so callers cannot alter it)."""
        return self.action.copy() if isinstance(self.action, np.ndarray) else self.action

    def train(self, next_state: Any, reward: Any) -> None:
        """Nothing to learn."""

    def end_episode(self, state: Any, reward: Any) -> None:
        """Nothing to do at the end of an episode."""


def _env_seed(env: gymnasium.Env | ActionSpaceHolder) -> int | None:
    """The env's integer seed when it has one; never seeds an unseeded env as a side effect."""
    base = getattr(env, "unwrapped", env)
    if getattr(base, "_np_random", None) is None:
        return None
    seed = getattr(base, "np_random_seed", None)
    return seed if type(seed) is int and seed >= 0 else None


# ------------------------------------------------------------------------------------------
# building agents from data (the container side of shmbench.host.agent.RemoteAgent)
# ------------------------------------------------------------------------------------------

#: The agents :func:`make_agent` builds, by the ``"type"`` of their description.
AGENT_TYPES = ("random", "static")

_SPEC_KEYS = {"random": {"type", "action_space", "seed"}, "static": {"type", "action_space", "action"}}


class ActionSpaceHolder:
    """The smallest env-like object an agent can be built on: just an ``action_space``.

    It has no generator of its own, so a :class:`RandomAgent` built on it is seeded only by
    its explicit ``seed`` (never by a hidden env seed).
    """

    _np_random = None

    def __init__(self, action_space: spaces.Space) -> None:
        self.action_space = action_space

    @property
    def unwrapped(self) -> ActionSpaceHolder:
        return self

    def __repr__(self) -> str:
        return f"ActionSpaceHolder({self.action_space!r})"


def make_agent(spec: Any) -> RandomAgent | StaticAgent:
    """Build a whitelisted baseline agent from its description.

    This is what ``python -m shmbench.server`` runs for a remote agent, so the description
    is data only -- no class names or import paths travel:

    - ``{"type": "random", "action_space": SPACE, "seed": int | None}``
    - ``{"type": "static", "action_space": SPACE, "action": VALUE}``

    Everything is strict JSON except ``SPACE``, which is :func:`shmbench.wire.spaces.describe`'s
    output (what crosses the channel; it is checked by :func:`shmbench.wire.spaces.rebuild`) or,
    in-process, a gymnasium space. ``VALUE`` is a JSON value (a list for array actions)
    converted to the space's dtype, or an array.

    >>> agent = make_agent({"type": "static", "action_space": spaces.Discrete(3), "action": 2})
    >>> agent.act(None, 0.0)
    2

    Raises:
        ExperimentError: for an unknown type, unknown or missing keys, a bad seed, a bad
            space description, or a static action outside the action space.
    """
    from shmbench.errors import ExperimentError, ProtocolError

    if not isinstance(spec, dict):
        raise ExperimentError(f"an agent description must be a dict, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in AGENT_TYPES:
        raise ExperimentError(f"unknown agent type {kind!r}; known: {', '.join(AGENT_TYPES)}")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise ExperimentError(f"{kind} agent: unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS[kind])}")
    space = spec.get("action_space")
    if space is None:
        raise ExperimentError(f"{kind} agent: 'action_space' is required")
    if not isinstance(space, spaces.Space):
        from shmbench.wire.spaces import rebuild

        try:
            space = rebuild(space)
        except ProtocolError as exc:
            raise ExperimentError(f"{kind} agent: bad action_space: {exc}") from None
    holder = ActionSpaceHolder(space)
    if kind == "random":
        seed = spec.get("seed")
        if seed is not None and (type(seed) is not int or seed < 0):
            raise ExperimentError(f"random agent: seed must be None or an int >= 0, got {seed!r}")
        return RandomAgent(holder, seed=seed)
    if "action" not in spec:
        raise ExperimentError("static agent: 'action' is required")
    action = _action_from_plain(space, spec["action"])
    try:
        return StaticAgent(holder, action)
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None


def _action_from_plain(space: spaces.Space, value: Any) -> Any:
    """A JSON value (lists, numbers) as an action of ``space``: arrays get the space's dtype.

    Values that cannot be converted are returned as they are, for the space's own
    ``contains`` check to refuse with a clear message.
    """
    try:
        if isinstance(space, (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)):
            if isinstance(value, (list, np.ndarray)) or (
                isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            ):
                arr = np.asarray(value)
                if arr.dtype.kind in "iufb" and (arr.dtype.kind != "f" or space.dtype.kind == "f"):
                    return arr.astype(space.dtype)
            return value
        if isinstance(space, spaces.Discrete):
            return value
        if isinstance(space, spaces.Dict) and isinstance(value, dict):
            return {k: _action_from_plain(space.spaces[k], v) if k in space.spaces else v for k, v in value.items()}
        if isinstance(space, spaces.Tuple) and isinstance(value, (list, tuple)) and len(value) == len(space.spaces):
            return tuple(_action_from_plain(s, v) for s, v in zip(space.spaces, value))
    except (TypeError, ValueError, OverflowError):
        pass
    return value
