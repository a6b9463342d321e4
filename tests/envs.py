"""Test environments: odd spaces, odd outputs, failures and slowness, used through
``"envs:ClassName"`` ids (the server imports this module from tests/)."""

from __future__ import annotations

import os
import socket
import sys
import time

import gymnasium
import numpy as np
from gymnasium import spaces


class _Seeded(gymnasium.Env):
    metadata = {"render_modes": []}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}


class DictTupleEnv(_Seeded):
    """Dict observations holding a Tuple, plus a Dict action space."""

    observation_space = spaces.Dict(
        {
            "pos": spaces.Box(-1.0, 1.0, (3,), np.float32),
            "pair": spaces.Tuple((spaces.MultiDiscrete([3, 4]), spaces.MultiBinary(5))),
            "grid": spaces.Box(0, 255, (2, 2), np.uint8),
        }
    )
    action_space = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32)))

    def _obs(self):
        r = self.np_random
        return {
            "pos": r.uniform(-1, 1, 3).astype(np.float32),
            "pair": (r.integers(0, [3, 4]).astype(np.int64), r.integers(0, 2, 5).astype(np.int8)),
            "grid": r.integers(0, 256, (2, 2)).astype(np.uint8),
        }

    def step(self, action):
        self.t += 1
        return self._obs(), float(action[0]) + float(action[1].sum()), False, self.t >= 25, {}


class DiscreteDictEnv(_Seeded):
    """A Dict obs with a Discrete leaf: its np.int64 values must come back as np.int64."""

    observation_space = spaces.Dict({"cell": spaces.Discrete(9), "v": spaces.Box(0, 1, (2,), np.float64)})
    action_space = spaces.Discrete(2)

    def _obs(self):
        return {"cell": np.int64(self.np_random.integers(9)), "v": self.np_random.random(2)}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.5, bool(self.t % 7 == 0), False, {}


class WrongDtypeEnv(_Seeded):
    """Declares float32 observations but returns float64 ones (as DACBench envs do), and
    numpy-typed rewards and flags."""

    observation_space = spaces.Box(-10.0, 10.0, (4,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _obs(self):
        return self.np_random.normal(size=4)  # float64, not float32

    def step(self, action):
        self.t += 1
        reward = np.float32(action[0]) if self.t % 2 else np.float64(-action[0])
        done = np.bool_(self.t % 11 == 0)
        return self._obs(), reward, done, self.t % 13 == 0, {}


class InfoEnv(_Seeded):
    """Infos with numpy arrays, scalars, tuples and nested dicts; int rewards; int obs."""

    observation_space = spaces.Discrete(5)
    action_space = spaces.Discrete(5)

    def _obs(self):
        return int(self.np_random.integers(5))

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {"start": np.arange(3, dtype=np.int16), "options": options}

    def step(self, action):
        self.t += 1
        r = self.np_random
        info = {
            "t": self.t,
            "arr": r.normal(size=(2, 3)),
            "nested": {"x": np.float32(r.random()), "ids": (1, "two", b"3"), "deep": {"ok": True}},
        }
        if self.t % 4 == 0:
            info["sometimes"] = np.uint8(self.t)
        return self._obs(), int(action == 2), self.t % 17 == 0, False, info


class FailingEnv(_Seeded):
    """Raises in step() when the action is 0; keeps working after."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def _obs(self):
        return np.full(2, self.t / 100, dtype=np.float32)

    def step(self, action):
        if action == 0:
            raise ValueError(f"action 0 is not allowed at t={self.t}")
        self.t += 1
        return self._obs(), 1.0, False, False, {}


class SlowEnv(_Seeded):
    """Each step sleeps ``delay`` seconds (for timeouts and the 1 ms vector workload)."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay: float = 1.0):
        self.delay = delay

    def _obs(self):
        return np.array([self.t], dtype=np.float32)

    def step(self, action):
        time.sleep(self.delay)
        self.t += 1
        return self._obs(), 0.0, False, False, {}


class JitterEnv(_Seeded):
    """A seeded random walk whose steps take 0 to ``max_delay`` seconds at random -- from an
    unseeded generator, so that the order in which envs finish varies from run to run while
    their trajectories do not (the async pool's workload). Infos carry the step count."""

    observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float64)
    action_space = spaces.Discrete(3)

    def __init__(self, max_delay: float = 0.002):
        self.max_delay = max_delay
        self._timing = np.random.default_rng()  # deliberately unseeded

    def _obs(self):
        return self.np_random.normal(size=3)

    def step(self, action):
        time.sleep(self._timing.uniform(0, self.max_delay))
        self.t += 1
        return self._obs(), float(action) - 1.0, bool(self.np_random.random() < 0.05), self.t >= 30, {"t": self.t}


class ProbeEnv(_Seeded):
    """Reports what the server process sees of its world, in info."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def _obs(self):
        return np.zeros(1, dtype=np.float32)

    def step(self, action):
        with open("/proc/net/dev") as f:
            interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        return (
            self._obs(),
            0.0,
            False,
            False,
            {
                "pid": os.getpid(),
                "uid": os.getuid(),
                "hostname": socket.gethostname(),
                "dev": sorted(os.listdir("/dev")),
                "shmbench": sorted(os.listdir("/shmbench")) if os.path.isdir("/shmbench") else None,
                "interfaces": interfaces,
                "env": sorted(os.environ),
                "numpy": np.__version__,
                "python": sys.version.split()[0],
                "root_writable": os.access("/", os.W_OK),
            },
        )


class TextEnv(_Seeded):
    """A Text observation space: never laid out in a slab, always the codec."""

    action_space = spaces.Discrete(2)

    def __init__(self):
        self.observation_space = spaces.Text(8)

    def _obs(self):
        return self.observation_space.sample()

    def reset(self, *, seed=None, options=None):
        _obs, info = super().reset(seed=seed, options=options)
        if seed is not None:
            self.observation_space.seed(seed)
        return self.observation_space.sample(), info

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 0.0, False, self.t >= 5, {}


class Parity(spaces.Space):
    """A custom space: shmbench cannot describe it (it crosses as a pickle, if allowed)."""

    def __init__(self, seed=None):
        super().__init__((), np.int64, seed)

    def sample(self, mask=None, probability=None):
        return int(self.np_random.integers(2))

    def contains(self, x):
        return x in (0, 1)

    def __eq__(self, other):
        return isinstance(other, Parity)


class CustomSpaceEnv(gymnasium.Env):
    """An env with a custom observation space."""

    observation_space = Parity()
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        return int(action), 0.0, False, False, {}


class StridedObsEnv(_Seeded):
    """Observations that are non-contiguous views (and, every third step, big-endian
    copies): right dtype and shape, but not the bytes a plain copy would take."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def _obs(self):
        self.buf = self.np_random.uniform(-1, 1, 6).astype(np.float32)
        return self.buf[::2]

    def step(self, action):
        self.t += 1
        obs = self._obs()
        if self.t % 3 == 0:
            obs = obs.astype(">f4")
        return obs, float(action), False, self.t % 50 == 0, {}


class InPlaceEnv(_Seeded):
    """Writes each observation into one buffer and returns that buffer; takes a buffer to
    write into from the server (``set_observation_buffer``), as zero-copy envs do."""

    observation_space = spaces.Box(-1.0, 1.0, (64, 16), np.float32)
    action_space = spaces.Discrete(64)

    def __init__(self):
        self.buf = np.zeros((64, 16), dtype=np.float32)
        self.received_buffer = False

    def set_observation_buffer(self, buffer):
        buffer[...] = self.buf
        self.buf = buffer
        self.received_buffer = True

    def _obs(self):
        self.buf[...] = self.np_random.uniform(-1, 1, self.buf.shape).astype(np.float32)
        return self.buf

    def step(self, action):
        self.t += 1
        self.buf[action] = self.np_random.uniform(-1, 1, 16).astype(np.float32)  # a small update
        return self.buf, float(self.buf[action, 0]), False, self.t % 40 == 0, {}
