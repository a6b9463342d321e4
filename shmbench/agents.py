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

__all__ = ["RandomAgent", "StaticAgent"]

# Mixed into an env-derived seed so the agent's stream differs from the env's own stream
# (both would otherwise be PCG64 seeded with the same integer).
_AGENT_STREAM = 0x5EED_A6E7


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

    def __init__(self, env: gymnasium.Env, seed: int | None = None) -> None:
        self._space = copy.deepcopy(env.action_space)
        if seed is None:
            env_seed = _env_seed(env)
            if env_seed is not None:
                seed = int(np.random.SeedSequence([env_seed, _AGENT_STREAM]).generate_state(1, np.uint32)[0])
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

    def __init__(self, env: gymnasium.Env, action: Any) -> None:
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


def _env_seed(env: gymnasium.Env) -> int | None:
    """The env's integer seed when it has one; never seeds an unseeded env as a side effect."""
    base = getattr(env, "unwrapped", env)
    if getattr(base, "_np_random", None) is None:
        return None
    seed = getattr(base, "np_random_seed", None)
    return seed if type(seed) is int and seed >= 0 else None
