"""Helpers for tests/test_runner.py: an env whose outputs are numpy-typed and awkward, and a
host process that dies in the middle of a run.

The env is registered under a gymnasium id (``shmbench_test/NumpyInfo-v0``) so that a
runner can name it like any benchmark; only in-process (LocalRunner) runs use it.
"""

from __future__ import annotations

import os
import sys

import gymnasium
import numpy as np
from gymnasium import spaces

NUMPY_INFO_ID = "shmbench_test/NumpyInfo-v0"


class NumpyInfoEnv(gymnasium.Env):
    """Four steps per episode; numpy rewards (one NaN), numpy-laden infos, a DACBench-style
    ``inst_id`` (no ``instance_id``) that counts resets."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-10, 10, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.inst_id = -1
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.inst_id += 1
        self._t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self._t += 1
        reward = np.float32("nan") if self._t == 2 else np.float32(self._t * 0.25 + int(action))
        info = {
            "arr": np.arange(3, dtype=np.int16),
            "scalar": np.float64(0.5),
            "pair": (1, 2),
            "raw": b"\x00\x01",
            3: "int key",
            "inf": float("inf"),
        }
        obs = np.array([self._t, int(action)], dtype=np.float32)
        return obs, reward, False, self._t >= 4, info


def register() -> None:
    if NUMPY_INFO_ID not in gymnasium.registry:
        gymnasium.register(NUMPY_INFO_ID, entry_point=f"{__name__}:NumpyInfoEnv")


class ExitingAgent:
    """Takes action 0, and kills its whole process (no cleanup, like kill -9) at a given step."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.steps = 0

    def act(self, state, reward):
        if self.steps == self.at_step:
            os._exit(17)
        self.steps += 1
        return np.array([0, 0])

    def train(self, next_state, reward):
        pass

    def end_episode(self, state, reward):
        pass


def crash_run(log_path: str, at_step: int) -> None:
    """Run exp:0.01 in this process and die at step ``at_step`` (for a subprocess)."""
    from shmbench.experiments.runner import LocalRunner

    runner = LocalRunner(experiment_identifier="exp:0.01", seed=3, log_path=log_path)
    runner.run(ExitingAgent(at_step), 10)
    sys.exit("not reached")
