"""Envs for tests/test_fidelity.py: each one exercises a detail where a proxy could differ
from the local env. They run natively (in the test) and inside a real server (shmbench),
and the test compares the two."""

from __future__ import annotations

import copy
import warnings

import gymnasium
import numpy as np
from gymnasium import spaces
from space_zoo import EVERY_SPACE


class ZooEnv(gymnasium.Env):
    """Observation and action space from the zoo; observations drawn from the (seeded)
    observation space, actions checked against the action space."""

    metadata = {"render_modes": []}

    def __init__(self, obs: str = "box-f16-inf", act: str = "discrete-int32"):
        self.observation_space = copy.deepcopy(EVERY_SPACE[obs])
        self.action_space = copy.deepcopy(EVERY_SPACE[act])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        return self.observation_space.sample(), {}

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} not in {self.action_space}"
        return self.observation_space.sample(), 1.0, False, False, {}


class NoisyEnv(gymnasium.Env):
    """Draws from its own np_random in reset and in every step (as many envs do)."""

    observation_space = spaces.Box(-10, 10, (2,), np.float64)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1, 1, 2)
        return self.state.copy(), {}

    def step(self, action):
        self.state = self.state + (int(action) - 1) * 0.1 + self.np_random.normal(0, 0.01, 2)
        done = bool(np.abs(self.state).max() > 2)
        return self.state.copy(), float(action), done, False, {}


class SeededSpaceEnv(gymnasium.Env):
    """Seeds its own action space in its constructor."""

    observation_space = spaces.Discrete(2)

    def __init__(self):
        self.action_space = spaces.MultiDiscrete([3, 4, 5])
        self.action_space.seed(123)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        return 1, 0.0, False, False, {}


class PickyEnv(gymnasium.Env):
    """Raises the exceptions and warnings a native caller would catch."""

    observation_space = spaces.Discrete(2)
    action_space = spaces.Discrete(4)

    def __init__(self, timeout=None, copy=None, image=None, wait=None):
        # keywords named like shmbench's own options: they must reach the env
        self.got = {"timeout": timeout, "copy": copy, "image": image, "wait": wait}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        if action == 1:
            raise ValueError("action 1 is not allowed")
        if action == 2:
            raise KeyError("missing")
        if action == 3:
            warnings.warn("action 3 is deprecated", DeprecationWarning, stacklevel=2)
            warnings.warn("careful with action 3", UserWarning, stacklevel=1)
        return 0, 0.0, False, False, {}


class SlowCall(gymnasium.Env):
    """A method that takes a while (for the async halves of calls)."""

    observation_space = spaces.Discrete(2)
    action_space = spaces.Discrete(2)

    def __init__(self):
        self.counter = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        self.counter += 1
        return 0, 0.0, False, False, {}

    def count(self, plus=0):
        return self.counter + plus
